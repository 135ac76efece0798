"""Registry-wide contract: every registered method, with its default config, on a tiny model.

New methods are picked up automatically: the config round-trips through JSON, its
defaults are valid, every bad value is refused with a ConfigError that says what is
allowed, the model still runs, its outputs stay close to the original's, the reported
weight memory never grows, and the walker reports a bounded layer error for every
targeted linear (model methods such as AWQ and SmoothQuant included).
"""

from __future__ import annotations

import json

import pytest
import torch

from core.calib import CalibSettings, calibration_batches
from core.metrics import weight_memory
from core.models import byte_tokenizer, tiny_llama
from core.recipe import recipe_from_steps
from core.registry import ConfigError, describe_method, describe_params, methods
from core.walk import apply_recipe, select_targets

METHODS = [m.name for m in methods()]
# KV-cache policies change no weight: they have a contract of their own (below)
WEIGHT_METHODS = [m.name for m in methods() if m.kind != "kv"]
KV_METHODS = [m.name for m in methods() if m.kind == "kv"]
TEXT = "def f(x):\n    return x * 2 + 1\n" * 200
MAX_LAYER_ERROR = 0.5  # default settings on the tiny model: measured at most ~0.3 (pruning)


@pytest.fixture(scope="module")
def calib() -> list[torch.Tensor]:
    return calibration_batches(byte_tokenizer(), TEXT, CalibSettings(n_samples=4, seq_len=64))


@pytest.mark.parametrize("name", WEIGHT_METHODS)
def test_method_contract(name: str, calib: list[torch.Tensor]) -> None:
    cls = next(m for m in methods() if m.name == name)
    cfg = cls.config_cls()
    assert cls.config_cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert describe_method(cls)["card"]["idea"]

    model = tiny_llama(hidden=64, layers=2, seed=1)
    ids = calib[0][:, :48]
    with torch.no_grad():
        ref = model(ids).logits
    before = weight_memory(model).weight_bytes
    recipe = recipe_from_steps([{"method": name}])
    targets = set(select_targets(model, recipe.steps[0]))
    progress: list[float] = []
    reports = apply_recipe(
        model,
        recipe,
        on_progress=lambda f, m: progress.append(f),
        should_cancel=lambda: False,
        calib_batches=calib,
    )
    with torch.no_grad():
        out = model(ids).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 0.5, f"{name}: logits moved by {rel:.3f} of their norm with default settings"
    assert weight_memory(model).weight_bytes <= before
    assert progress and max(progress) <= 1.0 + 1e-9

    # One layer-error report per targeted linear, measured by the walker, bounded.
    assert sorted(r.name for r in reports) == sorted(targets)
    errors = {r.name: r.rel_error for r in reports}
    assert all(e is not None and 0.0 <= e < MAX_LAYER_ERROR for e in errors.values()), errors


@pytest.mark.parametrize("name", KV_METHODS)
def test_kv_method_contract(name: str) -> None:
    """A KV step leaves every weight and the one-pass logits alone, reports no layer, and
    records its cache policy on the model for the job's KV stage."""
    from core.methods.kv import kv_spec

    cls = _method(name)
    assert cls.config_cls.from_dict(json.loads(json.dumps(cls.config_cls().to_dict())))
    model = tiny_llama(hidden=64, layers=2, seed=1)
    ids = torch.randint(0, 256, (1, 32))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(ids).logits
    reports = apply_recipe(
        model,
        recipe_from_steps([{"method": name}]),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
    )
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    assert reports == [] and kv_spec(model) is not None
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _method(name: str):
    return next(m for m in methods() if m.name == name)


def _bad_values(p: dict) -> list[tuple[object, str]]:
    """Values the declared choices / range / type of parameter ``p`` refuse, each with
    the text the refusal must contain (what is allowed)."""
    out: list[tuple[object, str]] = []
    if p["choices"]:
        strings = all(isinstance(c, str) for c in p["choices"])
        bad = "no-such-value" if strings else max(p["choices"]) + 1
        out.append((bad, "one of " + ", ".join(repr(c) for c in p["choices"])))
    number = float if "float" in p["type"].split("|") else int
    if p["max"] is not None:
        allowed = f"[{p['min']}, {p['max']}]" if p["min"] is not None else f"<= {p['max']}"
        out.append((number(p["max"]) + number(1), allowed))
    elif p["min"] is not None:
        out.append((number(p["min"]) - number(1), f">= {p['min']}"))
    if "str" not in p["type"].split("|"):
        out.append(("not-a-value", "wrong type: expected " + p["type"].replace("|", "/")))
    return out


@pytest.mark.parametrize("name", METHODS)
def test_bad_values_are_refused_naming_what_is_allowed(name: str) -> None:
    cls = _method(name)
    cls.config_cls()  # the defaults are valid
    params = describe_params(cls.config_cls)
    for p in params:
        for value, allowed in _bad_values(p):
            with pytest.raises(ConfigError) as e:
                cls.config_cls.from_dict({p["name"]: value})
            assert allowed in str(e.value), (p["name"], value, str(e.value))
    with pytest.raises(ConfigError, match="allowed: "):
        cls.config_cls.from_dict({"no_such_parameter": 1})
