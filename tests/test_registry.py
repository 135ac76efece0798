"""The method registry and recipes: validation, messages, JSON round trips."""

from __future__ import annotations

import json

import pytest

from core.recipe import NAMED_RECIPES, parse_recipe, recipe_from_steps
from core.registry import ConfigError, describe_method, get_method, methods


def test_every_method_config_round_trips_and_has_a_card() -> None:
    names = [m.name for m in methods()]
    assert {"rtn", "cast"} <= set(names)
    for m in methods():
        cfg = m.config_cls()
        again = m.config_cls.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
        d = describe_method(m)
        assert d["card"]["idea"] and d["card"]["hardware"] and d["card"]["speed"]
        assert all(p["help"] for p in d["params"]), f"{m.name} has a parameter without help"


@pytest.mark.parametrize(
    "step, fragment",
    [
        ({"method": "rtn", "bits": 99}, "out of range: a value in [2, 8]"),
        ({"method": "rtn", "granularity": "row"}, "one of 'tensor', 'channel', 'group'"),
        ({"method": "rtn", "group_size": 100}, "power of two"),
        ({"method": "rtn", "bits": "8"}, "wrong type"),
        ({"method": "rtn", "symmetric": 1}, "wrong type"),
        ({"method": "rtn", "colour": "red"}, "unknown parameter(s) colour"),
        ({"method": "nope"}, "unknown method 'nope'; registered methods:"),
        ({"bits": 8}, 'with a "method" key'),
    ],
)
def test_bad_recipe_values_are_refused_with_what_is_allowed(step: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        recipe_from_steps([step])
    assert fragment in str(e.value)


def test_named_inline_and_file_recipes(tmp_path) -> None:
    assert parse_recipe("baseline").steps == ()
    r = parse_recipe("rtn-int8")
    assert r.steps[0].config.bits == 8 and r.steps[0].config.granularity == "channel"
    inline = parse_recipe(
        '[{"method": "rtn", "bits": 4, "granularity": "group", "group_size": 64}]'
    )
    assert inline.steps[0].config.group_size == 64
    f = tmp_path / "r.yaml"
    f.write_text("- method: rtn\n  bits: 6\n  targets: ['*mlp*']\n")
    y = parse_recipe(str(f))
    assert y.steps[0].config.bits == 6 and y.steps[0].targets == ("*mlp*",)
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_recipe("[{bad json")
    with pytest.raises(ConfigError, match="unknown recipe"):
        parse_recipe("no-such-recipe")


def test_named_recipes_all_parse() -> None:
    for name in NAMED_RECIPES:
        assert parse_recipe(name).name == name


def test_targets_and_ignore_patterns() -> None:
    step = recipe_from_steps([{"method": "rtn", "targets": ["*mlp*"]}]).steps[0]
    assert step.selects("model.layers.0.mlp.up_proj")
    assert not step.selects("model.layers.0.self_attn.q_proj")
    assert not recipe_from_steps([{"method": "rtn"}]).steps[0].selects("lm_head")
    regex = recipe_from_steps([{"method": "rtn", "targets": ["re:layers\\.1\\."]}]).steps[0]
    assert regex.selects("model.layers.1.mlp.up_proj") and not regex.selects(
        "model.layers.0.mlp.up_proj"
    )


def test_float_params_accept_ints_and_bool_is_not_an_int() -> None:
    cls = get_method("rtn").config_cls
    assert cls.from_dict({"clip_percentile": 99}).clip_percentile == 99.0
    with pytest.raises(ConfigError):
        cls.from_dict({"bits": True})
