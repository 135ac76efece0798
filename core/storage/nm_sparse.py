"""N:M sparse format: the N kept values of every group of M inputs plus their positions.

Values stay in the layer's float dtype; positions are packed at ceil(log2 M) bits (2
bits for M=4, 3 for M=8). On CUDA, 2:4 runs through torch's semi-structured sparse
tensors where they accept the shape and dtype; elsewhere the dense weight is rebuilt
on the fly for each forward.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F

from core.prune.masks import index_bits, is_nm_sparse
from core.quant.pack import pack_bits, unpack_bits
from core.storage.base import CompressedLinear, dtype_name, frozen_bias

log = logging.getLogger(__name__)

try:  # CUDA-only semi-structured (2:4) kernels; absent or unusable elsewhere
    from torch.sparse import to_sparse_semi_structured
except ImportError:  # pragma: no cover - depends on the torch build
    to_sparse_semi_structured = None


class NMSparseLinear(CompressedLinear):
    """N:M sparse weights: ``values`` (out, groups * N) in the layer dtype, ``index``
    (packed uint8, ceil(log2 M) bits per kept value), ``bias`` as it was.

    ``in_features`` not divisible by M is zero-padded to whole groups.
    """

    format_name = "nm-sparse"

    @classmethod
    def build(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, *, n: int, m: int
    ) -> NMSparseLinear:
        mod = cls()
        if not is_nm_sparse(weight, n, m):
            raise ValueError(f"weight has more than {n} non-zeros in some group of {m}")
        mod.out_features, mod.in_features = weight.shape
        mod.n, mod.m, mod.bits = n, m, index_bits(m)
        mod.groups = math.ceil(mod.in_features / m)
        w = F.pad(weight.detach(), (0, mod.groups * m - mod.in_features))
        w = w.reshape(mod.out_features, mod.groups, m)
        # The positions of the (at most N) non-zeros; a group with fewer stores zeros.
        idx = torch.topk(w.float().abs(), n, dim=2).indices.sort(dim=2).values
        mod.register_buffer("values", w.gather(2, idx).reshape(mod.out_features, -1).clone())
        mod.register_buffer("index", pack_bits(idx.to(torch.uint8), mod.bits))
        mod.bias = frozen_bias(bias)
        mod._semi = {}  # CUDA semi-structured weight per (device, dtype)
        return mod.eval()

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight in the stored dtype, rebuilt from values and positions."""
        k = self.out_features * self.groups * self.n
        idx = (
            unpack_bits(self.index, self.bits, k)
            .long()
            .reshape(self.out_features, self.groups, self.n)
        )
        dense = torch.zeros(
            self.out_features,
            self.groups,
            self.m,
            dtype=self.values.dtype,
            device=self.values.device,
        )
        dense.scatter_(2, idx, self.values.reshape(self.out_features, self.groups, self.n))
        return dense.reshape(self.out_features, -1)[:, : self.in_features]

    def dequantized_weight(self) -> torch.Tensor:
        return self.dense_weight().float()

    def _semi_structured(self, x: torch.Tensor) -> Any:
        """torch's 2:4 sparse tensor for CUDA inputs, or None where it is not usable."""
        if to_sparse_semi_structured is None or not x.is_cuda or (self.n, self.m) != (2, 4):
            return None
        key = (x.device, x.dtype)
        cache = self._semi_cache()
        if key not in cache:
            try:
                cache[key] = to_sparse_semi_structured(self.dense_weight().to(x.dtype))
            except (RuntimeError, ValueError, NotImplementedError, TypeError) as e:
                log.info(
                    "semi-structured 2:4 unavailable for %s %s: %s",
                    x.dtype,
                    tuple(self.values.shape),
                    e,
                )
                cache[key] = None
        return cache[key]

    def _semi_cache(self) -> dict[Any, Any]:
        # Not built by __init__ when a module is rebuilt empty from a saved layout.
        return self.__dict__.setdefault("_semi", {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        semi = self._semi_structured(x)
        if semi is not None:
            try:
                return F.linear(x, semi, b)
            except (RuntimeError, NotImplementedError, TypeError) as e:
                log.info("semi-structured 2:4 matmul failed, decompressing instead: %s", e)
                self._semi_cache()[(x.device, x.dtype)] = None
        return F.linear(x, self.dense_weight().to(x.dtype), b)

    def nominal_bits(self) -> float:
        return float(self.values.element_size() * 8)

    def scheme(self) -> str:
        return f"{self.n}:{self.m}-sparse-{dtype_name(self.values.dtype)}"

    def _apply(self, fn: Any, recurse: bool = True) -> NMSparseLinear:
        self._semi = {}  # a device or dtype move invalidates the cached CUDA tensor
        return super()._apply(fn, recurse)
