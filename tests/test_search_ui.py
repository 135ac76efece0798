"""The Search page: its figure (pure), its budget parsing, and the page on an empty
database queueing the scoring jobs (one per layer and candidate, as ordinary jobs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db import queue
from runs import catalogue as cat
from runs import search as S
from ui import search_view
from ui.shell import SEARCH

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_budgets_are_parsed_or_refused() -> None:
    assert search_view.parse_budgets("3.5, 4.5;6") == [3.5, 4.5, 6.0]
    for bad in ("", "four", "-1", "nan"):
        with pytest.raises(search_view.SearchInputError):
            search_view.parse_budgets(bad)


def test_front_figure_shows_prediction_measurement_and_uniform() -> None:
    t = S.ScoreTable(["a", "b"], ["x", "y"])
    for layer in t.layers:
        t.set(layer, "x", 0.01, 100, 200)
        t.set(layer, "y", 0.001, 200, 200)
    front = S.predicted_front(t, S.budget_grid(t, 5))
    measured = [
        {cat.BITS_PER_WEIGHT.key: 6.0, cat.KL_TO_BASELINE.key: 0.012, S.PREDICTED_KL: 0.011}
    ]
    uniform = search_view.uniform_points(t)
    assert [u["candidate"] for u in uniform] == ["x", "y"]
    assert uniform[0]["predicted"] == pytest.approx(0.02) and uniform[0]["bpw"] == 4.0
    fig = search_view.front_figure(front, measured, uniform)
    assert [tr.name for tr in fig.data] == [
        "predicted front (sum of layer scores)",
        "searched recipe, measured",
        "uniform recipes (predicted)",
    ]
    assert list(fig.data[0].y) == sorted(fig.data[0].y, reverse=True)


def test_page_queues_the_scoring_jobs(sf: queue.Factory) -> None:
    at = AppTest.from_file(APP, default_timeout=600)  # a loaded CI machine
    at.run()
    at.switch_page(SEARCH).run()
    assert not at.exception, [e.message for e in at.exception]
    button = next(b for b in at.button if b.label.startswith("Queue ") and "scoring" in b.label)
    button.click().run()
    assert not at.exception, [e.message for e in at.exception]
    jobs = queue.list_jobs(sf)
    n_cands = len(S.DEFAULT_CANDIDATES)
    assert len(jobs) == n_cands * 28  # the demo model: 4 blocks x 7 linears
    steps = json.loads(jobs[0].spec_json)["recipe"]
    assert len({t for s in steps for t in s["targets"]}) == 1


def test_latency_front_figure_and_the_times_cached_per_machine(
    sf: queue.Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The latency budget: times are read from this machine's cache (None until timed),
    the front and the uniform points are placed at their predicted milliseconds."""
    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path))
    names = ["fp16", "rtn-int8"]
    p = search_view.plan(sf, "tiny-random", names, ("stdlib-code", "stdlib-heldout", {}, {}))
    assert search_view.cached_times("tiny-random", p, 1) is None
    measured_now = search_view.time_layers("tiny-random", p, 1)
    seconds = search_view.cached_times("tiny-random", p, 1)
    assert seconds == measured_now and set(seconds) == set(p.layers)
    t = S.ScoreTable(p.layers, names)
    for la in p.layers:
        t.set(la, "fp16", 0.0, 200, 100)
        t.set(la, "rtn-int8", 1e-4, 100, 100)
    t.set_seconds(seconds, {"m": 1})
    front = search_view.front(t, "ms")
    ms = cat.PREDICTED_LINEAR_MS.key
    assert front and all(r[ms] <= r["budget_ms"] * (1 + 1e-9) for r in front)
    uniform = search_view.uniform_points(t)
    assert all(u["ms"] > 0 for u in uniform)
    fig = search_view.front_figure(front, [], uniform, "ms")
    assert list(fig.data[0].x) == [r[ms] for r in front]
    assert "predicted ms" in fig.layout.xaxis.title.text
    sols = search_view.solutions(t, "ms", [max(r[ms] for r in front)])
    assert sols[0][0].endswith(" ms") and sols[0][1] is not None


def test_page_latency_budget_times_the_layers_then_shows_the_front(
    sf: queue.Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every score stored (scoring jobs completed here with made-up KLs: the page's
    arithmetic is under test, not the numbers), the latency budget asks to time the layers
    on this machine, then draws the front in milliseconds and queues verification runs
    that carry the predicted linear time."""
    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    at.switch_page(SEARCH).run()
    at.multiselect(key="search_cands").set_value(["fp16", "rtn-int8"]).run()
    next(b for b in at.button if "scoring" in b.label).click().run()
    for i, job in enumerate(queue.list_jobs(sf)):
        recipe = json.loads(job.spec_json)["recipe"]
        (layer,) = {t for s in recipe for t in s["targets"]}
        int8 = recipe[0]["method"] == "rtn"
        claimed = queue.claim(sf, "w", job_id=job.id)
        assert claimed is not None
        row = {"name": layer, cat.WEIGHT_BYTES.key: 100 if int8 else 200, "n_weights": 100}
        kl = {cat.KL_TO_BASELINE.key: (1 + i % 3) * 1e-4 if int8 else 1e-6}
        assert queue.complete(sf, job.id, "w", kl, [row], {})
    at.radio(key="search_unit").set_value("ms").run()
    assert not at.exception, [e.message for e in at.exception]
    next(b for b in at.button if b.label.startswith("Time the layers")).click().run()
    assert not at.exception, [e.message for e in at.exception]
    at.text_input(key="search_budgets").set_value("1000").run()
    assert not at.exception, [e.message for e in at.exception]
    before = len(queue.list_jobs(sf))
    next(b for b in at.button if b.label == "Queue verification runs").click().run()
    jobs = queue.list_jobs(sf)
    assert len(jobs) == before + 1
    verify = max(jobs, key=lambda j: j.id)
    prediction = json.loads(verify.spec_json)["prediction"]
    assert prediction[cat.PREDICTED_LINEAR_MS.key] > 0
