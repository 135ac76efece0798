"""Weight statistics: histograms, outliers beyond k standard deviations, kurtosis."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from core.storage import CompressedLinear

HIST_BINS = 120  # bins of every stored histogram
OUTLIER_KS: tuple[float, ...] = tuple(k / 2 for k in range(2, 41))  # k = 1.0 .. 20.0 in 0.5 steps


@dataclass
class WeightStats:
    """Summary of one weight matrix, small enough to store with a run as JSON."""

    shape: tuple[int, int]
    mean: float
    std: float
    absmax: float
    kurtosis: float  # excess kurtosis: 0 for a Gaussian, large with heavy tails
    zeros: float  # fraction of exact zeros (sparsity)
    edges: list[float]  # HIST_BINS + 1 bin edges
    counts: list[int]  # HIST_BINS counts
    outliers: dict[str, int]  # str(k) -> number of |w - mean| > k * std
    channel_absmax: list[float]  # max |w| per input channel (column)

    def to_dict(self) -> dict:
        return asdict(self)


def weight_stats(w: torch.Tensor, lo: float | None = None, hi: float | None = None) -> WeightStats:
    """Statistics of ``w`` (out, in); histogram over [lo, hi] (default: its own range)."""
    w = w.detach().float()
    flat = w.reshape(-1)
    mean, std = flat.mean().item(), flat.std().item()
    lo = flat.min().item() if lo is None else lo
    hi = flat.max().item() if hi is None else hi
    if hi <= lo:
        hi = lo + 1e-6
    # Values a hair outside a shared range (rounding) land in the edge bins, not nowhere.
    counts = torch.histc(flat.clamp(lo, hi), bins=HIST_BINS, min=lo, max=hi)
    edges = torch.linspace(lo, hi, HIST_BINS + 1)
    z = (flat - mean).abs() / std if std > 0 else torch.zeros_like(flat)
    kurt = (((flat - mean) / std) ** 4).mean().item() - 3.0 if std > 0 else 0.0
    return WeightStats(
        shape=(w.shape[0], w.shape[1]),
        mean=mean,
        std=std,
        absmax=flat.abs().max().item(),
        kurtosis=kurt,
        zeros=(flat == 0).float().mean().item(),
        edges=[round(e, 7) for e in edges.tolist()],
        counts=[int(c) for c in counts.tolist()],
        outliers={str(k): int((z > k).sum().item()) for k in OUTLIER_KS},
        channel_absmax=w.abs().amax(dim=0).tolist(),
    )


def layer_weight(mod: nn.Module) -> torch.Tensor:
    """The float weight a linear computes with (dequantized for compressed layers)."""
    if isinstance(mod, CompressedLinear):
        return mod.dequantized_weight()
    return mod.weight.detach()


def before_after(before: torch.Tensor, after: torch.Tensor) -> dict[str, dict]:
    """Stats of a layer before and after compression on shared histogram bins."""
    lo = min(before.min().item(), after.min().item())
    hi = max(before.max().item(), after.max().item())
    return {
        "before": weight_stats(before, lo, hi).to_dict(),
        "after": weight_stats(after, lo, hi).to_dict(),
    }
