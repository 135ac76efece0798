"""The product in a real browser: `streamlit run app.py` as a user gets it (the local worker
starts by itself), driven in headless Chromium. A run of the demo model is queued from New
run, finishes on Runs, appears as a point in the Compare chart and as histograms on Weights;
an out-of-range bits value is refused with a message and queues nothing.

Screenshots of every step land in artifacts/browser/<test>/. Deselect with -m "not browser".
"""

from __future__ import annotations

import math
import re
from types import ModuleType
from typing import Any

import pytest

from db import queue
from ui.frames import eval_label

pytestmark = pytest.mark.browser

Shots = Any  # the `shots` fixture: shots("step") -> path of the saved screenshot


def test_demo_run_from_new_run_to_compare_and_weights(
    flow: ModuleType, app: Any, app_db: Any, page: Any, shots: Shots
) -> None:
    expect = flow.expect
    flow.open_app(page, app.url)
    shots("home")

    # New run: demo model, rtn-int8, a small evaluation budget.
    flow.go_to(page, "New run")
    flow.fill_fast_run(page, "rtn-int8")
    shots("new-run-filled")
    job_id = flow.queue_run(page)
    shots("queued")
    job = queue.get_job(app_db, job_id)
    assert job is not None and job.model == "demo" and job.recipe_label == "rtn-int8"
    assert job.spec["eval"]["ctx"] == 128 and job.spec["eval"]["eval_tokens"] == 1024
    assert job.spec["calib_settings"]["n_samples"] == 4  # what was typed is what runs

    # Runs: live progress, then the finished job in the history.
    flow.go_to(page, "Runs")
    shots("runs-active")
    # Nobody started a worker: the app did, and it registers once torch is imported.
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text(re.compile(r"\d+ workers? alive"))).to_be_visible(
        timeout=flow.RUN_FINISH_MS
    )
    flow.wait_run_finished(page, job_id, on_running=lambda: shots("runs-progress"))
    shots("runs-finished")
    history = flow.grid_rows(flow.main_area(page).get_by_test_id("stDataFrame").last)
    row = next(r for r in history if r and r[0] == str(job_id))
    assert "succeeded" in row
    job = queue.get_job(app_db, job_id)
    assert job.status == "succeeded", job.error
    weight_mb, ppl = job.result["weight_bytes"] / 1e6, job.result["perplexity"]
    assert math.isfinite(ppl) and ppl > 1

    # Compare: the run is one point of the memory chart, at its stored numbers.
    flow.go_to(page, "Compare")
    # Compare opens on the evaluation most runs share; other tests of this session may
    # have added runs evaluated otherwise, so pick this run's evaluation.
    flow.choose(page, "Evaluated on", eval_label(job))
    charts = flow.charts(page)
    expect(charts.nth(1)).to_be_visible()  # memory and latency first (more may follow)
    memory = charts.first
    expect(memory.locator(".scatterlayer path.point").first).to_be_visible()
    # The run's point: the marker trace whose hover data names the run (one trace per
    # method today; found by run id so a different colouring does not break the test).
    markers = [t for t in flow.plotly_traces(memory) if t.get("mode") == "markers"]
    ours = [(t, i) for t in markers for i, c in enumerate(t["customdata"]) if c[0] == job_id]
    assert len(ours) == 1  # other tests of this session may have added runs of their own
    trace, i = ours[0]
    assert trace["x"][i] == pytest.approx(weight_mb) and trace["y"][i] == pytest.approx(ppl)
    hover = flow.hover_point(page, memory, trace["name"], i)
    assert f"run #{job_id}: rtn-int8" in hover and "demo" in hover
    shots("compare")
    table = flow.grid_rows(flow.main_area(page).get_by_test_id("stDataFrame").first)
    assert len(table) == sum(len(t["x"]) for t in markers)  # one row per point
    ours_row = [r for r in table if str(job_id) in r]
    assert len(ours_row) == 1 and "rtn-int8" in ours_row[0]

    # Weights: the run's layers, a log-scale histogram before and after.
    flow.go_to(page, "Weights")
    run_box = flow.main_area(page).get_by_role("combobox", name="Run", exact=True)
    expect(run_box).to_have_value(re.compile(rf"^#{job_id}: demo"))
    hist = flow.charts(page).first
    expect(hist.locator(".barlayer .point").first).to_be_attached()
    bars = {t["name"].split(":")[0]: t for t in flow.plotly_traces(hist) if t["type"] == "bar"}
    assert {"before", "after"} <= set(bars)
    assert flow.plotly_layout(hist)["yaxis"]["type"] == "log"
    layer = flow.main_area(page).get_by_role("combobox", name="Layer", exact=True)
    stored = {s.name: s.data for s in queue.layer_stats(app_db, job_id)}
    data = stored[layer.input_value()]
    for side in ("before", "after"):  # the bars are the stored counts (NaN: an empty bin)
        drawn = sum(y for y in bars[side]["y"] if y == y)
        assert drawn == sum(data[side]["counts"]) > 0
    shots("weights")


def test_out_of_range_bits_is_refused(
    flow: ModuleType, app: Any, app_db: Any, page: Any, shots: Shots
) -> None:
    """bits=99 typed into the generated widget, then into the JSON recipe: both times the
    config's refusal (with the allowed range) shows under the field at once, Queue stays
    disabled, and nothing is queued."""
    flow.open_app(page, app.url)
    flow.go_to(page, "New run")
    flow.pick_radio(page, "Model", "Tiny Llama")  # were it queued after all: a tiny job
    before = {j.id for j in queue.list_jobs(app_db)}

    flow.pick_radio(page, "Recipe", "Build steps")
    bits = flow.main_area(page).get_by_role("spinbutton", name="bits", exact=True)
    bits.fill("99")
    bits.press("Enter")
    flow.wait_idle(page)
    _expect_refused(flow, page, "bits=99")
    shots("widget-bits-99-refused")
    _assert_nothing_queued(app_db, before)

    flow.pick_radio(page, "Recipe", "JSON")
    area = flow.main_area(page).get_by_label(re.compile(r"^Recipe as JSON"))
    area.fill('[{"method": "rtn", "bits": 99}]')
    area.press("Control+Enter")
    flow.wait_idle(page)
    _expect_refused(flow, page, "bits=99")
    shots("json-bits-99-refused")
    _assert_nothing_queued(app_db, before)


def _expect_refused(flow: ModuleType, page: Any, what: str) -> None:
    """The refusal names the method and the value and says what is allowed (no class
    name); Queue run is disabled."""
    main = flow.main_area(page)
    error = main.get_by_test_id("stAlertContentError").filter(has_text=what).first
    flow.expect(error).to_contain_text(f"{what} is out of range")
    flow.expect(error).to_contain_text("[2, 8]")  # rtn's range for bits
    flow.expect(error).not_to_contain_text("RTNConfig")
    flow.expect(flow.settled(page.get_by_role("button", name="Queue run"))).to_be_disabled()


def _assert_nothing_queued(app_db: Any, before: set[int]) -> None:
    new = [j for j in queue.list_jobs(app_db) if j.id not in before]
    for job in new:  # leave the worker idle for whatever runs next
        queue.request_cancel(app_db, job.id)
    assert not new, f"queued {[j.spec['recipe'] for j in new]}"
