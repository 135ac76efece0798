"""The layer Hessian H = 2/n sum x x^T of ||WX - W'X||^2, shared by GPTQ and SparseGPT.

Shapes: x is (..., in); H is (in, in), float32 (float64 is not needed at these sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HessianStats:
    H: torch.Tensor  # (in, in) running 2/n * sum x x^T
    n: int = 0  # rows seen


def init_hessian(in_features: int, device: torch.device | str = "cpu") -> HessianStats:
    return HessianStats(H=torch.zeros(in_features, in_features, device=device))


def update_hessian(stats: HessianStats, x: torch.Tensor) -> HessianStats:
    """Fold a batch of layer inputs (..., in) into the running average.

    A batch of several windows (batch, seq, in) is folded one window at a time, so H does
    not depend on how calibration windows were batched (core.walk.CALIB_BATCH_TOKENS):
    folding 16 windows at once rescales H once instead of 16 times, a different float
    rounding that flips GPTQ codes on rounding boundaries (the demo model's GPTQ 4-bit
    perplexity moved by 0.2%). Same flops either way."""
    if x.dim() > 2 and x.shape[0] > 1:
        for window in x:
            _fold(stats, window)
        return stats
    return _fold(stats, x)


def _fold(stats: HessianStats, x: torch.Tensor) -> HessianStats:
    x = x.reshape(-1, x.shape[-1]).float()
    m = x.shape[0]
    total = stats.n + m
    stats.H.mul_(stats.n / total)
    x = x * (2.0 / total) ** 0.5
    stats.H.addmm_(x.t(), x)
    stats.n = total
    return stats


def damped_inverse_cholesky(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, and the dead-input mask.

    Inputs that never fire (zero diagonal) get H_ii = 1 so the factorisation exists;
    the caller zeroes their weights. Returns (Hinv_chol_upper (in, in), dead (in,) bool).
    """
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True), dead
