"""Sparse affine integer format: a pruned-then-quantized linear keeps both savings.

A pruning step followed by a quantization step (Wanda 50%, then RTN 4-bit) leaves an
:class:`~core.storage.affine.AffineLinear` whose codes are the zero code wherever a
weight was pruned. Stored densely, those zeros cost ``bits`` each, so the pruning saved
nothing. This format stores instead:

- ``mask``: one bit per weight of the (out, in) matrix, packed (1: a stored code),
- ``qvalues``: the codes that are not their group's zero code, packed at ``bits`` each,
  in row-major order,
- ``scale`` (N, G) and ``zero`` (N, G) exactly as the affine format has them.

Every weight whose code is its group's zero code dequantizes to exactly 0 and is left
out, whether pruned or rounded to 0, so the format is lossless against the dense
quantized layer: ``dequantized_weight`` is the affine layer's, bit for bit. Per weight it
costs ``1 + (1 - sparsity) * bits`` bits instead of ``bits``: at 4 bits it pays below
75% non-zeros (50% sparsity: 3 bits a weight), at 8 bits below 87.5%, at 2 bits below
50%. :func:`pack_sparse_affine` chooses it only where it is smaller.

The forward rebuilds the dense weight and calls ``F.linear`` (no integer sparse kernel
here): smaller, not faster, which the run's latency measures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.quant.pack import pack_bits, packed_numel, unpack_bits
from core.quant.rtn import QuantizedTensor
from core.storage.affine import AffineLinear
from core.storage.base import CompressedLinear, frozen_bias


def sparse_affine_bytes(n_weights: int, nnz: int, bits: int) -> int:
    """Bytes of the mask and the packed non-zero codes (scales, zeros, bias excluded)."""
    return packed_numel(n_weights, 1) + packed_numel(nnz, bits)


def dense_affine_code_bytes(out_f: int, padded_in: int, bits: int) -> int:
    """Bytes of the affine format's codes (the padded (N, KP) matrix)."""
    return out_f * padded_in if bits == 8 else packed_numel(out_f * padded_in, bits)


def _stored(layer: AffineLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (N, K) int16, True where a code is not its group's zero code)."""
    codes = layer.codes()[:, : layer.in_features]
    z = layer.zero_codes().to(torch.int16).repeat_interleave(layer.group_size, dim=1)
    return codes, codes != z[:, : layer.in_features]


class SparseAffineLinear(CompressedLinear):
    """Affine integer codes of the non-zero weights, a bitmask of where they sit, and the
    affine format's per-group scales (and zeros)."""

    format_name = "sparse-affine-int"

    @classmethod
    def build(cls, weight: AffineLinear, bias: torch.Tensor | None = None) -> SparseAffineLinear:
        """``weight``: the dense affine layer to repack (its bias is kept unless ``bias``
        is given)."""
        codes, nz = _stored(weight)
        mod = cls()
        mod.out_features, mod.in_features = weight.out_features, weight.in_features
        mod.bits, mod.symmetric, mod.group_size = weight.bits, weight.symmetric, weight.group_size
        mod.nnz = int(nz.sum())
        mod.register_buffer("mask", pack_bits(nz.reshape(-1).to(torch.uint8), 1))
        mod.register_buffer("qvalues", pack_bits(codes[nz].to(torch.uint8), weight.bits))
        mod.register_buffer("scale", weight.scale.clone())
        if weight.zero is None:
            mod.zero = None
        else:
            mod.register_buffer("zero", weight.zero.clone())
        mod.bias = frozen_bias(weight.bias if bias is None else bias)
        return mod.eval()

    def nonzero_mask(self) -> torch.Tensor:
        n = self.out_features * self.in_features
        return unpack_bits(self.mask, 1, n).reshape(self.out_features, self.in_features).bool()

    def zero_codes(self) -> torch.Tensor:
        if self.zero is not None:
            return self.zero
        return torch.full_like(self.scale, 2 ** (self.bits - 1), dtype=torch.uint8)

    def dequantized_weight(self) -> torch.Tensor:
        z = self.zero_codes().to(torch.int16).repeat_interleave(self.group_size, dim=1)
        z = z[:, : self.in_features]
        codes = z.clone()
        values = unpack_bits(self.qvalues, self.bits, self.nnz).to(torch.int16)
        codes[self.nonzero_mask()] = values
        s = self.scale.float().repeat_interleave(self.group_size, dim=1)[:, : self.in_features]
        return (codes - z).float() * s

    def to_affine(self) -> AffineLinear:
        """The dense affine layer this was packed from, bit for bit (for exporters and
        kernels that read the dense layout)."""
        z = self.zero_codes().to(torch.int16).repeat_interleave(self.group_size, dim=1)
        z = z[:, : self.in_features]
        codes = z.clone()
        codes[self.nonzero_mask()] = unpack_bits(self.qvalues, self.bits, self.nnz).to(torch.int16)
        off = 2 ** (self.bits - 1)
        zero = None if self.zero is None else self.zero.to(torch.int16) - off
        q = QuantizedTensor(codes - off, self.scale.float(), zero, self.bits, self.group_size)
        return AffineLinear.build(q, self.bias, scale_dtype=self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype), b)

    def nominal_bits(self) -> float:
        return float(self.bits)

    def scheme(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        density = self.nnz / max(1, self.out_features * self.in_features)
        return f"int{self.bits}-{kind}-g{self.group_size}-sparse{1 - density:.0%}"


def sparse_pays(layer: AffineLinear) -> tuple[bool, int, int]:
    """(whether the sparse layout is smaller, its code bytes, the dense code bytes)."""
    _, nz = _stored(layer)
    sparse = sparse_affine_bytes(nz.numel(), int(nz.sum()), layer.bits)
    dense = dense_affine_code_bytes(layer.out_features, layer.padded_in, layer.bits)
    return sparse < dense, sparse, dense


def pack_sparse_affine(layer: AffineLinear) -> CompressedLinear:
    """The smaller of the dense affine layer and its sparse form (dense wins ties)."""
    pays, _, _ = sparse_pays(layer)
    return SparseAffineLinear.build(layer) if pays else layer
