"""Mask selection from importance scores: unstructured (per row, per layer, global) and N:M.

Every function takes a score tensor (higher = more important) of shape (out, in) and
returns a boolean *keep* mask of the same shape. Counts are exact: ties are broken by
position (``topk`` order), never by a threshold that could over- or under-prune.
"""

from __future__ import annotations

import math

import torch

PATTERNS: tuple[str, ...] = ("2:4", "4:8")  # the semi-structured patterns the methods offer


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4): keep N of every M consecutive input weights."""
    try:
        n_str, m_str = pattern.split(":")
        n, m = int(n_str), int(m_str)
    except ValueError:
        raise ValueError(f"pattern {pattern!r} must look like 'N:M', e.g. '2:4'") from None
    if not 0 < n < m:
        raise ValueError(f"pattern {pattern!r} needs 0 < N < M")
    return n, m


def index_bits(m: int) -> int:
    """Bits to store one position inside a group of ``m`` (2 for M=4, 3 for M=8)."""
    return max(1, math.ceil(math.log2(m)))


def prune_count(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a ``sparsity`` fraction removes (rounded to nearest)."""
    return min(n, max(0, round(sparsity * n)))


def _keep_lowest_dropped(scores: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Keep mask that drops the ``k`` lowest scores along ``dim``."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(scores, k, dim=dim, largest=False).indices
        keep.scatter_(dim, idx, False)
    return keep


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop the same number of lowest-scoring weights in every output row (Wanda's group)."""
    return _keep_lowest_dropped(scores, prune_count(scores.shape[1], sparsity), dim=1)


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop the lowest-scoring weights of the whole matrix."""
    return count_mask(scores, prune_count(scores.numel(), sparsity))


def threshold_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask with a threshold instead of a count, as locuslab/wanda's magnitude pruning:
    ``t`` = the score at 0-based position floor(sparsity x n) of the sorted scores, and
    every score ``<= t`` is dropped: at least floor(sparsity x n) + 1 weights (one more than
    the count), plus every weight tied with ``t``."""
    flat = scores.reshape(-1).float()
    pos = min(int(flat.numel() * sparsity), flat.numel() - 1)
    t = torch.kthvalue(flat, pos + 1).values  # the (pos + 1)-th smallest = sorted[pos]
    return scores.float() > t


def count_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Drop exactly ``k`` lowest-scoring weights of the whole tensor."""
    return _keep_lowest_dropped(scores.reshape(-1), k, dim=0).reshape(scores.shape)


def global_counts(scores: list[torch.Tensor], sparsity: float) -> list[int]:
    """Per-tensor prune counts that together drop the globally lowest ``sparsity`` fraction.

    Memory: one copy of all scores (fine for the models this lab runs on a CPU).
    Ties at the threshold are broken by tensor order, so the total is exact.
    """
    sizes = [s.numel() for s in scores]
    k = prune_count(sum(sizes), sparsity)
    if k == 0:
        return [0] * len(scores)
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    idx = torch.topk(flat, k, largest=False).indices
    owner = torch.bucketize(idx, torch.tensor(sizes).cumsum(0), right=True)
    return torch.bincount(owner, minlength=len(scores)).tolist()


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive inputs of a row.

    A last group shorter than ``m`` (in not divisible by m) keeps at most ``n`` too.
    """
    out_f, in_f = scores.shape
    pad = (-in_f) % m
    s = scores.float()
    if pad:  # padded slots score -inf so they are the ones dropped
        s = torch.nn.functional.pad(s, (0, pad), value=-math.inf)
    groups = s.reshape(out_f, -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return keep.reshape(out_f, -1)[:, :in_f]


def nm_group_counts(weight: torch.Tensor, m: int) -> torch.Tensor:
    """Non-zeros per group of ``m`` consecutive inputs, shape (out, ceil(in / m))."""
    out_f, in_f = weight.shape
    nz = (weight != 0).to(torch.int32)
    pad = (-in_f) % m
    if pad:
        nz = torch.nn.functional.pad(nz, (0, pad))
    return nz.reshape(out_f, -1, m).sum(dim=2)


def is_nm_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive inputs holds at most ``n`` non-zeros."""
    return bool((nm_group_counts(weight, m) <= n).all())
