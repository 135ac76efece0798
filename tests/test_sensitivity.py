"""Sensitivity sweeps: units, one-unit recipes that select exactly that unit, ranking, and the
mixed-precision recipe that keeps the sensitive layers in 8 bits (applied to a tiny Llama)."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import ModelLoadError
from core.models import load_model, model_skeleton, tiny_llama
from core.recipe import parse_step, recipe_from_steps
from core.registry import ConfigError
from core.sensitivity import model_layers
from core.walk import apply_recipe, find_linears
from runs.sensitivity import (
    is_sensitivity_sweep,
    keep_sensitive_recipe,
    most_sensitive,
    sensitivity_points,
    sensitivity_recipes,
    sweep_units,
)
from runs.sweep import expand_sweep

RTN4 = {"method": "rtn", "bits": 4, "granularity": "group", "group_size": 32}


@pytest.fixture(scope="module")
def names() -> list[str]:
    return model_layers(tiny_llama(layers=2))[0]


def _selected(recipe: list[dict], names: list[str]) -> list[str]:
    step = parse_step(recipe[0])
    return [n for n in names if step.selects(n)]


def test_one_recipe_per_linear_each_selecting_exactly_that_linear(names) -> None:
    units = sweep_units(names, RTN4, "layer")
    assert "lm_head" in names and "lm_head" not in [u.label for u in units]  # default ignore
    assert len(units) == 14  # 2 blocks x (q, k, v, o, gate, up, down)
    recipes = sensitivity_recipes(RTN4, units)
    for u, r in zip(units, recipes, strict=True):
        assert _selected(r, names) == [u.label]
        assert r[0]["bits"] == 4 and r[0]["group_size"] == 32
    assert is_sensitivity_sweep(recipes)


def test_block_units_select_whole_blocks(names) -> None:
    units = sweep_units(names, RTN4, "block", "model.layers")
    assert [u.label for u in units] == ["model.layers.0", "model.layers.1"]
    recipes = sensitivity_recipes(RTN4, units)
    picked = _selected(recipes[1], names)
    assert len(picked) == 7 and all(n.startswith("model.layers.1.") for n in picked)
    only_mlp = {**RTN4, "targets": ["re:mlp"]}
    assert (
        len(_selected(sensitivity_recipes(only_mlp, sweep_units(names, only_mlp))[0], names)) == 1
    )


def test_bad_input_is_refused(names) -> None:
    with pytest.raises(ConfigError):
        sensitivity_recipes(RTN4, sweep_units(names, {**RTN4, "targets": ["nothing"]}))
    with pytest.raises(ConfigError):
        sweep_units(names, {**RTN4, "bits": 99})
    with pytest.raises(ConfigError):
        sweep_units(names, RTN4, "row")  # type: ignore[arg-type]


def test_a_parameter_sweep_is_not_a_sensitivity_sweep() -> None:
    bits_sweep = expand_sweep([RTN4], 0, "bits", [3, 4])
    assert not is_sensitivity_sweep(bits_sweep)
    assert not is_sensitivity_sweep(bits_sweep[:1])


def _record(unit: str, ppl: float | None, base: float = 10.0) -> dict:
    metrics = {} if ppl is None else {"perplexity": ppl, "baseline_perplexity": base}
    return {"recipe": [{**RTN4, "targets": [unit]}], "metrics": metrics, "status": "x"}


def test_points_rank_units_by_perplexity_cost() -> None:
    recs = [_record("a", 10.5), _record("b", 13.0), _record("c", None), _record("d", 10.1)]
    pts = sensitivity_points(recs)
    assert [p["unit"] for p in pts] == ["b", "a", "d", "c"]  # unfinished last
    assert pts[0]["delta_ppl"] == pytest.approx(3.0) and pts[0]["rel_cost"] == pytest.approx(0.3)
    assert math.isnan(pts[-1]["delta_ppl"])
    assert most_sensitive(pts, 2) == ["b", "a"]
    assert most_sensitive(pts, 10) == ["b", "a", "d"]


def test_keep_sensitive_recipe_runs_mixed_precision(names) -> None:
    sensitive = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    steps = keep_sensitive_recipe(RTN4, sensitive)
    assert steps[0]["ignore"] == ["lm_head", *sensitive] and steps[1]["targets"] == sensitive
    assert steps[1]["bits"] == 8
    model = tiny_llama(layers=2)
    apply_recipe(
        model, recipe_from_steps(steps), on_progress=lambda f, m: None, should_cancel=lambda: False
    )
    bits = {n: getattr(m, "bits", None) for n, m in find_linears(model).items()}
    assert {bits[n] for n in sensitive} == {8}
    assert {b for n, b in bits.items() if n not in sensitive and n != "lm_head"} == {4}
    assert isinstance(find_linears(model)["lm_head"], torch.nn.Linear)  # still ignored
    assert keep_sensitive_recipe(RTN4, []) == recipe_from_steps([RTN4]).to_list()


def test_skeleton_has_the_real_models_layers_without_weights() -> None:
    sk = model_skeleton("demo")
    assert next(sk.parameters()).device.type == "meta"
    real = load_model("demo").model
    assert model_layers(sk) == model_layers(real)
    with pytest.raises(ModelLoadError, match="model not found: folder '/no/such/folder'"):
        model_skeleton("/no/such/folder")
