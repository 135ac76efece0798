"""Pruning quality on the bundled demo model: the calibrated methods beat magnitude.

Settings (small, so the file stays around a minute on two idle cores): calibration on
stdlib-code, 8 samples of 256 tokens, seed 0; perplexity on the first 2048 tokens of
stdlib-heldout in windows of 256.

Measured on the bundled demo model (stage 2 of its training, sha256 c3a099ff...,
unpruned perplexity 45.45 here):
- 50%:  magnitude 51.07, wanda 49.29 (0.965x), sparsegpt 46.72 (0.915x)
- 2:4:  magnitude 53.86, wanda 53.05 (0.985x), sparsegpt 48.00 (0.891x)
Margins: Wanda at most 0.99x magnitude's perplexity, SparseGPT at most 0.98x. Wanda's
gain at 2:4 is the thinnest (1.5%): |W| x ||X|| gains most where a few input features
carry much larger norms than the rest, and in this small model only the down_proj
inputs have such outliers (see the Outliers page). On the first,
shorter-trained demo model every method stayed within 1% of the unpruned perplexity at
50% and Wanda's ordering against magnitude was noise; if the model is retrained,
re-measure before touching a margin.
Mean layer output errors (on calibration rows) must also be lower than magnitude's:
SparseGPT's below 0.6x (measured 0.49x at 50% and 0.42x at 2:4, calibrated group by group
in each block: true_sequential), Wanda's strictly lower (0.90x and 0.91x).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from core.calib import CalibSettings, calibration_batches
from core.data import get_text_set
from core.metrics import EvalSettings, eval_windows, evaluate
from core.models import load_model
from core.recipe import parse_recipe
from core.walk import apply_recipe, find_linears

SETTINGS = {"50%": {"sparsity": 0.5}, "2:4": {"pattern": "2:4"}}
METHODS = ("magnitude", "wanda", "sparsegpt")
PPL_MARGIN = {"wanda": 0.99, "sparsegpt": 0.98}  # perplexity <= margin x magnitude's
ERR_BOUND = {"wanda": 1.0, "sparsegpt": 0.6}  # mean layer error < bound x magnitude's


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], dict[str, float]]:
    torch.manual_seed(0)
    loaded = load_model("demo")
    tok = loaded.tokenizer
    windows = eval_windows(tok, get_text_set("stdlib-heldout").text, EvalSettings(eval_tokens=2048))
    batches = calibration_batches(
        tok, get_text_set("stdlib-code").text, CalibSettings(n_samples=8, seq_len=256, seed=0)
    )
    out = {}
    for method in METHODS:
        for setting, params in SETTINGS.items():
            model = copy.deepcopy(loaded.model)
            recipe = parse_recipe(json.dumps([{"method": method, **params}]))
            reports = apply_recipe(
                model,
                recipe,
                on_progress=lambda f, m: None,
                should_cancel=lambda: False,
                calib_batches=batches,
            )
            zeros = [
                float((m.dequantized_weight() == 0).float().mean())
                for n, m in find_linears(model).items()
                if n != "lm_head"
            ]
            assert len(zeros) == 28 and min(zeros) >= 0.5, f"{method} {setting}"
            out[(method, setting)] = {
                "layer_error": sum(r.rel_error for r in reports) / len(reports),
                "perplexity": evaluate(model, tok, windows).perplexity,
            }
    return out


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_pruning_beats_magnitude(results, method: str, setting: str) -> None:
    mag = results[("magnitude", setting)]
    got = results[(method, setting)]
    assert got["perplexity"] <= PPL_MARGIN[method] * mag["perplexity"], (
        f"{method} {setting}: {got['perplexity']:.2f} vs magnitude {mag['perplexity']:.2f}"
    )
    assert 0 < got["layer_error"] < ERR_BOUND[method] * mag["layer_error"], (
        f"{method} {setting}: layer error {got['layer_error']:.4f} vs {mag['layer_error']:.4f}"
    )
