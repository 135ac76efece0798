"""Round-to-nearest integer quantization: absmax (symmetric) and zero-point (asymmetric).

Scales are computed per tensor, per output channel (row of ``W``) or per group of
``group_size`` consecutive input columns within a row. Shapes: ``W`` is (out, in);
``scale`` and ``zero`` are (out, n_groups) for channel/group granularity and (1, 1)
for a whole tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Granularity = Literal["tensor", "channel", "group"]


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 8  # integer bits per weight, 2..8
    symmetric: bool = True  # absmax if True, zero-point if False
    granularity: Granularity = "channel"  # one scale per tensor, row or group
    group_size: int = 128  # columns per group when granularity == "group"
    clip_percentile: float = 100.0  # clip |w| (or min/max) to this percentile first
    clip_search: Literal["none", "mse"] = "none"  # "mse": search the range shrink per scale
    clip_grid: int = 20  # shrink step is 1 / clip_grid (GPTQ's quantizer uses 100)
    clip_max_shrink: float = 0.5  # the search tries ranges down to (1 - this) x the full one


@dataclass(frozen=True)
class QuantizedTensor:
    q: torch.Tensor  # (out, in) int16 holding integers in the signed range of `bits`
    scale: torch.Tensor  # (out or 1, n_groups) float32 step sizes
    zero: torch.Tensor | None  # (out or 1, n_groups) integer zero points, None if symmetric
    bits: int
    group_cols: int  # input columns sharing one scale


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range: symmetric uses -(2^(b-1)-1)..2^(b-1)-1 so that zero sits in the middle."""
    hi = 2 ** (bits - 1) - 1
    return (-hi, hi) if symmetric else (-(hi + 1), hi)


def _group_view(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, int]:
    """Reshape (out, in) into (out or 1, n_groups, cols), zero-padding the last group."""
    out_f, in_f = w.shape
    if spec.granularity == "tensor":
        return w.reshape(1, 1, -1), in_f
    cols = in_f if spec.granularity == "channel" else min(spec.group_size, in_f)
    pad = (-in_f) % cols
    wp = F.pad(w, (0, pad)) if pad else w
    return wp.reshape(out_f, -1, cols), cols


def _kth_abs(x: torch.Tensor, percentile: float) -> torch.Tensor:
    """The ``percentile``-th percentile of |x| along the last dim (kthvalue: no size limit)."""
    n = x.shape[-1]
    k = max(1, min(n, round(percentile / 100.0 * n)))
    return x.abs().kthvalue(k, dim=-1).values


def _range(g: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (lo, hi) after optional percentile clipping; always contains zero."""
    if spec.clip_percentile < 100.0:
        n = g.shape[-1]
        k_hi = max(1, min(n, round(spec.clip_percentile / 100.0 * n)))
        k_lo = max(1, n - k_hi + 1)
        hi = g.kthvalue(k_hi, dim=-1).values
        lo = g.kthvalue(k_lo, dim=-1).values
    else:
        hi, lo = g.amax(dim=-1), g.amin(dim=-1)
    # Keeping zero in range makes zero exactly representable (pruned weights stay zero).
    return torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))


def compute_scale_zero(
    g: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (and zero point) per group of ``g`` with shape (rows, n_groups, cols)."""
    if spec.clip_search == "mse":
        return mse_scale_zero(g, spec)
    qmin, qmax = qrange(spec.bits, spec.symmetric)
    if spec.symmetric:
        absmax = (
            _kth_abs(g, spec.clip_percentile) if spec.clip_percentile < 100.0 else g.abs().amax(-1)
        )
        scale = absmax / qmax
        return torch.where(scale > 0, scale, torch.ones_like(scale)), None
    lo, hi = _range(g, spec)
    scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = qmin - torch.round(lo / scale)
    return scale, zero.clamp(qmin, qmax)


def _scale_zero_for_range(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (and zero point) mapping [lo, hi] (absmax: [-hi, hi]) onto the integer range."""
    qmin, qmax = qrange(bits, symmetric)
    scale = hi / qmax if symmetric else (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if symmetric:
        return scale, None
    return scale, (qmin - torch.round(lo / scale)).clamp(qmin, qmax)


def mse_scale_zero(g: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per group, the clipping range ``p`` x the full one (p = 1, 1 - 1/grid, ... down to
    1 - max_shrink) whose round trip has the least squared error; the grid search of
    GPTQ's quantizer (Frantar et al. 2022, ``find_params(mse=True)``) with p-norm 2.

    ``g`` is (rows, n_groups, cols); returns scale and zero of shape (rows, n_groups).
    """
    if spec.symmetric:
        hi0 = g.abs().amax(-1)
        lo0 = -hi0
    else:
        lo0 = torch.minimum(g.amin(-1), torch.zeros_like(g[..., 0]))
        hi0 = torch.maximum(g.amax(-1), torch.zeros_like(g[..., 0]))
    best_err = torch.full_like(hi0, float("inf"))
    best_scale, best_zero = _scale_zero_for_range(lo0, hi0, spec.bits, spec.symmetric)
    for i in range(int(spec.clip_max_shrink * spec.clip_grid) + 1):
        p = 1.0 - i / spec.clip_grid
        scale, zero = _scale_zero_for_range(lo0 * p, hi0 * p, spec.bits, spec.symmetric)
        q = quantize_with(g, scale, zero, spec.bits).float()
        z = 0.0 if zero is None else zero.unsqueeze(-1)
        err = ((q - z) * scale.unsqueeze(-1) - g).pow(2).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        if zero is not None:
            assert best_zero is not None
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def quantize(w: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    """Round-to-nearest quantization of a 2-D weight ``w`` (out, in)."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    w = w.detach().float()
    g, cols = _group_view(w, spec)
    scale, zero = compute_scale_zero(g, spec)
    q = quantize_with(g, scale, zero, spec.bits)
    out_f, in_f = w.shape
    q = q.reshape(out_f, -1)[:, :in_f]  # drop the zero padding of the last group
    return QuantizedTensor(q=q, scale=scale, zero=zero, bits=spec.bits, group_cols=cols)


def quantize_with(
    g: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int
) -> torch.Tensor:
    """Integers for grouped values ``g`` (rows, n_groups, cols) under given scale/zero."""
    qmin, qmax = qrange(bits, zero is None)
    z = 0.0 if zero is None else zero.unsqueeze(-1)
    return torch.clamp(torch.round(g / scale.unsqueeze(-1)) + z, qmin, qmax).to(torch.int16)


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    """Float weights (out, in) from a :class:`QuantizedTensor`."""
    out_f, in_f = qt.q.shape
    if qt.scale.numel() == 1:
        z = 0.0 if qt.zero is None else qt.zero.reshape(())
        return (qt.q.float() - z) * qt.scale.reshape(())
    scale = qt.scale.repeat_interleave(qt.group_cols, dim=1)[:, :in_f]
    z = 0.0 if qt.zero is None else qt.zero.repeat_interleave(qt.group_cols, dim=1)[:, :in_f]
    return (qt.q.float() - z) * scale


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize then dequantize (for error measurements only, never for storage)."""
    return dequantize(quantize(w, spec)).to(w.dtype)
