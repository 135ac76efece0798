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
