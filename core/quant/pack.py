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
    bit_idx = torch.arange(bits, dtype=torch.uint8, device=flat.device)
    stream = ((flat.unsqueeze(1) >> bit_idx) & 1).reshape(-1)  # (numel * bits,)
    pad = (-stream.numel()) % 8
    stream = torch.nn.functional.pad(stream, (0, pad)).reshape(-1, 8)
    weights = (1 << torch.arange(8, dtype=torch.int32, device=flat.device)).to(torch.int32)
    return (stream.to(torch.int32) * weights).sum(dim=1).to(torch.uint8)


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
    bit_idx = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed.unsqueeze(1) >> bit_idx) & 1).reshape(-1)[: numel * bits]
    stream = stream.reshape(numel, bits).to(torch.int32)
    weights = 1 << torch.arange(bits, dtype=torch.int32, device=packed.device)
    return (stream * weights).sum(dim=1).to(torch.uint8)
