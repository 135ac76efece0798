"""The explicit method interface: every hook the walker calls is declared on the base
classes with its default, and the walker measures one layer error for every method,
model methods (AWQ, SmoothQuant) and linears outside the decoder blocks included."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import core.walk
from core.models import tiny_llama
from core.recipe import recipe_from_steps
from core.registry import LayerMethod, Method, MethodConfig, MethodContext, ModelMethod
from core.walk import apply_recipe, apply_step

CALIB = [
    torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(i)) for i in range(3)
]


def _errors(steps: list[dict], model: nn.Module | None = None) -> dict[str, float | None]:
    model = model if model is not None else tiny_llama(layers=2)
    reports = apply_recipe(
        model,
        recipe_from_steps(steps),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=CALIB,
    )
    return {r.name: r.rel_error for r in reports}


def test_hooks_are_declared_with_their_defaults() -> None:
    cfg, layer, model = MethodConfig(), nn.Linear(4, 3), nn.Sequential()
    lm = LayerMethod()
    assert lm.prepare({"x": layer}, cfg) is None
    assert lm.sequential(cfg) is False
    assert lm.init_stats(layer, cfg) is None
    assert lm.update_stats("s", torch.ones(2, 4)) == "s"
    assert Method().finalize_model(model) is None
    assert ModelMethod().apply_outside(layer, cfg) is layer
    for hook in ("prepare", "sequential", "init_stats", "update_stats", "apply"):
        assert inspect.getdoc(getattr(LayerMethod, hook)), hook
    # The walker calls them directly, never by looking a name up.
    assert "getattr(method" not in inspect.getsource(core.walk)


def test_model_method_errors_share_the_layer_method_definition() -> None:
    """Measured the same way, AWQ's activation-aware scales must beat plain RTN with the
    same bits and groups on most layers (the comparison the single definition allows)."""
    awq = _errors([{"method": "awq", "bits": 4, "group_size": 32}])
    rtn = _errors([{"method": "rtn", "bits": 4, "granularity": "group", "group_size": 32}])
    assert awq.keys() == rtn.keys() and len(awq) == 14
    assert all(e is not None and 0 < e < 0.5 for e in awq.values())
    better = sum(awq[n] < rtn[n] for n in awq)
    assert better >= 12, (awq, rtn)


def test_a_function_preserving_transform_measures_almost_zero() -> None:
    errors = _errors([{"method": "smoothquant", "alpha": 0.5}])
    assert len(errors) == 14 and all(e is not None and e < 1e-5 for e in errors.values())


def test_a_broken_fold_shows_in_the_layer_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-place comparison is a measurement: a fold that forgets the norm shows."""
    import core.methods.smoothquant as sq

    def readers_only(source: nn.Module, readers: list[nn.Module], s: torch.Tensor) -> None:
        with torch.no_grad():
            for lin in readers:
                lin.weight.mul_(s)

    monkeypatch.setattr(sq, "fold_scales", readers_only)
    errors = _errors([{"method": "smoothquant", "alpha": 0.5}])
    assert errors["model.layers.0.self_attn.q_proj"] > 1e-2


@pytest.mark.parametrize("method, changed", [("awq", True), ("smoothquant", False)])
def test_linears_outside_the_blocks_go_through_the_walker(method: str, changed: bool) -> None:
    model = tiny_llama(layers=2)
    head = model.lm_head
    errors = _errors([{"method": method, "targets": ["lm_head"], "ignore": []}], model)
    assert list(errors) == ["lm_head"]
    assert (model.lm_head is not head) == changed
    err = errors["lm_head"]
    assert err is not None and (0 < err < 0.5 if changed else err == 0.0)


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_a_calibrated_method_without_calibration_is_refused(method: str) -> None:
    ctx = MethodContext(on_progress=lambda f, m: None, should_cancel=lambda: False)
    step = recipe_from_steps([{"method": method}]).steps[0]
    with pytest.raises(ValueError, match=f"{method} needs a calibration set"):
        apply_step(tiny_llama(layers=1), step, ctx)
