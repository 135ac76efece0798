"""SparseGPT: one-shot pruning with OBS weight reconstruction (Frantar & Alistarh 2023,
"SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", arXiv:2301.00774).

Columns are visited left to right. Pruning column i (setting w_i to q_i = 0 where the
mask drops it) changes the layer output; the optimal update of the not-yet-visited
columns is -(w_i - q_i) / [H_F^-1]_ii * [H_F^-1]_i,F (Optimal Brain Surgeon restricted
to the remaining columns F). The rows of the successive H_F^-1 are the rows of the
upper Cholesky factor of H^-1 (scaled), so one factorisation serves every column.
Masks are chosen per block of columns from w^2 / [H_F^-1]_ii^2 (adaptive mask selection),
and for N:M per group of M columns when the group is reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.prune.masks import count_mask, nm_mask, parse_pattern, prune_count
from core.quant.hessian import damped_inverse_cholesky


@dataclass
class SparseGPTResult:
    weight: torch.Tensor  # (out, in) pruned and reconstructed, dtype of the input weight
    keep: torch.Tensor  # (out, in) bool, False where pruned


def _block_keep(
    W1: torch.Tensor, d: torch.Tensor, sparsity: float | None, nm: tuple[int, int] | None
) -> torch.Tensor:
    """Initial keep mask of one block: adaptive unstructured, or all-kept for N:M (chosen later)."""
    if nm is not None:
        return torch.ones_like(W1, dtype=torch.bool)
    assert sparsity is not None
    return count_mask(W1.pow(2) / d.pow(2).unsqueeze(0), prune_count(W1.numel(), sparsity))


@torch.no_grad()
def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    sparsity: float | None = None,
    pattern: str | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> SparseGPTResult:
    """Prune ``W`` (out, in) given the layer Hessian ``H`` (in, in) = 2/n sum x x^T.

    Exactly one of ``sparsity`` (fraction pruned in every block of ``block_size``
    columns, selected across the whole block) or ``pattern`` ("N:M") is given.
    ``block_size`` must be a multiple of M for N:M. Inputs that never fire get zero
    weights (their Hessian diagonal is zero).
    """
    if (sparsity is None) == (pattern is None):
        raise ValueError("give exactly one of sparsity or pattern")
    nm = parse_pattern(pattern) if pattern is not None else None
    if nm is not None and block_size % nm[1]:
        raise ValueError(f"block_size={block_size} must be a multiple of M={nm[1]}")
    dtype = W.dtype
    # The sweep runs on the transpose: a column of W is a contiguous row of Wt, so the
    # per-column reads and the rank-1 updates stream memory instead of striding over it.
    Wt = W.detach().t().float().clone(memory_format=torch.contiguous_format)  # (in, out)
    rows, cols = W.shape
    Hinv, dead = damped_inverse_cholesky(H.to(W.device).float(), damp)  # upper U: H^-1 = U^T U
    Wt[dead] = 0
    keep_t = torch.ones_like(Wt, dtype=torch.bool)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = Wt[i1:i2]  # (b, out) a view: the block, updated as its columns are visited
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        keep1 = _block_keep(W1.t(), d, sparsity, nm).t().contiguous()  # (b, out)
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                j = min(i + nm[1], i2 - i1)
                scores = W1[i:j].pow(2) / d[i:j].pow(2).unsqueeze(1)
                keep1[i:j] = nm_mask(scores.t(), *nm).t()
            w = W1[i]
            q = w * keep1[i]
            err = (w - q) / d[i]
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1.0)
            W1[i] = q  # exact zeros, not w minus a rounded update
            Err1[i] = err
        keep_t[i1:i2] = keep1
        Wt[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1.0)  # lazy update of later columns
    W, keep = Wt.t(), keep_t.t()
    W[~keep] = 0.0
    return SparseGPTResult(weight=W.to(dtype).contiguous(), keep=keep.contiguous())
