"""Quantized storage of key / value tensors (B, heads, tokens, head_dim).

Two groupings, as KIVI (Liu et al. 2024) compares them:

- **per token**: one scale (and zero point) per (token, head) over its ``head_dim``
  values. Tokens are independent, so an eviction policy can drop any of them.
- **per channel**: one scale per (head, channel) over a block of ``group`` consecutive
  tokens. Keys have outlier channels (a few dimensions much larger than the rest for
  every token), so a per-channel scale fits them better; a block is quantized only
  once it is full, and the last ``< group`` tokens stay in full precision (the
  "residual"), which the bytes count.

Integer codes are asymmetric (min / max of the group, ``2**bits - 1`` steps) and really
packed: 2- and 4-bit codes four and two to a byte along ``head_dim``. FP8 (E4M3 or
E5M2) keeps one float8 value per element with a per-token scale (absmax to the format's
largest value). Scales and zero points are float16 (2 bytes each), counted in the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.quant.fp8 import DTYPES as FP8_DTYPES
from core.quant.fp8 import fp8_max
from core.quant.pack import pack_bits, unpack_bits

SCALE_DTYPE = torch.float16


@dataclass(frozen=True)
class Codes:
    """One quantized tensor: ``data`` (packed uint8 or float8) with its scale and zero."""

    data: torch.Tensor  # (..., packed head_dim) uint8, or (..., head_dim) float8
    scale: torch.Tensor  # float16, broadcastable to the unpacked shape
    zero: torch.Tensor | None  # float16 minimum (integer codes), None for FP8
    bits: int  # 2, 4, 8 (int) or 8 (fp8)
    fmt: str  # "int" or "e4m3" / "e5m2"
    head_dim: int

    @property
    def nbytes(self) -> int:
        total = self.data.numel() * self.data.element_size()
        total += self.scale.numel() * self.scale.element_size()
        if self.zero is not None:
            total += self.zero.numel() * self.zero.element_size()
        return total


def _pack_last(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes along the last dim (head_dim * bits must be a multiple of 8)."""
    *lead, d = q.shape
    return pack_bits(q, bits).reshape(*lead, d * bits // 8)


def _unpack_last(data: torch.Tensor, bits: int, head_dim: int) -> torch.Tensor:
    *lead, _ = data.shape
    n = data.numel() * 8 // bits
    return unpack_bits(data.reshape(-1), bits, n).reshape(*lead, head_dim)


def quantize_int(x: torch.Tensor, bits: int, dim: int) -> Codes:
    """Asymmetric ``bits``-bit codes of ``x`` with one (scale, min) per slice along ``dim``
    (``dim=-1``: per token; ``dim=-2``: per channel over the tokens given)."""
    if bits not in (2, 4, 8):
        raise ValueError(f"KV cache integer bits must be 2, 4 or 8, got {bits}")
    xf = x.float()
    lo = xf.amin(dim=dim, keepdim=True)
    hi = xf.amax(dim=dim, keepdim=True)
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).to(SCALE_DTYPE)
    zero = lo.to(SCALE_DTYPE)
    s = scale.float().clamp_min(torch.finfo(SCALE_DTYPE).tiny)
    q = torch.round((xf - zero.float()) / s).clamp_(0, levels).to(torch.uint8)
    return Codes(_pack_last(q, bits), scale, zero, bits, "int", x.shape[-1])


def quantize_fp8(x: torch.Tensor, fmt: str) -> Codes:
    """FP8 codes with one scale per token (absmax over head_dim to the format's max)."""
    top = fp8_max(fmt)  # type: ignore[arg-type]
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / top, torch.ones_like(amax)).to(SCALE_DTYPE)
    data = torch.clamp(xf / scale.float(), -top, top).to(FP8_DTYPES[fmt])
    return Codes(data, scale, None, 8, fmt, x.shape[-1])


def dequantize(c: Codes, dtype: torch.dtype) -> torch.Tensor:
    if c.fmt == "int":
        q = _unpack_last(c.data, c.bits, c.head_dim).float()
        assert c.zero is not None
        return (q * c.scale.float() + c.zero.float()).to(dtype)
    return (c.data.float() * c.scale.float()).to(dtype)


def select_tokens(c: Codes, idx: torch.Tensor) -> Codes:
    """Keep the tokens ``idx`` (B, H, T') of per-token codes (eviction)."""

    def take(t: torch.Tensor) -> torch.Tensor:
        return t.gather(2, idx[..., None].expand(*idx.shape, t.shape[-1]))

    zero = None if c.zero is None else take(c.zero)
    return Codes(take(c.data), take(c.scale), zero, c.bits, c.fmt, c.head_dim)


def concat(a: Codes | None, b: Codes) -> Codes:
    """Tokens of ``a`` then of ``b`` (per-token codes, or whole per-channel blocks)."""
    if a is None:
        return b
    zero = None if a.zero is None or b.zero is None else torch.cat([a.zero, b.zero], dim=2)
    return Codes(
        torch.cat([a.data, b.data], dim=2),
        torch.cat([a.scale, b.scale], dim=2),
        zero,
        b.bits,
        b.fmt,
        b.head_dim,
    )


def analytic_bytes_per_token(
    *,
    n_layers: int,
    kv_heads: int,
    head_dim: int,
    bits: int,
    fp8: bool,
    key_group: int | None,
    float_bytes: int,
) -> float:
    """Keys and values of one token in all layers by the formula (the stored tensors are
    measured separately): ``bits`` per element, plus per (token, head) a float16 scale
    and, for integer codes, a float16 zero point; per-channel keys (``key_group``) share
    their scale and zero over ``key_group`` tokens. ``bits=16`` is the plain cache of
    ``float_bytes`` per element. The full-precision residual of per-channel keys (fewer
    than ``key_group`` tokens at any time) is not per token and is left out."""
    heads = n_layers * kv_heads
    if bits >= 16:
        return 2.0 * heads * head_dim * float_bytes
    meta = 2 if fp8 else 4  # float16 scale (+ zero)
    v = heads * (head_dim * bits / 8 + meta)
    if key_group:
        k = heads * (head_dim * bits / 8 + head_dim * 4 / key_group)
    else:
        k = v
    return k + v
