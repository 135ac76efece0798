"""SmoothQuant's per-channel smoothing scales (pure math).

Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models" (arXiv:2211.10438), eq. 4: for input channel j,

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

then X' = X diag(s)^-1 and W' = diag(s) W (in nn.Linear's (out, in) layout: every
column j of W is multiplied by s_j), so X' W'^T = X W^T exactly in real arithmetic.
alpha is the migration strength: with alpha = 1 every activation channel ends with
max 1 (all of the range moved into the weights), with alpha = 0 every weight column
does (all of it left in the activations); with 0.5 both end with the same channel
maximum sqrt(max|X_j| max|W_j|).
"""

from __future__ import annotations

import torch

EPS = 1e-5  # floor on both maxima: an all-zero channel must not produce 0 or inf


def smoothing_scales(act_absmax: torch.Tensor, W: torch.Tensor, alpha: float) -> torch.Tensor:
    """Scales s (in,) from the calibrated ``act_absmax`` (in,) = max over tokens of |X_j| and
    the weights ``W`` (out, in) of every linear that reads X (concatenated along out).

    A channel that never carried a nonzero activation keeps s_j = 1: nothing to migrate.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    if act_absmax.shape != (W.shape[1],):
        raise ValueError(
            f"act_absmax has shape {tuple(act_absmax.shape)}, expected ({W.shape[1]},)"
        )
    a = act_absmax.float().clamp(min=EPS)
    w = W.float().abs().amax(dim=0).clamp(min=EPS)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    ok = (act_absmax > 0) & torch.isfinite(s) & (s > 0)
    return torch.where(ok, s, torch.ones_like(s))


def update_absmax(running: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Running per-channel max|x| over every row of ``x`` (..., in)."""
    cur = x.detach().reshape(-1, x.shape[-1]).float().abs().amax(dim=0)
    return cur if running is None else torch.maximum(running, cur)
