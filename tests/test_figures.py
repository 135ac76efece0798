"""Pure figure builders and frames of the UI, on small hand-made data."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from core.stats import before_after
from ui import figures, frames


def _runs(rows: list[tuple]) -> pd.DataFrame:
    cols = ["id", "model", "recipe", "method", "weight_mb", "perplexity", "decode_tok_s"]
    df = pd.DataFrame(rows, columns=cols)
    df["baseline_perplexity"] = 10.0
    df["prefill_ms"] = 100.0 / df["decode_tok_s"]
    return df


RUNS = _runs(
    [
        (1, "m", "baseline", "baseline", 8.0, 10.0, 50.0),
        (2, "m", "fp16", "cast", 4.0, 10.1, 40.0),
        (3, "m", "rtn-int8", "rtn", 2.0, 10.5, 30.0),
        (4, "m", "bad", "rtn", 3.0, 11.0, 20.0),  # dominated by run 3 on memory and ppl
        (5, "m", "int4", "rtn", 1.0, 14.0, 35.0),
    ]
)


def test_pareto_front_minimising_both() -> None:
    front = figures.pareto_front(RUNS, "weight_mb", "perplexity")
    assert front["id"].tolist() == [5, 3, 2, 1]  # sorted by memory; run 4 is dominated


def test_pareto_front_with_a_higher_is_better_axis() -> None:
    front = figures.pareto_front(RUNS, "decode_tok_s", "perplexity", x_better="higher")
    # Run 1 is fastest and best: it dominates every other run.
    assert front["id"].tolist() == [1]
    slower_but_better = RUNS.assign(perplexity=[10.0, 10.1, 10.5, 11.0, 9.0])
    front = figures.pareto_front(slower_but_better, "decode_tok_s", "perplexity", x_better="higher")
    assert sorted(front["id"]) == [1, 5]


def test_pareto_front_keeps_ties_and_drops_missing_values() -> None:
    df = _runs(
        [
            (1, "m", "a", "x", 1.0, 5.0, 1.0),
            (2, "m", "b", "x", 1.0, 5.0, 1.0),  # an exact duplicate: neither dominates
            (3, "m", "c", "x", 1.0, 6.0, 1.0),  # same memory, worse perplexity: dominated
            (4, "m", "d", "x", float("nan"), 1.0, 1.0),  # no memory measured
        ]
    )
    front = figures.pareto_front(df, "weight_mb", "perplexity")
    assert sorted(front["id"]) == [1, 2]
    assert figures.pareto_front(df.iloc[3:], "weight_mb", "perplexity").empty


def test_memory_figure_has_one_trace_per_method_and_the_front() -> None:
    fig = figures.memory_figure(RUNS)
    names = [t.name for t in fig.data]
    assert names == ["baseline", "cast", "rtn", "Pareto front"]
    rtn = next(t for t in fig.data if t.name == "rtn")
    assert sorted(rtn.x) == [1.0, 2.0, 3.0]
    front = fig.data[-1]
    assert list(front.x) == [1.0, 2.0, 4.0, 8.0]
    assert front.line.shape == "hv"  # both axes improve downwards: staircase turns right first
    assert "MB" in fig.layout.xaxis.title.text
    assert "erplexity" in fig.layout.yaxis.title.text
    # The uncompressed model's perplexity is drawn for reference.
    assert any(math.isclose(s.y0, 10.0) for s in fig.layout.shapes)


def test_latency_figure_axes_and_direction() -> None:
    fig = figures.latency_figure(RUNS, "decode_tok_s")
    assert "tokens/s" in fig.layout.xaxis.title.text
    assert fig.data[-1].name == "Pareto front" and list(fig.data[-1].x) == [50.0]
    assert "ms" in figures.latency_figure(RUNS, "prefill_ms").layout.xaxis.title.text
    with pytest.raises(ValueError, match="prefill_ms or decode_tok_s"):
        figures.latency_figure(RUNS, "weight_mb")


def test_tradeoff_figure_on_no_runs_is_empty_not_an_error() -> None:
    fig = figures.memory_figure(RUNS.iloc[0:0])
    assert len(fig.data) == 0


def _layer_stats(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 32, generator=g)
    w[0, 0] = 12.0  # one far outlier
    return before_after(w, w.round(decimals=1))


def test_histogram_figure_log_counts_and_threshold_lines() -> None:
    stats = _layer_stats()
    b, a = stats["before"], stats["after"]
    fig = figures.histogram_figure(b, a, 3.0)
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert len(fig.data) == 2
    assert fig.data[0].name.startswith(f"before: {b['outliers']['3.0']} beyond 3")
    lines = sorted(s.x0 for s in fig.layout.shapes if s.type == "line")
    expected = sorted(
        [b["mean"] - 3 * b["std"], b["mean"] + 3 * b["std"]]
        + [a["mean"] - 3 * a["std"], a["mean"] + 3 * a["std"]]
    )
    assert lines == pytest.approx(expected)
    # The bars sum to the number of weights (empty bins are drawn as gaps on the log axis).
    assert sum(c for c in fig.data[0].y if not math.isnan(c)) == 64 * 32


def test_histogram_figure_without_before_stats() -> None:
    a = _layer_stats()["after"]
    fig = figures.histogram_figure(None, a, 1.5)
    assert [t.name.split(":")[0] for t in fig.data] == ["after"]


def test_outlier_count_reads_the_stored_k() -> None:
    b = _layer_stats()["before"]
    assert figures.outlier_count(b, 3) == b["outliers"]["3.0"] >= 1
    assert figures.outlier_count(b, 20.0) == b["outliers"]["20.0"]
    assert figures.outlier_count(b, 0.7) is None
    assert figures.outlier_count(None, 3.0) is None


def test_short_names_drop_the_shared_prefix() -> None:
    names = ["model.layers.0.mlp.up", "model.layers.1.mlp.up", "model.layers.1.attn.q"]
    assert figures.short_names(names) == ["0.mlp.up", "1.mlp.up", "1.attn.q"]
    assert figures.short_names(["a.b"]) == ["b"]


def test_layer_error_figure_highlights_the_selected_layer() -> None:
    df = pd.DataFrame(
        {"layer": ["m.l.0.q", "m.l.0.k", "m.l.1.q"], "rel_error": [0.1, float("nan"), 0.3]}
    )
    fig = figures.layer_error_figure(df, selected="m.l.1.q")
    bar = fig.data[0]
    assert list(bar.x) == ["0.q", "1.q"]  # the layer without an error is left out
    assert bar.marker.color[1] != bar.marker.color[0]


def _job(i: int, **kw) -> SimpleNamespace:
    base = {
        "id": i,
        "model": "demo",
        "recipe_label": "rtn-int8",
        "status": "succeeded",
        "progress": 1.0,
        "message": "done",
        "error": None,
        "created_at": 1000.0,
        "started_at": 1010.0,
        "finished_at": 1070.0,
        "result": {"perplexity": 12.5, "weight_bytes": 2_500_000, "prefill_ms": 3.0},
        "fingerprint": {"recipe": [{"method": "rtn", "bits": 8}]},
        "spec": {"eval_set": "stdlib-heldout", "eval": {"ctx": 256, "eval_tokens": 4096}},
    }
    base.update(kw)
    return SimpleNamespace(**base)


def test_runs_frame_units_and_missing_metrics() -> None:
    df = frames.runs_frame([_job(1), _job(2, result={}, fingerprint={}, spec={"recipe": []})])
    assert list(df.columns) == list(frames.RUN_COLUMNS)
    assert df.loc[0, "weight_mb"] == pytest.approx(2.5)
    assert df.loc[0, "method"] == "rtn"
    assert df.loc[0, "eval"] == "stdlib-heldout, ctx 256, 4096 tokens"
    assert df.loc[1, "method"] == "baseline"
    assert math.isnan(df.loc[1, "perplexity"])


def test_jobs_frame_elapsed_and_errors() -> None:
    running = _job(3, status="running", finished_at=None, result={}, progress=0.4)
    failed = _job(4, status="failed", error="model not found: 'x'", result={})
    queued = _job(5, status="queued", started_at=None, finished_at=None, result={})
    df = frames.jobs_frame([running, failed, queued], now=1100.0)
    assert df["elapsed"].tolist() == ["1 min 30 s", "1 min 00 s", "-"]
    assert df.loc[1, "error"] == "model not found: 'x'"
    assert df.loc[0, "progress"] == pytest.approx(0.4)


def test_layers_frame_reads_outliers_at_k() -> None:
    stats = _layer_stats()
    row = {"name": "l0", "scheme": "int8", "rel_error": 0.01, **stats}
    df = frames.layers_frame([row], k=2.5)
    assert df.loc[0, "outliers_before_2.5"] == stats["before"]["outliers"]["2.5"]
    assert df.loc[0, "shape"] == "64 x 32"


def test_formatters() -> None:
    assert frames.fmt_bytes(233_280) == "233.28 kB"
    assert frames.fmt_bytes(None) == "-"
    assert frames.fmt_duration(42) == "42 s"
    assert frames.fmt_duration(3725) == "1 h 02 min"


def test_layer_summary_reports_before_and_after() -> None:
    stats = _layer_stats()
    line = figures.layer_summary({"scheme": "int8-sym-channel", **stats})
    assert "int8-sym-channel" in line and "64 × 32" in line
    assert f"absmax {stats['before']['absmax']:.4g} → {stats['after']['absmax']:.4g}" in line
    assert figures.layer_summary({"after": stats["after"]}).count("- →") >= 3
