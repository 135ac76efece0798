"""Magnitude pruning: the importance of a weight is its absolute value (Han et al. 2015)."""

from __future__ import annotations

import torch

from core.prune.masks import count_mask, layer_mask, nm_mask, parse_pattern, threshold_mask


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|w| as float32, shape (out, in)."""
    return weight.detach().float().abs()


def magnitude_mask(
    weight: torch.Tensor,
    *,
    sparsity: float | None = None,
    pattern: str | None = None,
    prune: int | None = None,
    ties: str = "exact",
) -> torch.Tensor:
    """Keep mask (out, in): drop the smallest |w| of the layer (``sparsity``), exactly
    ``prune`` of them (a count fixed by a global threshold), or all but N in every M
    consecutive inputs (``pattern``).

    ``ties`` (``sparsity`` only): "exact" drops exactly round(sparsity x n), ties at the
    cut broken by position; "threshold" drops every |w| <= the floor(sparsity x n)-th
    smallest (0-based), as locuslab/wanda does: one more, and every tie at the cut."""
    scores = magnitude_scores(weight)
    if pattern is not None:
        return nm_mask(scores, *parse_pattern(pattern))
    if prune is not None:
        return count_mask(scores, prune)
    if sparsity is None:
        raise ValueError("give one of sparsity, pattern or prune")
    if ties == "threshold":
        return threshold_mask(scores, sparsity)
    if ties != "exact":
        raise ValueError(f"ties={ties!r}: allowed are 'exact' and 'threshold'")
    return layer_mask(scores, sparsity)
