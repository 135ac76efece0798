"""KV steps in recipes and runs: the job's KV stage, the stored metrics, the views."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.data import get_text_set
from core.recipe import parse_recipe
from core.registry import ConfigError, describe_method, get_method
from runs import catalogue as cat
from runs.pipeline import run_job
from tests.tiny import tiny_spec
from ui import kv_view

CHAIN = json.dumps(
    [
        {"method": "rtn", "bits": 8},
        {"method": "kv-h2o", "heavy": 8, "recent": 8, "sinks": 2},
        {"method": "kv-quant", "bits": 4, "key_axis": "token"},
    ]
)


@pytest.fixture(scope="module")
def chain_result(tmp_path_factory) -> dict:
    out = run_job(
        tiny_spec(CHAIN),
        cache_dir=tmp_path_factory.mktemp("cache"),
        resolve_text=get_text_set,
    )
    return out.metrics


def test_kv_steps_chain_after_weight_steps(chain_result: dict) -> None:
    r = chain_result
    assert r[cat.WEIGHT_BYTES.key] < r[cat.BASELINE_WEIGHT_BYTES.key]  # the rtn step ran
    assert r[cat.KV_POLICY.key] == "bits=4, sinks=2, window=8, heavy=8"
    assert r[cat.KV_ATTENTION.key] == "eager"  # H2O reads attention weights
    # per-token codes hold no residual: the stored bytes are the formula's
    assert r[cat.KV_BYTES_PER_TOKEN.key] == pytest.approx(r[cat.KV_BYTES_PER_TOKEN_ANALYTIC.key])
    assert r[cat.KV_PEAK_BYTES.key] > 0
    assert 0 < r[cat.KV_TOP1.key] <= 1 and r[cat.KV_KL.key] >= 0
    assert [b["bucket"] for b in r[cat.KV_BY_POSITION.key]] == ["<=256"]
    assert [p["depth"] for p in r[cat.KV_PASSKEY.key]] == [0.1, 0.5, 0.9]


def test_a_recipe_without_kv_step_has_no_kv_metrics(tmp_path: Path) -> None:
    r = run_job(tiny_spec("rtn-int8"), cache_dir=tmp_path, resolve_text=get_text_set).metrics
    assert r[cat.KV_POLICY.key] is None and r[cat.KV_BY_POSITION.key] is None


def test_kv_methods_are_registered_with_cards() -> None:
    for name in ("kv-quant", "kv-window", "kv-h2o"):
        d = describe_method(get_method(name))
        assert d["kind"] == "kv" and not d["needs_calibration"]
        assert d["card"]["idea"] and d["card"]["memory"] and d["card"]["reference"]


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"method": "kv-quant", "bits": 4, "format": "e4m3"}, "8 bits, not 4"),
        ({"method": "kv-quant", "bits": 3}, "one of 2, 4, 8"),
        ({"method": "kv-quant", "format": "e5m2", "key_axis": "channel"}, "per token"),
        ({"method": "kv-window", "window": 0}, "window"),
    ],
)
def test_bad_kv_values_are_refused_in_words(step: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_recipe(json.dumps([step]))


def _job(i: int, result: dict) -> SimpleNamespace:
    return SimpleNamespace(id=i, recipe_label=f"r{i}", result=result)


def test_views_frame_the_stored_rows(chain_result: dict) -> None:
    jobs = [_job(1, chain_result), _job(2, {"perplexity": 3.0})]
    assert [j.id for j in kv_view.kv_runs(jobs)] == [1]
    frame = kv_view.position_frame(jobs)
    assert list(frame["run"]) == ["#1 r1"] and {"nll", "ref_nll", "kl", "top1"} <= set(frame)
    fig = kv_view.position_figure(frame, "nll")
    assert [t.name for t in fig.data] == ["#1 r1", "#1 r1: plain cache"]
    keys = kv_view.passkey_frame(jobs)
    assert list(keys["depth"]) == ["10%", "50%", "90%"]
    summary = kv_view.summary_frame(jobs)
    assert summary.loc[0, cat.KV_POLICY.label] == chain_result[cat.KV_POLICY.key]
