"""Pruning methods through the walker on tiny-random: configs, exact masks, progress,
cancellation between blocks, and the final sparse storage."""

from __future__ import annotations

import pytest
import torch

from core.errors import Cancelled
from core.models import tiny_llama
from core.prune.masks import nm_group_counts
from core.recipe import parse_recipe, recipe_from_steps
from core.registry import ConfigError
from core.storage import BitmaskSparseLinear, NMSparseLinear
from core.walk import apply_recipe, find_linears

BATCHES = [
    torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(3)
]


def _run(recipe: str, **kw):
    model = kw.get("model") or tiny_llama()
    progress: list[tuple[float, str]] = []
    reports = apply_recipe(
        model,
        parse_recipe(recipe),
        on_progress=lambda f, m: progress.append((f, m)),
        should_cancel=kw.get("should_cancel", lambda: False),
        calib_batches=kw.get("calib", BATCHES),
    )
    return model, reports, progress


def _block_weights(model) -> dict[str, torch.Tensor]:
    return {
        n: m.dequantized_weight() if hasattr(m, "dequantized_weight") else m.weight.detach()
        for n, m in find_linears(model).items()
        if n != "lm_head"
    }


@pytest.mark.parametrize(
    "step, fragment",
    [
        ({"method": "wanda", "sparsity": 0.5, "pattern": "2:4"}, "exactly one of sparsity"),
        ({"method": "wanda", "sparsity": None}, "exactly one of sparsity"),
        ({"method": "magnitude", "sparsity": 1.0}, "strictly between 0 and 1"),
        ({"method": "magnitude", "sparsity": 0}, "strictly between 0 and 1"),
        ({"method": "sparsegpt", "pattern": "3:4"}, "one of '2:4', '4:8'"),
        ({"method": "magnitude", "pattern": "2:4", "scope": "global"}, 'scope must be "layer"'),
        ({"method": "sparsegpt", "block_size": 100}, "multiple of 8"),
    ],
)
def test_bad_pruning_configs_are_refused(step: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        recipe_from_steps([step])
    assert fragment in str(e.value)


def test_a_pattern_alone_means_no_unstructured_fraction() -> None:
    cfg = recipe_from_steps([{"method": "wanda", "pattern": "2:4"}]).steps[0].config
    assert cfg.sparsity is None and cfg.pattern == "2:4"
    again = recipe_from_steps([{"method": "wanda", **cfg.to_dict()}]).steps[0].config
    assert again == cfg


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_masks_are_exact_and_stored_compressed(method: str) -> None:
    model, reports, progress = _run(f'[{{"method": "{method}", "sparsity": 0.5}}]')
    weights = _block_weights(model)
    assert len(weights) == 14 and len(reports) == 14  # 7 linears in each of 2 blocks
    for name, w in weights.items():
        zeros = (w == 0).sum(dim=1)
        if method == "wanda":  # compared within each row
            assert (zeros == w.shape[1] // 2).all(), name
        else:  # per layer (magnitude) or per block of columns (sparsegpt)
            assert zeros.sum().item() == w.numel() // 2, name
        assert isinstance(find_linears(model)[name], BitmaskSparseLinear)
    assert all(r.rel_error is not None and 0 < r.rel_error < 1 for r in reports)
    # Progress once per decoder block, ending at 1.
    blocks = [m for _, m in progress if "block" in m]
    assert blocks == [f"{method}: block 1/2", f"{method}: block 2/2"]
    assert progress[-1][0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "method, pattern",
    [("magnitude", "2:4"), ("wanda", "2:4"), ("sparsegpt", "2:4"), ("wanda", "4:8")],
)
def test_nm_groups_hold_at_most_n_nonzeros(method: str, pattern: str) -> None:
    n, m = (int(v) for v in pattern.split(":"))
    model, _, _ = _run(f'[{{"method": "{method}", "pattern": "{pattern}"}}]')
    for name, w in _block_weights(model).items():
        counts = nm_group_counts(w, m)
        assert (counts <= n).all(), name
        assert (w == 0).float().mean().item() >= 1 - n / m  # at least the pattern's sparsity
        assert isinstance(find_linears(model)[name], NMSparseLinear)


def test_global_magnitude_prunes_the_global_fraction_unevenly() -> None:
    model = tiny_llama()
    with torch.no_grad():  # one layer with 4x larger weights keeps most of them globally
        model.model.layers[0].mlp.down_proj.weight.mul_(4.0)
    recipe = '[{"method": "magnitude", "sparsity": 0.5, "scope": "global"}]'
    model, _, _ = _run(recipe, calib=None, model=model)
    weights = _block_weights(model)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == total // 2
    big = float((weights["model.layers.0.mlp.down_proj"] == 0).float().mean())
    others = [float((w == 0).float().mean()) for n, w in weights.items() if "0.mlp.down" not in n]
    assert big < 0.25 < 0.5 < min(others)


def test_calibrated_pruning_is_cancelled_between_blocks() -> None:
    calls = {"n": 0}

    def cancel_on_second_block() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(Cancelled):
        _run('[{"method": "sparsegpt", "sparsity": 0.5}]', should_cancel=cancel_on_second_block)
    assert calls["n"] == 2


def test_wanda_needs_calibration() -> None:
    with pytest.raises(ValueError, match="needs a calibration set"):
        _run('[{"method": "wanda", "sparsity": 0.5}]', calib=None)
