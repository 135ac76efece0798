"""Wanda: pruning by weights and activations (Sun, Liu, Bair, Kolter 2023, arXiv:2306.11695).

The score of weight W_ij is |W_ij| * ||X_j||_2, where X_j is the j-th input feature over
every calibration token; weights are compared within each output row (or within each
group of M consecutive inputs of a row for N:M). No weight update follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.prune.masks import nm_mask, parse_pattern, row_mask


@dataclass
class InputNormStats:
    sq_sum: torch.Tensor  # (in,) float64 running sum over tokens of x_j^2
    n: int = 0  # tokens seen


def init_input_norms(in_features: int, device: torch.device | str = "cpu") -> InputNormStats:
    return InputNormStats(sq_sum=torch.zeros(in_features, dtype=torch.float64, device=device))


def update_input_norms(stats: InputNormStats, x: torch.Tensor) -> InputNormStats:
    """Fold a batch of layer inputs (..., in) into the per-feature squared norms."""
    x = x.reshape(-1, x.shape[-1])
    stats.sq_sum += x.double().pow(2).sum(dim=0)
    stats.n += x.shape[0]
    return stats


def wanda_scores(W: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """|W| * ||X||_2 per input column. W: (out, in); sq_norm: (in,) sum of x_j^2. -> (out, in)."""
    return W.detach().float().abs() * sq_norm.to(W.device).float().sqrt().unsqueeze(0)


def wanda_mask(
    weight: torch.Tensor,
    sq_norm: torch.Tensor,
    *,
    sparsity: float | None = None,
    pattern: str | None = None,
) -> torch.Tensor:
    """Keep mask (out, in): the same count dropped per row, or N kept of every M inputs."""
    scores = wanda_scores(weight, sq_norm)
    if pattern is not None:
        return nm_mask(scores, *parse_pattern(pattern))
    if sparsity is None:
        raise ValueError("give one of sparsity or pattern")
    return row_mask(scores, sparsity)
