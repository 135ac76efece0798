"""Pruning quality on the bundled demo model: the calibrated methods against magnitude.

Settings (small, so the file stays around a minute on two idle cores): calibration on
stdlib-code, 8 samples of 256 tokens, seed 0; perplexity on the first 2048 tokens of
stdlib-heldout in windows of 256.

What holds on this model, and what does not (numbers in the pruning report):
- SparseGPT reconstructs the kept weights, so its layer output error is a fraction of
  magnitude's (about 1/4 at 50%) and at 2:4 its perplexity is clearly lower (158.6 vs
  165.1 here, 4%). Asserted with a 2% perplexity margin and a 0.5x layer-error bound.
- Wanda's layer errors (measured on calibration rows, where its statistics come from)
  are lower than magnitude's at every budget tried: 0.97x at 50% with these 8 samples,
  0.92x at 50% and 0.87x at 2:4 with 32; asserted as strictly lower, no margin. Its
  perplexity is within noise of magnitude's on this model at 50% and at 2:4 (either
  sign depending on the evaluation tokens), so no perplexity inequality is asserted
  for it: the demo model's input features have no outliers (max/median input norm
  1.4-7.5), which is what Wanda's |W| x ||X|| exploits.
- At 50% unstructured every method stays within 1% of the unpruned perplexity: the
  ordering there is noise, so only layer errors are compared.
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
EVALUATED = {("magnitude", "2:4"), ("sparsegpt", "2:4")}  # perplexity only where asserted
PPL_MARGIN = 0.98  # sparsegpt 2:4 perplexity <= 0.98 x magnitude's
ERR_BOUND = {"sparsegpt": 0.5, "wanda": 1.0}  # mean layer error < bound x magnitude's


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
            row = {"layer_error": sum(r.rel_error for r in reports) / len(reports)}
            if (method, setting) in EVALUATED:
                row["perplexity"] = evaluate(model, tok, windows).perplexity
            out[(method, setting)] = row
    return out


def test_sparsegpt_perplexity_beats_magnitude_at_2_4(results) -> None:
    mag = results[("magnitude", "2:4")]["perplexity"]
    got = results[("sparsegpt", "2:4")]["perplexity"]
    assert got <= PPL_MARGIN * mag, f"sparsegpt 2:4 {got:.2f} vs magnitude {mag:.2f}"


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_pruning_has_lower_layer_error(results, method: str, setting: str) -> None:
    mag = results[("magnitude", setting)]["layer_error"]
    got = results[(method, setting)]["layer_error"]
    assert 0 < got < ERR_BOUND[method] * mag, f"{method} {setting}: {got:.4f} vs {mag:.4f}"
