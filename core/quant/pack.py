"""Bit packing of small unsigned integers into bytes (real storage for 2..8-bit weights)."""

from __future__ import annotations

import torch


def packed_numel(numel: int, bits: int) -> int:
    """Bytes needed to hold ``numel`` values of ``bits`` bits each."""
    return (numel * bits + 7) // 8


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integers in [0, 2**bits) into a flat uint8 tensor, little-endian bits.

    8-bit values are stored as they are; 4- and 2-bit values pack two and four per
    byte; other widths go through a generic bit stream.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = values.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.clone()
    if 8 % bits == 0:
        per = 8 // bits
        pad = (-flat.numel()) % per
        flat = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, per)
        shifts = torch.arange(per, dtype=torch.uint8, device=flat.device) * bits
        return (flat << shifts).sum(dim=1, dtype=torch.int32).to(torch.uint8)
    # Other widths: every 8 values make one little-endian word of 8 * bits (<= 56) bits,
    # written out as ``bits`` bytes, the same layout as one continuous bit stream.
    pad = (-flat.numel()) % 8
    groups = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, 8).to(torch.int64)
    shifts = torch.arange(8, dtype=torch.int64, device=flat.device) * bits
    word = (groups << shifts).sum(dim=1, keepdim=True)
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=flat.device) * 8
    out = ((word >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: packed_numel(values.numel(), bits)]


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a flat uint8 tensor of ``numel`` values."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if bits == 8:
        return packed[:numel].clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.uint8, device=packed.device) * bits
        return ((packed.unsqueeze(1) >> shifts) & mask).reshape(-1)[:numel]
    pad = (-packed.numel()) % bits
    chunks = torch.nn.functional.pad(packed, (0, pad)).reshape(-1, bits).to(torch.int64)
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=packed.device) * 8
    word = (chunks << byte_shifts).sum(dim=1, keepdim=True)
    shifts = torch.arange(8, dtype=torch.int64, device=packed.device) * bits
    return ((word >> shifts) & mask).to(torch.uint8).reshape(-1)[:numel]
