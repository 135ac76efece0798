"""Who goes at the cut of magnitude pruning: exact counts by default, the reference's
``<=`` threshold on request."""

from __future__ import annotations

import pytest
import torch

from core.methods.magnitude import MagnitudeConfig
from core.prune.magnitude import magnitude_mask
from core.prune.masks import threshold_mask
from core.registry import ConfigError


def test_exact_drops_exactly_the_count_even_with_ties() -> None:
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 3.0, 4.0, 5.0]])  # 4 ties at the cut
    keep = magnitude_mask(w, sparsity=0.25)
    assert int((~keep).sum()) == 2  # round(0.25 x 8)
    assert not bool((~keep)[0].all())  # only two of the four tied weights go


def test_threshold_drops_one_more_and_every_tie() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=g)  # distinct values
    keep = magnitude_mask(w, sparsity=0.5, ties="threshold")
    assert int((~keep).sum()) == 64 * 32 // 2 + 1  # the reference's `<= sorted[n/2]`
    cut = w.abs().flatten().sort().values[64 * 32 // 2]
    assert torch.equal(~keep, w.abs() <= cut)
    tied = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 3.0, 4.0, 5.0]])
    assert int((~threshold_mask(tied.abs(), 0.25)).sum()) == 4  # all ties at the cut go


def test_exact_is_the_default_and_threshold_only_where_it_means_something() -> None:
    assert MagnitudeConfig().ties == "exact"
    MagnitudeConfig(sparsity=0.5, ties="threshold")
    with pytest.raises(ConfigError, match="threshold"):
        MagnitudeConfig(sparsity=None, pattern="2:4", ties="threshold")
    with pytest.raises(ConfigError, match="threshold"):
        MagnitudeConfig(sparsity=0.5, scope="global", ties="threshold")
    with pytest.raises(ConfigError):
        MagnitudeConfig(sparsity=0.5, ties="loose")
