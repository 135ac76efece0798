"""Mask selection: exact counts per row / layer / globally, and N:M groups."""

from __future__ import annotations

import pytest
import torch

from core.prune.magnitude import magnitude_mask
from core.prune.masks import (
    global_counts,
    index_bits,
    is_nm_sparse,
    layer_mask,
    nm_group_counts,
    nm_mask,
    parse_pattern,
    row_mask,
)
from core.prune.wanda import init_input_norms, update_input_norms, wanda_mask, wanda_scores


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7])
def test_row_mask_drops_the_same_count_in_every_row(sparsity: float) -> None:
    s = torch.randn(12, 40)
    keep = row_mask(s, sparsity)
    assert ((~keep).sum(dim=1) == round(sparsity * 40)).all()
    # The dropped ones are the lowest of their row.
    for r in range(12):
        assert s[r][~keep[r]].max() < s[r][keep[r]].min()


def test_layer_mask_is_exact_even_with_ties() -> None:
    s = torch.zeros(8, 10)  # every score tied: a threshold would drop all or none
    keep = layer_mask(s, 0.3)
    assert (~keep).sum().item() == 24


def test_global_counts_prune_the_globally_smallest() -> None:
    a, b = torch.rand(10, 10), torch.rand(5, 20) + 0.5  # b's values are mostly larger
    counts = global_counts([a, b], 0.5)
    assert sum(counts) == 100 and counts[0] > counts[1]
    allv = torch.cat([a.flatten(), b.flatten()])
    thresh = allv.sort().values[99]
    assert counts[0] == int((a <= thresh).sum()) and counts[1] == int((b <= thresh).sum())


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_mask_keeps_exactly_n_per_group(pattern: str) -> None:
    n, m = parse_pattern(pattern)
    s = torch.randn(6, 32)
    keep = nm_mask(s, n, m)
    assert (keep.reshape(6, -1, m).sum(dim=2) == n).all()
    w = torch.randn(6, 32) * keep
    assert is_nm_sparse(w, n, m) and not is_nm_sparse(torch.randn(6, 32), n, m)


def test_nm_mask_with_a_short_last_group() -> None:
    keep = nm_mask(torch.randn(3, 10), 2, 4)  # groups of 4, 4, 2
    counts = nm_group_counts(keep.float(), 4)
    assert counts.tolist() == [[2, 2, 2]] * 3


def test_pattern_parsing_and_index_bits() -> None:
    assert parse_pattern("2:4") == (2, 4) and index_bits(4) == 2 and index_bits(8) == 3
    for bad in ("4:2", "2-4", "0:4"):
        with pytest.raises(ValueError):
            parse_pattern(bad)


def test_magnitude_mask_keeps_the_largest() -> None:
    w = torch.tensor([[0.1, -3.0, 0.2, 2.0], [-0.5, 0.4, 5.0, -0.01]])
    assert magnitude_mask(w, pattern="2:4").tolist() == [
        [False, True, False, True],
        [True, False, True, False],
    ]
    assert (~magnitude_mask(w, sparsity=0.25)).sum() == 2


def test_wanda_scores_use_input_norms_and_compare_within_rows() -> None:
    stats = init_input_norms(4)
    x = torch.tensor([[1.0, 0.0, 2.0, 0.1], [1.0, 0.0, 2.0, 0.1]])
    update_input_norms(stats, x[:1])
    update_input_norms(stats, x[1:].unsqueeze(0))  # (batch, tokens, in) is folded too
    assert stats.n == 2
    assert torch.allclose(stats.sq_sum, (x**2).sum(0).double())
    w = torch.tensor([[1.0, 9.0, 0.6, 3.0], [2.0, 1.0, 1.0, 1.0]])
    scores = wanda_scores(w, stats.sq_sum)
    assert torch.allclose(scores, w.abs() * (x**2).sum(0).sqrt())
    keep = wanda_mask(w, stats.sq_sum, sparsity=0.5)
    # Row 0: the 9.0 weight sees a dead input and the 3.0 a tiny one; both go.
    assert keep[0].tolist() == [True, False, True, False]
    assert ((~keep).sum(dim=1) == 2).all()
