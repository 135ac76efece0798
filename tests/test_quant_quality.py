"""Correctness of the weight-quantization methods on the bundled demo model.

Settings (kept small so that the file runs in well under a minute on 2 cores):
calibration 8 windows x 256 tokens of ``stdlib-code`` (seed 0), evaluation on the first
2048 tokens of ``stdlib-heldout`` in non-overlapping windows of 256. Every linear of the
demo model has in_features 256, so group size 128 means two groups per row. The
measured numbers behind each margin are in the comments (and in the issue report).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import numpy as np
import pytest
import torch

from core.calib import CalibSettings, calibration_batches
from core.data import get_text_set
from core.metrics import EvalSettings, eval_windows, evaluate
from core.models import DEMO_DIR, load_model
from core.recipe import recipe_from_steps
from core.registry import LayerReport
from core.walk import apply_recipe

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "config.json").is_file(), reason="the demo model is not bundled here"
)

G128 = {"granularity": "group", "group_size": 128}
RECIPES: dict[str, list[dict]] = {
    "rtn-4bit-g128": [{"method": "rtn", "bits": 4, **G128}],
    "gptq-4bit-g128": [{"method": "gptq", "bits": 4, "group_size": 128}],
    "rtn-3bit-g128": [{"method": "rtn", "bits": 3, **G128}],
    "gptq-3bit-g128": [{"method": "gptq", "bits": 3, "group_size": 128}],
    "rtn-4bit-g128-asym": [{"method": "rtn", "bits": 4, "symmetric": False, **G128}],
    "awq-4bit-g128": [{"method": "awq", "bits": 4, "group_size": 128, "symmetric": False}],
    "nf4": [{"method": "bnb-4bit", "quant_type": "nf4"}],
    "fp4": [{"method": "bnb-4bit", "quant_type": "fp4"}],
    "bnb-int8": [{"method": "bnb-int8", "threshold": 6.0}],
}


@contextmanager
def _one_thread() -> Iterator[None]:
    """The demo model's matmuls are tiny: one thread avoids oversubscribing a shared CPU
    (4x faster there); results differ from two threads by float rounding only."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@cache
def _setup() -> tuple:
    demo = load_model("demo")
    windows = eval_windows(
        demo.tokenizer,
        get_text_set("stdlib-heldout").text,
        EvalSettings(ctx=256, eval_tokens=2048),
    )
    calib = calibration_batches(
        demo.tokenizer,
        get_text_set("stdlib-code").text,
        CalibSettings(n_samples=8, seq_len=256, seed=0),
    )
    # The baseline's next-token log-probs, for the KL divergence of each method.
    logp = np.zeros((len(windows), 255, demo.model.config.vocab_size), dtype=np.float16)
    with _one_thread():
        base = evaluate(demo.model, demo.tokenizer, windows, record=logp)
    return demo, windows, calib, logp, base.perplexity


def perplexity(name: str) -> float:
    return _setup()[4] if name == "baseline" else _run(name)[0]


def kl(name: str) -> float:
    return _run(name)[1]


@cache
def _run(name: str) -> tuple[float, float, tuple[LayerReport, ...]]:
    """(perplexity, KL to the baseline, layer reports) of a recipe on the demo model."""
    demo, windows, calib, logp, _ = _setup()
    model = copy.deepcopy(demo.model)
    with _one_thread():
        reports = apply_recipe(
            model,
            recipe_from_steps(RECIPES[name]),
            on_progress=lambda f, m: None,
            should_cancel=lambda: False,
            calib_batches=calib,
        )
        res = evaluate(model, demo.tokenizer, windows, baseline=logp)
    assert res.kl_to_baseline is not None
    return res.perplexity, res.kl_to_baseline, tuple(reports)


# Measured with these settings (perplexity / KL to the baseline in nats per token), on the
# bundled demo model (stage 2 of its training; test-budget perplexity 45.45):
#   rtn-4bit-g128 46.018 / 0.00944        gptq-4bit-g128 45.640 / 0.00336
#   rtn-3bit-g128 48.329 / 0.04982        gptq-3bit-g128 46.791 / 0.01894
#   rtn-4bit-g128-asym 45.992 / 0.00705   awq-4bit-g128 (asym) 45.898 / 0.00565
#   nf4 45.467 / 0.00538                  fp4 46.292 / 0.01001
#   bnb-int8 45.435 / 0.00013
# Perplexity differences of a few tenths are within what any weight perturbation does to
# this small model (the earlier, shorter-trained demo model even scored RTN 3-bit below
# RTN 4-bit at 8192 tokens), so the perplexity orderings the issue asks for are asserted
# as measured, without a margin, and the KL divergence, which separates the methods by
# 1.3-4x, carries the margins.


@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_beats_rtn_at_the_same_bits_and_group_size(bits: int) -> None:
    gptq, rtn = f"gptq-{bits}bit-g128", f"rtn-{bits}bit-g128"
    assert perplexity(gptq) < perplexity(rtn)
    assert kl(gptq) < 0.5 * kl(rtn)  # measured 0.36x (4-bit) and 0.38x (3-bit)


def test_gptq_layer_errors_are_at_most_rtn_on_calibration_inputs() -> None:
    for bits in (4, 3):
        gptq = {r.name: r.rel_error for r in _run(f"gptq-{bits}bit-g128")[2]}
        rtn = {r.name: r.rel_error for r in _run(f"rtn-{bits}bit-g128")[2]}
        assert set(gptq) == set(rtn) and len(gptq) == 28  # 4 blocks x 7 linears
        for name, err in gptq.items():
            # Each on its own model's calibration inputs (GPTQ's are those of its own
            # quantized earlier layers); GPTQ minimises exactly this output error.
            assert err is not None and rtn[name] is not None
            assert err <= rtn[name], f"{bits}-bit {name}: gptq {err:.4f} > rtn {rtn[name]:.4f}"


def test_awq_beats_rtn_4bit_g128() -> None:
    awq = "awq-4bit-g128"
    assert perplexity(awq) < perplexity("rtn-4bit-g128")  # the named recipe (symmetric)
    # Against RTN with the same storage (zero points): 45.898 against 45.992, asserted
    # without a margin; the KL shows AWQ's gain.
    assert perplexity(awq) < perplexity("rtn-4bit-g128-asym")
    assert kl(awq) < 0.9 * kl("rtn-4bit-g128-asym")  # measured 0.80x
    assert kl(awq) < 0.75 * kl("rtn-4bit-g128")  # measured 0.60x


def test_nf4_is_not_worse_than_fp4() -> None:
    assert perplexity("nf4") <= perplexity("fp4")
    assert kl("nf4") < 0.75 * kl("fp4")  # measured 0.54x


def test_llm_int8_stays_within_one_percent_of_baseline() -> None:
    base = perplexity("baseline")
    assert abs(perplexity("bnb-int8") - base) <= 0.01 * base  # measured 0.03%
    assert kl("bnb-int8") < 1e-3  # measured 1.3e-4
