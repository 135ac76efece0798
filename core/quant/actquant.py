"""Activation quantization: symmetric int8 per token (dynamic) or per tensor (static).

Dynamic quantization computes one scale per row (token) on the fly from the row's own
absolute maximum; static quantization uses one scale fixed in advance from calibration
data (Xiao et al. 2022, "SmoothQuant", sec. 2 and table 2 list both granularities).
Shapes: ``x`` (M, K) float; scales (M, 1) per token or a scalar per tensor.
"""

from __future__ import annotations

import torch

QMAX = 127  # symmetric int8: -127..127, zero maps to zero


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (M, K), scale float32 (M, 1)): scale = max|x_m| / 127 (1 for a zero row)."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x / scale).clamp(-QMAX, QMAX).to(torch.int8)
    return q, scale


def quantize_per_tensor_static(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """int8 codes of ``x`` under a fixed scale; values beyond 127 * scale are clipped."""
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    return torch.round(x.float() / s).clamp(-QMAX, QMAX).to(torch.int8)


def static_scale_from_absmax(absmax: float | torch.Tensor) -> torch.Tensor:
    """The per-tensor scale that maps the calibrated max|x| to 127 (1 if it is zero)."""
    a = torch.as_tensor(absmax, dtype=torch.float32)
    return torch.where(a > 0, a / QMAX, torch.ones_like(a))


def fake_quantize_per_token(x: torch.Tensor) -> torch.Tensor:
    """Quantize then dequantize per token (for error measurements, never for storage)."""
    q, s = quantize_per_token(x.reshape(-1, x.shape[-1]))
    return (q.float() * s).reshape(x.shape).to(x.dtype)
