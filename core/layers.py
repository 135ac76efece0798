"""Modules that hold compressed weights in their real storage format.

Each replaces an ``nn.Linear``. Its buffers are what is stored (and counted as
weight memory); its forward dequantizes on the fly, so the model still runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.quant.pack import pack_bits, unpack_bits
from core.quant.rtn import QuantizedTensor, dequantize, qrange


class CompressedLinear(nn.Module):
    """Base of the modules that replace ``nn.Linear``; knows its shape and scheme."""

    in_features: int
    out_features: int

    def scheme(self) -> str:
        return type(self).__name__

    def dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError


class CastLinear(CompressedLinear):
    """Weights stored in a lower-precision float (float16, bfloat16); matmul in that dtype."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float()

    def scheme(self) -> str:
        return str(self.weight.dtype).replace("torch.", "")


class QuantLinear(CompressedLinear):
    """Integer weights packed at ``bits`` per value, float16 scales, int8 zero points.

    Buffers: ``qweight`` (uint8, packed), ``scale`` (out or 1, n_groups) float16,
    ``zero`` (same shape) int8 or absent for symmetric schemes, ``bias`` as it was.
    """

    def __init__(
        self, qt: QuantizedTensor, bias: torch.Tensor | None, out_dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = qt.q.shape
        self.bits, self.group_cols = qt.bits, qt.group_cols
        self.symmetric = qt.zero is None
        offset = -qrange(qt.bits, self.symmetric)[0]  # shift to unsigned before packing
        self.register_buffer("qweight", pack_bits((qt.q + offset).to(torch.uint8), qt.bits))
        self.register_buffer("scale", qt.scale.to(torch.float16))
        if qt.zero is not None:
            self.register_buffer("zero", qt.zero.to(torch.int8))
        else:
            self.zero = None
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.out_dtype = out_dtype

    def int_weight(self) -> torch.Tensor:
        """The signed integer weights (out, in), unpacked."""
        offset = -qrange(self.bits, self.symmetric)[0]
        n = self.out_features * self.in_features
        q = unpack_bits(self.qweight, self.bits, n).to(torch.int16) - offset
        return q.reshape(self.out_features, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        qt = QuantizedTensor(
            q=self.int_weight(),
            scale=self.scale.float(),
            zero=None if self.zero is None else self.zero.float(),
            bits=self.bits,
            group_cols=self.group_cols,
        )
        return dequantize(qt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight().to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, b)

    def scheme(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"int{self.bits}-{kind}-g{self.group_cols}"


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def module_storage_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers a module holds (its own and its children's)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += tensor_bytes(t)
    return total
