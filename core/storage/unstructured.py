"""Unstructured sparse formats: a bitmask or CSR over the non-zero weights.

- :class:`BitmaskSparseLinear`: one bit per weight + the non-zero values.
- :class:`CSRSparseLinear`: row pointers + column indices + values.

:func:`choose_unstructured_layout` picks the smallest (dense wins ties), so a pruned
layer is stored sparse only where that really saves bytes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.quant.pack import pack_bits, packed_numel
from core.storage.base import CompressedLinear, dtype_name, frozen_bias


class _SparseValuesLinear(CompressedLinear):
    """The non-zero ``values`` (in the layer dtype) plus where they sit; the forward
    rebuilds the dense weight (no sparse matmul beats dense BLAS at these sparsities)."""

    values: torch.Tensor

    def dense_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def dequantized_weight(self) -> torch.Tensor:
        return self.dense_weight().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dense_weight().to(x.dtype), b)

    def nominal_bits(self) -> float:
        return float(self.values.element_size() * 8)


class BitmaskSparseLinear(_SparseValuesLinear):
    """Unstructured sparse weights: ``mask`` (1 bit per weight, packed) + ``values`` (nnz,)."""

    format_name = "sparse-bitmask"

    @classmethod
    def build(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> BitmaskSparseLinear:
        mod = cls()
        mod.out_features, mod.in_features = weight.shape
        nz = weight.detach() != 0
        mod.register_buffer("mask", pack_bits(nz.to(torch.uint8), 1))
        mod.register_buffer("values", weight.detach()[nz].clone())
        mod.bias = frozen_bias(bias)
        return mod.eval()

    def dense_weight(self) -> torch.Tensor:
        n = self.out_features * self.in_features
        # Same bit order as pack_bits(bits=1); int32 shifts are much faster than uint8 ones.
        shifts = torch.arange(8, dtype=torch.int32, device=self.mask.device)
        nz = ((self.mask.to(torch.int32).unsqueeze(1) >> shifts) & 1).reshape(-1)[:n].bool()
        dense = torch.zeros(n, dtype=self.values.dtype, device=self.values.device)
        return dense.masked_scatter_(nz, self.values).reshape(self.out_features, self.in_features)

    def scheme(self) -> str:
        return f"bitmask-sparse-{dtype_name(self.values.dtype)}"


class CSRSparseLinear(_SparseValuesLinear):
    """Unstructured sparse weights in CSR: ``crow`` (out + 1,) int32, ``col`` (nnz,) int16
    (int32 beyond 32767 inputs), ``values`` (nnz,)."""

    format_name = "sparse-csr"

    @classmethod
    def build(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> CSRSparseLinear:
        mod = cls()
        mod.out_features, mod.in_features = weight.shape
        w = weight.detach()
        nz = w != 0
        rows, cols = nz.nonzero(as_tuple=True)  # row-major order, as CSR wants
        col_dtype = torch.int16 if mod.in_features <= 32767 else torch.int32
        crow = F.pad(nz.sum(dim=1).cumsum(0), (1, 0))
        mod.register_buffer("crow", crow.to(torch.int32))
        mod.register_buffer("col", cols.to(col_dtype))
        mod.register_buffer("values", w[rows, cols].clone())
        mod.bias = frozen_bias(bias)
        return mod.eval()

    def dense_weight(self) -> torch.Tensor:
        dense = torch.zeros(
            self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device
        )
        counts = self.crow[1:].long() - self.crow[:-1].long()
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=dense.device), counts)
        dense[rows, self.col.long()] = self.values
        return dense

    def scheme(self) -> str:
        return f"csr-sparse-{dtype_name(self.values.dtype)}"


def unstructured_layout_bytes(out_f: int, in_f: int, nnz: int, element_size: int) -> dict[str, int]:
    """Weight bytes of each unstructured layout (biases excluded)."""
    col_bytes = 2 if in_f <= 32767 else 4
    return {
        "dense": out_f * in_f * element_size,
        "bitmask": packed_numel(out_f * in_f, 1) + nnz * element_size,
        "csr": (out_f + 1) * 4 + nnz * (element_size + col_bytes),
    }


def choose_unstructured_layout(out_f: int, in_f: int, nnz: int, element_size: int) -> str:
    """The smallest layout; dense wins ties (no decompression for nothing)."""
    sizes = unstructured_layout_bytes(out_f, in_f, nnz, element_size)
    return min(sizes, key=lambda k: (sizes[k], k != "dense"))
