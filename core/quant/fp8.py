"""FP8 weight storage: E4M3 (max 448, 3 fraction bits) and E5M2 (max 57344, 2 fraction bits).

Micikevicius et al. 2022, "FP8 Formats for Deep Learning" (arXiv:2209.05433). A scale
maps the largest |w| of a tensor or of an output channel onto the format's largest
finite value, so the whole range is used; ``granularity="none"`` casts the raw weights
(scale 1), which shows what the range alone does: small weights fall below E4M3's
smallest normal (2^-6) and lose precision, while E5M2 reaches 2^-14.
Shapes: ``w`` (out, in); ``scale`` (out, 1) per channel, (1, 1) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

FP8Format = Literal["e4m3", "e5m2"]
FP8Granularity = Literal["tensor", "channel", "none"]

DTYPES: dict[str, torch.dtype] = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def fp8_max(fmt: FP8Format) -> float:
    """Largest finite value: 448 for E4M3 (no infinities), 57344 for E5M2."""
    return float(torch.finfo(DTYPES[fmt]).max)


@dataclass(frozen=True)
class FP8Tensor:
    data: torch.Tensor  # (out, in) float8_e4m3fn or float8_e5m2
    scale: torch.Tensor  # (out or 1, 1) float32; w ~= data * scale
    granularity: str  # "tensor", "channel" or "none"


def quantize_fp8(w: torch.Tensor, fmt: FP8Format, granularity: FP8Granularity) -> FP8Tensor:
    """Scale so that amax maps to the format's max, round to the nearest FP8 value.

    Values are clamped to the finite range first: converting an out-of-range float gives
    NaN in E4M3 (it has no infinity) and inf in E5M2.
    """
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    w = w.detach().float()
    top = fp8_max(fmt)
    if granularity == "none":
        scale = torch.ones(1, 1, device=w.device)
    else:
        amax = w.abs().amax(dim=1, keepdim=True) if granularity == "channel" else w.abs().amax()
        scale = (amax / top).reshape(-1, 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    data = torch.clamp(w / scale, -top, top).to(DTYPES[fmt])
    return FP8Tensor(data=data, scale=scale, granularity=granularity)


def dequantize_fp8(ft: FP8Tensor) -> torch.Tensor:
    return ft.data.float() * ft.scale.float()
