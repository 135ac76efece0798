"""Linears whose forward runs the real integer path through the ``compresslab::`` ops.

Unlike :class:`core.layers.QuantLinear` (which dequantizes weights to float and calls
``F.linear``), these hand the stored integers to core/kernels: the op picks the path for
the shape and device (our AVX2 C++ here, Triton on a GPU, float emulation where
neither runs) and records which one ran.

Buffers are what is stored and counted: int8 or packed 4-bit weights, float32 per-row
scales (int8) or float16 per-group scales and uint8 zero points (int4), and for static
activation quantization one float32 activation scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.kernels import ops
from core.kernels.ref import dequantize_int4
from core.layers import CompressedLinear
from core.quant.actquant import quantize_weight_per_channel, static_scale_from_absmax
from core.quant.pack import pack_bits
from core.quant.rtn import QuantSpec, quantize

INT4_OFFSET = 8  # signed 4-bit codes (-8..7) are stored shifted to 0..15


def _bias(linear: nn.Linear) -> nn.Parameter | None:
    if linear.bias is None:
        return None
    return nn.Parameter(linear.bias.detach().clone(), requires_grad=False)


class _Int8Weights(CompressedLinear):
    """int8 weights (out, in), one float32 absmax scale per output row."""

    def _init_weights(self, linear: nn.Linear) -> None:
        self.out_features, self.in_features = linear.weight.shape
        q, s = quantize_weight_per_channel(linear.weight.detach())
        self.register_buffer("w_int8", q)
        self.register_buffer("w_scale", s)
        self.bias = _bias(linear)

    def dequantized_weight(self) -> torch.Tensor:
        return self.w_int8.float() * self.w_scale.reshape(-1, 1)


class W8A8Linear(_Int8Weights):
    """int8 weights x int8 activations -> int32, dequantized with both scales.

    ``act_mode`` "dynamic": one activation scale per token, computed at run time.
    ``act_mode`` "static": one scale for the whole tensor, from the calibration absmax.
    """

    def __init__(
        self, linear: nn.Linear, act_mode: str, act_absmax: float | torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if act_mode not in ("dynamic", "static"):
            raise ValueError(f"act_mode={act_mode!r}: expected 'dynamic' or 'static'")
        if act_mode == "static" and act_absmax is None:
            raise ValueError("static activation quantization needs the calibrated max|x|")
        self._init_weights(linear)
        self.act_mode = act_mode
        if act_mode == "static":
            self.register_buffer("x_scale", static_scale_from_absmax(act_absmax))
        else:
            self.x_scale = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.int8_linear(x, self.w_int8, self.w_scale, self.bias, self.act_mode, self.x_scale)

    def scheme(self) -> str:
        return f"w8a8-{self.act_mode}"


class LLMInt8Linear(_Int8Weights):
    """LLM.int8()-style decomposition (Dettmers et al. 2022): the input feature columns
    holding a value with magnitude above ``threshold`` in this input are multiplied in
    float (with their dequantized weight columns); every other column goes through the
    int8 kernel with per-token activation scales (vector-wise quantization)."""

    def __init__(self, linear: nn.Linear, threshold: float) -> None:
        super().__init__()
        self._init_weights(linear)
        self.threshold = float(threshold)

    def outlier_columns(self, x2: torch.Tensor) -> torch.Tensor:
        """Indices of the input columns of ``x2`` (M, K) with some |x| > threshold."""
        if self.threshold <= 0:
            return x2.new_zeros(0, dtype=torch.long)
        return (x2.abs().amax(dim=0) > self.threshold).nonzero().flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        cols = self.outlier_columns(x2)
        if cols.numel() == 0:
            y = ops.int8_linear(x2, self.w_int8, self.w_scale, self.bias, "dynamic")
        else:
            regular = x2.index_fill(1, cols, 0)  # outliers no longer set the int8 scales
            y = ops.int8_linear(regular, self.w_int8, self.w_scale, self.bias, "dynamic")
            w_out = self.w_int8.index_select(1, cols).float() * self.w_scale.reshape(-1, 1)
            y = y + F.linear(x2.index_select(1, cols).float(), w_out).to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def scheme(self) -> str:
        return f"llm-int8-t{self.threshold:g}"


class Int8WeightOnlyLinear(_Int8Weights):
    """int8 weights, float activations: the weight bytes streamed are 4x fewer than fp32."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self._init_weights(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.int8_weight_only_linear(x, self.w_int8, self.w_scale, self.bias)

    def scheme(self) -> str:
        return "int8-weight-only"


class Int4WeightOnlyLinear(CompressedLinear):
    """4-bit asymmetric group-wise weights, float activations.

    Buffers: ``w_packed`` (out, KP/2) uint8 two codes per byte (low nibble = even column),
    KP = in_features rounded up to a whole group; ``scale`` (out, KP/group) float16;
    ``zero`` (out, KP/group) uint8 codes. W = (code - zero) * scale.
    """

    def __init__(self, linear: nn.Linear, group_size: int) -> None:
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        self.group_size = int(group_size)
        w = linear.weight.detach().float()
        kp = -(-self.in_features // group_size) * group_size
        w = F.pad(w, (0, kp - self.in_features))  # zero columns: the range still holds 0
        spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=group_size)
        qt = quantize(w, spec)
        assert qt.zero is not None
        codes = (qt.q + INT4_OFFSET).to(torch.uint8)  # (out, kp) in 0..15
        self.register_buffer("w_packed", pack_bits(codes, 4).reshape(self.out_features, kp // 2))
        self.register_buffer("scale", qt.scale.to(torch.float16))
        self.register_buffer("zero", (qt.zero + INT4_OFFSET).to(torch.uint8))
        self.bias = _bias(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.int4_weight_only_linear(
            x, self.w_packed, self.scale, self.zero, self.group_size, self.bias
        )

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_int4(
            self.w_packed, self.scale, self.zero, self.group_size, self.in_features
        )

    def scheme(self) -> str:
        return f"int4-weight-only-g{self.group_size}"
