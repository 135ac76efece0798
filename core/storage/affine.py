"""Affine integer format: 2..8-bit codes packed per row, one scale (and zero) per group.

``W[n, k] = (code[n, k] - zero[n, g]) * scale[n, g]`` with ``g = k // group_size``.
This one format holds what RTN, GPTQ, AWQ and the int4 / int8 weight-only methods
produce, symmetric or with zero points, per group or per output channel (a channel is
one group as wide as the row; a whole-tensor scale is stored repeated per row).

Layout (what is stored and counted):

- ``qweight``: the codes of the (N, KP) matrix, KP = in_features rounded up to whole
  groups (padding columns hold the zero code, so they dequantize to 0). Codes are
  unsigned, ``q + 2**(bits-1)``. Below 8 bits they are packed little-endian
  (:func:`core.quant.pack.pack_bits`), shape (N, KP * bits / 8) when a row fills whole
  bytes (always at 4 bits with an even KP: the int4 kernel's layout), else flat. At 8
  bits they are stored as signed int8 ``code - 128 = q``, which the int8 kernel reads.
- ``scale``: (N, G) float16 (or the dtype the method asks for).
- ``zero``: (N, G) uint8 zero codes; absent when symmetric (the zero code is then
  ``2**(bits-1)``, e.g. 8 at 4 bits, and no byte is spent on it).

The forward picks the kernel from the format: 4 bits with whole-byte rows ->
``ops.int4_weight_only_linear`` (which falls back to its dequantizing path for group
sizes its native kernel cannot serve); 8 bits, symmetric, one group per row ->
``ops.int8_weight_only_linear``; anything else dequantizes and calls ``F.linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from core.kernels import ops
from core.quant.pack import pack_bits, unpack_bits
from core.quant.rtn import QuantizedTensor
from core.storage.base import CompressedLinear, frozen_bias

MIN_BITS, MAX_BITS = 2, 8


def code_offset(bits: int) -> int:
    """What is added to a signed integer weight to make it an unsigned code."""
    return 2 ** (bits - 1)


def _row_scales(t: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, G): a whole-tensor (1, 1) scale or zero is stored once per row."""
    return t.expand(rows, t.shape[1]) if t.shape[0] == 1 else t


class AffineLinear(CompressedLinear):
    """Integer weights at ``bits`` per value, packed, with per-group scales (and zeros)."""

    format_name = "affine-int"

    @classmethod
    def build(
        cls,
        weight: QuantizedTensor,
        bias: torch.Tensor | None,
        *,
        scale_dtype: torch.dtype = torch.float16,
    ) -> AffineLinear:
        """``weight`` is a quantizer's output (:class:`QuantizedTensor`, from RTN, GPTQ or
        AWQ); ``scale_dtype`` is how scales are stored (float16 unless a method keeps
        float32 per-row scales, as int8 weight-only does)."""
        if not MIN_BITS <= weight.bits <= MAX_BITS:
            raise ValueError(f"bits={weight.bits}: the affine format holds {MIN_BITS}..{MAX_BITS}")
        out_f, in_f = weight.q.shape
        mod = cls()
        mod.out_features, mod.in_features = out_f, in_f
        mod.bits, mod.symmetric = weight.bits, weight.zero is None
        mod.group_size = min(weight.group_cols, in_f)
        off = code_offset(weight.bits)
        scale = _row_scales(weight.scale, out_f)
        n_groups = scale.shape[1]
        kp = n_groups * mod.group_size
        if weight.zero is None:
            zero_codes = None
            pad_code = off
        else:
            zero_codes = (_row_scales(weight.zero, out_f) + off).round().to(torch.uint8)
            pad_code = zero_codes[:, -1:].to(torch.int16)
        codes = weight.q.to(torch.int16) + off
        if kp > in_f:  # padding columns get the zero code: they dequantize to exactly 0
            pad = torch.as_tensor(pad_code, dtype=torch.int16, device=codes.device)
            codes = torch.cat([codes, pad.expand(out_f, kp - in_f)], dim=1)
        mod.register_buffer("qweight", _pack_codes(codes, weight.bits))
        mod.register_buffer("scale", scale.to(scale_dtype).contiguous())
        if zero_codes is None:
            mod.zero = None
        else:
            mod.register_buffer("zero", zero_codes.contiguous())
        mod.bias = frozen_bias(bias)
        return mod.eval()

    # ------------------------------------------------------------------ layout

    @property
    def padded_in(self) -> int:
        """KP: in_features rounded up to whole groups."""
        return self.scale.shape[1] * self.group_size

    def codes(self) -> torch.Tensor:
        """The unsigned (N, KP) codes, int16."""
        n, kp = self.out_features, self.padded_in
        if self.bits == 8:
            return self.qweight.to(torch.int16) + code_offset(8)
        return (
            unpack_bits(self.qweight.reshape(-1), self.bits, n * kp).reshape(n, kp).to(torch.int16)
        )

    def zero_codes(self) -> torch.Tensor:
        """(N, G) uint8 zero codes; the constant mid code when symmetric (one shared,
        read-only tensor per shape: decode asks for it once per layer and token)."""
        if self.zero is not None:
            return self.zero
        return _mid_codes(*self.scale.shape, self.bits, self.scale.device)

    def int_weight(self) -> torch.Tensor:
        """The signed integer weights (out, in) as the quantizer produced them."""
        return self.codes()[:, : self.in_features] - code_offset(self.bits)

    def dequantized_weight(self) -> torch.Tensor:
        z = self.zero_codes().to(torch.int16).repeat_interleave(self.group_size, dim=1)
        s = self.scale.float().repeat_interleave(self.group_size, dim=1)
        return ((self.codes() - z).float() * s)[:, : self.in_features]

    # ------------------------------------------------------------------ compute

    def kernel(self) -> str:
        """Which op serves this layout: "int4", "int8" or "dequant" (F.linear)."""
        # The int4 op reads float16 scales and rows of whole bytes (its packed layout).
        if self.bits == 4 and self.qweight.dim() == 2 and self.scale.dtype == torch.float16:
            return "int4"
        if self.bits == 8 and self.symmetric and self.scale.shape[1] == 1:
            return "int8"
        return "dequant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.kernel()
        if kind == "int4":
            return ops.int4_weight_only_linear(
                x, self.qweight, self.scale, self.zero_codes(), self.group_size, self.bias
            )
        if kind == "int8":
            return ops.int8_weight_only_linear(x, self.qweight, self.scale, self.bias)  # (N, 1)
        w = self.dequantized_weight().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    # ------------------------------------------------------------------ labels

    def nominal_bits(self) -> float:
        return float(self.bits)

    def scheme(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"int{self.bits}-{kind}-g{self.group_size}"


@functools.lru_cache(maxsize=64)
def _mid_codes(n: int, groups: int, bits: int, device: torch.device) -> torch.Tensor:
    return torch.full((n, groups), code_offset(bits), dtype=torch.uint8, device=device)


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, KP) unsigned codes in the stored layout described in the module docstring."""
    n, kp = codes.shape
    if bits == 8:
        return (codes - code_offset(8)).to(torch.int8)
    packed = pack_bits(codes.to(torch.uint8), bits)
    return packed.reshape(n, -1) if (kp * bits) % 8 == 0 else packed
