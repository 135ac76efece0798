"""Latency you can believe (runs/latency.py): interleaved timing, spreads, verdicts, the
baseline's weights swapped in and out, and a synthetic slowdown measured as one."""

from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.calib import CalibSettings, calibration_batches
from core.data import get_text_set
from core.metrics import EvalSettings
from core.models import load_model
from core.recipe import parse_recipe
from core.walk import apply_recipe
from runs import catalogue as cat
from runs import latency as lat


def test_spread_quartiles_and_range() -> None:
    s = lat.Spread.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.q1, s.q3, s.lo, s.hi, s.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    inv = s.inverted(2.0)  # seconds per step -> tokens/s at batch 2: order flips
    assert inv.lo == pytest.approx(2 / 5) and inv.hi == pytest.approx(2.0)
    assert inv.q1 == pytest.approx(0.5) and inv.q3 == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [
        ([1.9, 2.0, 2.1, 2.0, 2.05], "faster"),
        ([0.5, 0.52, 0.49, 0.51, 0.5], "slower"),
        ([0.99, 1.0, 1.01, 1.0, 0.995], "same"),
        ([0.4, 0.8, 1.3, 2.5, 0.6], "unmeasurable"),
        # the middle half above 1, but wider (2.08x) than the 1.5x it would claim
        ([1.1, 1.2, 1.5, 2.5, 3.0], "unmeasurable"),
        ([2.0, 2.1], "unmeasurable"),  # two pairs: no spread worth the name
    ],
)
def test_direction_from_pair_ratios(ratios: list[float], expected: str) -> None:
    s = lat.Spread.of(ratios)
    assert lat.direction(s) == expected
    text = lat.verdict_text("prefill", s)
    assert (lat.NOT_MEASURABLE in text) == (expected == "unmeasurable")


def test_a_difference_the_load_could_make_is_not_measurable() -> None:
    steady = lat.Spread.of([1.3, 1.32, 1.35, 1.38, 1.4])  # 1.35x, tight
    assert lat.direction(steady, load=1.0) == "faster"
    assert lat.direction(steady, load=1.2) == "faster"  # beyond what the load could do
    assert lat.direction(steady, load=2.0) == "unmeasurable"  # within it
    text = lat.verdict_text("prefill", steady, load=2.0)
    assert lat.NOT_MEASURABLE in text and "load could move a round by 2.00x" in text
    same = lat.Spread.of([0.99, 1.0, 1.01, 1.0, 0.995])
    assert lat.direction(same, load=1.5) == "unmeasurable"  # "same" needs a quiet machine
    slow = lat.Spread.of([0.4, 0.41, 0.42, 0.4, 0.39])
    assert lat.is_slower(slow, load=2.0) and not lat.is_slower(slow, load=3.0)


def test_the_load_factor_from_load_averages_and_others_cpu_time() -> None:
    quiet = {"cpus": 2.0, "load1": 1.0, "busy_s": 100.0, "own_s": 10.0, "wall_s": 0.0}
    # 10 s of timing on 2 CPUs: this process used 10 CPU s, others 2 CPU s (0.2 CPU)
    after = {"cpus": 2.0, "load1": 1.5, "busy_s": 112.0, "own_s": 20.0, "wall_s": 10.0}
    assert lat.load_factor(quiet, after, threads=1) == 1.0  # demand 1.2 of 2 CPUs
    assert lat.load_factor(quiet, after, threads=2) == pytest.approx(2.2 / 2)
    busy = after | {"busy_s": 140.0}  # others kept 3 CPUs busy
    assert lat.load_factor(quiet, busy, threads=1) == pytest.approx(4.0 / 2)
    loaded = {"cpus": 2.0, "load1": 6.0}  # the load average alone: 3x the CPUs
    assert lat.load_factor(quiet, loaded, threads=1) == pytest.approx(3.0)
    assert lat.load_factor({}, {}, threads=8) == 1.0  # nothing known: no factor


def test_under_extreme_load_even_a_known_slowdown_is_not_measurable() -> None:
    """The load rule end to end: the machine's load (a probe reading a load average of a
    million per CPU) could explain any ratio, so no speed-up and no "smaller but slower"
    flag are stored, and the verdict says why; the spreads are still stored."""
    model = Synthetic()
    slow = SlowLinear(model.proj, delay_s=0.05)
    originals = {"proj": model.proj}
    lat.replace_module(model, "proj", slow)
    swap = lat.ModuleSwap(model, originals, {})

    def probe() -> dict[str, float]:
        return {"cpus": 2.0, "load1": 2e6}

    report = lat.measure_latency_report(model, torch.arange(64), SETTINGS, swap, probe=probe)
    assert report.load == pytest.approx(1e6)
    pre = report.headline("prefill")
    assert pre.speedup is not None and pre.speedup.q3 < 0.1  # 50 ms slower, as timed
    assert pre.direction == "unmeasurable"
    fields = lat.result_fields(report, weight_bytes=10, base_weight_bytes=100)
    assert fields[cat.PREFILL_SPEEDUP.key] is None
    assert fields[cat.SMALLER_BUT_SLOWER.key] is False
    assert "load could move a round" in fields[cat.LATENCY_VERDICT.key]
    assert fields[cat.PREFILL_SPEEDUP_Q3.key] < 0.1  # the spread is kept all the same


def test_rounds_alternate_their_order_and_drop_the_warmup() -> None:
    calls: list[str] = []

    def measure(v: str) -> float:
        calls.append(v)
        return float(len(calls))

    times = lat.interleaved(measure, ["A", "B"], repeats=3, warmup=1)
    assert calls == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert times == {"A": [4.0, 5.0, 8.0], "B": [3.0, 6.0, 7.0]}


class SlowLinear(nn.Module):
    """The same output as ``inner``, plus a known delay: a "compressed" layer that is slower."""

    def __init__(self, inner: nn.Linear, delay_s: float) -> None:
        super().__init__()
        self.inner, self.delay_s = inner, delay_s
        self.in_features, self.out_features = inner.in_features, inner.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return self.inner(x)


class Synthetic(nn.Module):
    """A "model" with the interface the timing uses (logits, past_key_values) and almost
    no work of its own, so that a known delay in one layer dominates whatever the load."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)

    def forward(self, ids: torch.Tensor, past_key_values=None, use_cache=True):  # noqa: ANN001
        logits = self.proj(torch.nn.functional.one_hot(ids % 8, 8).float())
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


SETTINGS = EvalSettings(ctx=32, eval_tokens=64, prompt_len=16, decode_tokens=3, repeats=5)


def _report_against(model: nn.Module, replaced: dict[str, nn.Module]) -> lat.LatencyReport:
    """Times ``model`` with ``replaced`` swapped in as the compressed state, against the
    original modules as the baseline."""
    originals = {n: model.get_submodule(n) for n in replaced}
    for n, m in replaced.items():
        lat.replace_module(model, n, m)
    swap = lat.ModuleSwap(model, originals, {})
    return lat.measure_latency_report(model, torch.arange(64), SETTINGS, swap)


def test_a_known_slowdown_is_measured_as_slower_and_flagged() -> None:
    model = Synthetic()
    slow = SlowLinear(model.proj, delay_s=0.05)
    report = _report_against(model, {"proj": slow})
    assert report.interleaved and report.repeats == 5
    pre = report.headline("prefill")
    assert pre.seq_len == SETTINGS.prompt_len
    assert pre.speedup is not None and lat.direction(pre.speedup) == "slower"
    assert pre.baseline is not None and pre.compressed.median >= pre.baseline.median + 45
    fields = lat.result_fields(report, weight_bytes=10, base_weight_bytes=100)
    assert fields[cat.SMALLER_BUT_SLOWER.key] is True
    assert fields[cat.PREFILL_SPEEDUP.key] < 1
    assert fields[cat.PREFILL_SPEEDUP_Q1.key] <= fields[cat.PREFILL_SPEEDUP_Q3.key] < 1
    assert model.proj is slow  # the compressed state again afterwards


def test_an_identical_model_is_not_flagged() -> None:
    model = Synthetic()
    report = _report_against(model, {"proj": copy.deepcopy(model.proj)})
    fields = lat.result_fields(report, weight_bytes=10, base_weight_bytes=100)
    assert fields[cat.SMALLER_BUT_SLOWER.key] is False
    kinds = {m.kind for m in report.measures}
    assert kinds == {"prefill", "decode"}
    assert {m.batch for m in report.measures if m.kind == "decode"} == set(lat.DECODE_BATCHES)
    assert len([m for m in report.measures if m.kind == "prefill"]) == 3


def _prompt() -> torch.Tensor:
    return torch.randint(0, 100, (64,))


def _measure(speedup: list[float] | None) -> lat.MeasureResult:
    ms = lat.Spread.of([10.0, 11.0, 12.0])
    ratio = lat.Spread.of(speedup) if speedup else None
    return lat.MeasureResult(
        "prefill 16 tokens", "prefill", 16, 1, ms, ms, ratio, lat.verdict_text("p", ratio)
    )


def test_an_unmeasurable_speedup_is_stored_as_no_number_and_never_flagged() -> None:
    wide = [0.3, 0.6, 1.5, 3.0, 0.5]
    dec = lat.MeasureResult(
        "decode batch 1", "decode", 16, 1, *(lat.Spread.of([100.0]),) * 2, None, "d"
    )
    report = lat.LatencyReport([_measure(wide), dec], 5, 1, 2, "cpu", True, {}, {}, 16)
    fields = lat.result_fields(report, weight_bytes=1, base_weight_bytes=2)
    assert fields[cat.PREFILL_SPEEDUP.key] is None
    assert lat.NOT_MEASURABLE in fields[cat.LATENCY_VERDICT.key]
    assert fields[cat.SMALLER_BUT_SLOWER.key] is False


def test_timed_apart_the_speedup_spread_crosses_the_quartiles() -> None:
    base = lat.Spread.of([10.0, 11.0, 12.0])
    comp = lat.Spread.of([5.0, 5.5, 6.0])
    r = lat._ratio_apart(_measure(None), base, comp)
    assert r.median == pytest.approx(2.0)
    assert r.q1 == pytest.approx(base.q1 / comp.q3) and r.q3 == pytest.approx(base.q3 / comp.q1)


def _calib(model_tok) -> list[torch.Tensor]:
    text = get_text_set("stdlib-code").text
    return calibration_batches(model_tok, text, CalibSettings(n_samples=2, seq_len=32))


@pytest.mark.parametrize("recipe", ["rtn-int8", '[{"method": "smoothquant"}]'])
def test_the_kept_baseline_swaps_back_in_exactly(recipe: str, tmp_path) -> None:
    loaded = load_model("tiny-random")
    model = loaded.model.eval()
    ids = _prompt()[:16].unsqueeze(0)
    with torch.no_grad():
        ref = model(ids).logits
    kept = lat.BaselineCopy.save(model, tmp_path)
    apply_recipe(
        model,
        parse_recipe(recipe),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=_calib(loaded.tokenizer),
    )
    with torch.no_grad():
        compressed = model(ids).logits
        swap = kept.swap_for(model)
        assert not swap.empty
        swap.use(lat.BASELINE)
        assert torch.allclose(model(ids).logits, ref, atol=1e-6)
        swap.use(lat.COMPRESSED)
        assert torch.equal(model(ids).logits, compressed)
    kept.remove()
    assert not kept.path.exists()


def test_a_job_times_both_models_interleaved_and_leaves_no_copy(tmp_path) -> None:
    from core.data import get_text_set
    from runs.pipeline import run_job
    from tests.tiny import tiny_spec

    res = run_job(tiny_spec("rtn-int8"), cache_dir=tmp_path, resolve_text=get_text_set).metrics
    assert res[cat.LATENCY_INTERLEAVED.key] is True
    assert res[cat.LATENCY_REPEATS.key] >= lat.MIN_REPEATS
    assert res[cat.BASELINE_PREFILL_MS_Q1.key] <= res[cat.BASELINE_PREFILL_MS.key]
    assert res[cat.PREFILL_MS_Q1.key] <= res[cat.PREFILL_MS.key] <= res[cat.PREFILL_MS_Q3.key]
    assert {m["kind"] for m in res[cat.LATENCY_REPORT.key]} == {"prefill", "decode"}
    assert res[cat.LATENCY_VERDICT.key]
    assert res[cat.COMPRESS_CPU_S.key] > 0
    assert not list(tmp_path.rglob("*.tmp"))  # the original weights' copy is gone


def test_charts_draw_the_middle_half_as_error_bars() -> None:
    import pandas as pd

    from ui.figures import spread_error
    from ui.figures_runs import latency_report_figure
    from ui.latency_view import conditions

    report = [
        _measure([0.9, 1.0, 1.1]).to_dict(),
        lat.MeasureResult(
            "decode batch 1", "decode", 16, 1, *(lat.Spread.of([90.0, 100.0, 130.0]),) * 2, None, ""
        ).to_dict(),
    ]
    fig = latency_report_figure(report)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 4  # baseline and compressed, prefill and decode
    assert list(bars[0].error_y.arrayminus) == [0.5] and list(bars[0].error_y.array) == [0.5]
    df = pd.DataFrame(
        {
            cat.PREFILL_MS.col: [10.0],
            cat.PREFILL_MS_Q1.col: [8.0],
            cat.PREFILL_MS_Q3.col: [13.0],
        }
    )
    err = spread_error(df, cat.PREFILL_MS.col)
    assert err is not None and list(err["arrayminus"]) == [2.0] and list(err["array"]) == [3.0]
    assert spread_error(df, cat.PERPLEXITY.col) is None
    text = conditions(
        {
            cat.LATENCY_REPEATS.key: 5,
            cat.LATENCY_INTERLEAVED.key: True,
            cat.LATENCY_THREADS.key: 2,
            cat.LATENCY_DEVICE.key: "a CPU",
            cat.LOAD_BEFORE.key: 0.5,
            cat.LOAD_AFTER.key: 0.7,
        }
    )
    assert "alternation" in text and "5 rounds" in text and "0.50 before" in text
    assert "load could slow" not in text  # no report with a load factor above 1
    loaded = {cat.LATENCY_REPEATS.key: 5, cat.LATENCY_REPORT.key: [{"load": 2.4}, {}]}
    assert "could slow a round by up to 2.40x" in conditions(loaded)
