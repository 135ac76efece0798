"""Registry-wide contract: every registered method, with its default config, on a tiny model.

New methods are picked up automatically: the config round-trips through JSON, the model
still runs, its outputs stay close to the original's, and the reported weight memory
never grows.
"""

from __future__ import annotations

import json

import pytest
import torch

from core.calib import CalibSettings, calibration_batches
from core.metrics import weight_memory
from core.models import byte_tokenizer, tiny_llama
from core.recipe import recipe_from_steps
from core.registry import describe_method, methods
from core.walk import apply_recipe

METHODS = [m.name for m in methods()]
TEXT = "def f(x):\n    return x * 2 + 1\n" * 200


@pytest.fixture(scope="module")
def calib() -> list[torch.Tensor]:
    return calibration_batches(byte_tokenizer(), TEXT, CalibSettings(n_samples=4, seq_len=64))


@pytest.mark.parametrize("name", METHODS)
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
    progress: list[float] = []
    apply_recipe(
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
