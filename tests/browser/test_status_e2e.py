"""Issue 18 in a real browser, fresh status and latency you can believe: the sidebar counts
a run on the very page that says it was queued; a sensitivity sweep's progress and
results follow its jobs without a click, and agree with the Runs page; the Run page
shows each latency measure's spread and says "not measurable" where the pairs do not
allow a number.

The sweep's jobs and the latency run are written to the app's database directly (as a
worker or a teammate's bundle would), so these tests wait for no compression.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from db import queue
from db.clock import db_now
from db.models import RUNNING, Job
from runs import catalogue as cat
from runs import latency as lat
from runs.sensitivity import Unit, sensitivity_recipes
from runs.spec import build_spec
from ui import bundle

pytestmark = pytest.mark.browser

Shots = Any
TAG = "issue18-latency"
COUNTS = re.compile(r"Jobs: (\d+) queued · (\d+) running")


def _sidebar_counts(flow: ModuleType, page: Any) -> tuple[int, int]:
    text = page.get_by_test_id("stSidebar").inner_text()
    m = COUNTS.search(text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


def test_the_sidebar_counts_a_run_on_the_page_that_says_it_was_queued(
    flow: ModuleType, app: Any, app_db: Any, page: Any, shots: Shots
) -> None:
    flow.open_app(page, app.url)
    sidebar = page.get_by_test_id("stSidebar")
    flow.expect(sidebar.get_by_text(COUNTS)).to_be_visible()
    said = sidebar.inner_text()
    assert not ("no worker alive" in said and "started a local worker" in said), said
    flow.go_to(page, "New run")
    flow.pick_radio(page, "Model", "Tiny Llama")
    flow.pick_radio(page, "Recipe", "Named recipe")
    counts = queue.queue_counts(app_db)
    before = counts.get("queued", 0) + counts.get("running", 0)
    job_id = flow.queue_run(page)  # returns as soon as "Queued job #N" is visible
    queued, running = _sidebar_counts(flow, page)  # at once: no refresh waited for
    shots("queued")
    queue.request_cancel(app_db, job_id)  # the run itself is not what this test is about
    assert queued + running == before + 1, (queued, running, before)


def _spec(model: str, steps: list[dict]) -> tuple[Any, str]:
    """A job spec on the stock calibration and evaluation sets, and its recipe label."""
    return build_spec(
        model,
        steps,
        text_exists=lambda _: True,
        recipe_name="",
        calib="stdlib-code",
        eval_set="stdlib-heldout",
        eval_settings=None,
        calib_settings=None,
    )


def _sweep_jobs(app_db: Any, worker: str) -> tuple[str, list[int]]:
    """Two jobs of a block-by-block RTN sweep of the tiny model, running on ``worker``."""
    step = {"method": "rtn", "bits": 4}
    units = [Unit(f"model.layers.{i}", f"model.layers.{i}.*") for i in (0, 1)]
    sweep_id = "e2e" + queue.new_worker_id()[-6:]
    with app_db.begin() as s:
        rows = []
        for u, steps in zip(units, sensitivity_recipes(step, units), strict=True):
            spec, label = _spec("tiny-random", steps)
            rows.append(
                Job(
                    created_at=db_now(),
                    status=RUNNING,
                    model="tiny-random",
                    recipe_label=f"{label} only {u.label}",
                    spec_json=spec.to_json(),
                    progress=0.5,
                    message="evaluating",
                    sweep_id=sweep_id,
                    owner="local",
                    worker_id=worker,
                    started_at=db_now(),
                    heartbeat_at=db_now(),
                    attempts=1,
                )
            )
        s.add_all(rows)
        s.flush()
        ids = [r.id for r in rows]
    return sweep_id, ids


@contextlib.contextmanager
def _heartbeats(app_db: Any, worker: str, ids: list[int]) -> Iterator[None]:
    """The stand-in worker's heartbeats every 5 s, so that the app's stale-job recovery
    does not requeue the jobs while the slow page loads (a real worker would run them)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(5.0):
            queue.worker_heartbeat(app_db, worker, ids[0])
            for job_id in ids:
                queue.heartbeat(app_db, job_id, worker, 0.5, "evaluating")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def test_a_sensitivity_sweep_refreshes_on_its_own_and_agrees_with_runs(
    flow: ModuleType, app: Any, app_db: Any, page: Any, shots: Shots
) -> None:
    expect = flow.expect
    flow.open_app(page, app.url)
    flow.go_to(page, "Sensitivity")  # its modules imported before the jobs exist
    worker = "e2e-sweep-worker"
    queue.register_worker(app_db, worker)
    sweep_id, ids = _sweep_jobs(app_db, worker)
    with _heartbeats(app_db, worker, ids):
        _follow_the_sweep(flow, page, shots)
    for i, job_id in enumerate(ids):  # the worker finishes both, no click in the page
        metrics = {
            cat.PERPLEXITY.key: 30.0 + i,
            cat.BASELINE_PERPLEXITY.key: 29.0,
            cat.MEAN_LAYER_ERROR.key: 0.01,
        }
        assert queue.complete(app_db, job_id, worker, metrics, [], {"sweep": sweep_id, "i": i})
    main = flow.main_area(page)
    expect(main.get_by_text(re.compile(r"^2/2 finished · 0 running"))).to_be_visible(timeout=30_000)
    # the section outside the live fragment follows too (the page reruns once a job ends)
    expect(main.get_by_label("Units to keep in higher precision", exact=True)).to_be_visible(
        timeout=30_000
    )
    shots("finished")
    flow.go_to(page, "Runs")  # the Runs page shows both as finished runs
    runs_main = flow.main_area(page)
    for job_id in ids:
        for _ in range(60):
            if flow._in_history(runs_main, job_id):
                break
            page.wait_for_timeout(500)
        else:
            raise AssertionError(f"job #{job_id} is not in the Runs history")
    assert {queue.get_job(app_db, j).status for j in ids} == {"succeeded"}


def _follow_the_sweep(flow: ModuleType, page: Any, shots: Shots) -> None:
    """Open the sweep on Sensitivity while its jobs run."""
    expect = flow.expect
    flow.go_to(page, "Runs")
    flow.go_to(page, "Sensitivity")
    main = flow.main_area(page)
    expect(main.get_by_role("combobox", name="Sweep", exact=True)).to_have_value(
        re.compile(r"tiny-random · rtn\(bits=4.*· 2 jobs")
    )
    expect(main.get_by_text(re.compile(r"^0/2 finished · 2 running"))).to_be_visible()
    expect(main.get_by_text("Once jobs finish, the most costly units")).to_be_visible()
    shots("running")


def _latency_run() -> dict[str, Any]:
    """A finished run whose prefill pairs spread too widely for a number and whose decode
    is measurably faster, through the same functions a job uses (runs/latency.py)."""
    ms = lat.Spread.of([9.0, 10.0, 11.0, 12.0, 20.0])
    pre = lat.MeasureResult(
        "prefill 16 tokens",
        "prefill",
        16,
        1,
        ms,
        lat.Spread.of([8.0, 10.0, 12.0, 16.0, 18.0]),
        lat.Spread.of([0.6, 0.9, 1.1, 1.4, 2.0]),
        "",
    ).judged(1.0)
    dec = lat.MeasureResult(
        "decode batch 1",
        "decode",
        16,
        1,
        lat.Spread.of([200.0, 205.0, 210.0, 212.0, 220.0]),
        lat.Spread.of([100.0, 102.0, 105.0, 106.0, 110.0]),
        lat.Spread.of([1.9, 2.0, 2.0, 2.05, 2.1]),
        "",
    ).judged(1.0)
    report = lat.LatencyReport(
        [pre, dec], 5, 1, 2, "a test CPU", True, {"load1": 0.5}, {"load1": 0.7}, 16
    )
    steps = [{"method": "rtn", "bits": 8}]
    spec, label = _spec("demo", steps)
    result = lat.result_fields(report, weight_bytes=4_000_000, base_weight_bytes=8_000_000)
    result |= {cat.PERPLEXITY.key: 3.0, cat.WEIGHT_BYTES.key: 4_000_000}
    return {
        # "device" keeps it apart from other tests' RTN 8-bit runs (bundles dedupe on it)
        "fingerprint": {"model": "demo", "recipe": steps, "device": "a test CPU", "t": TAG},
        "model": "demo",
        "recipe_label": label,
        "spec": json.loads(spec.to_json()),
        "result": result,
    }


def test_the_run_page_shows_latency_spread_and_what_is_not_measurable(
    flow: ModuleType, app: Any, app_db: Any, page: Any, shots: Shots
) -> None:
    data = {"format": bundle.BUNDLE_FORMAT, "version": bundle.BUNDLE_VERSION}
    report = bundle.import_bundle(app_db, data | {"runs": [_latency_run()]}, owner="local")
    (job_id,) = (
        report.added
        or [j.id for j in queue.finished_runs(app_db) if j.fingerprint.get("t") == TAG][:1]
    )
    page.goto(f"{app.url.rstrip('/')}/run?run={job_id}")
    flow.expect_title(page, "Run")
    main = flow.main_area(page)
    expect = flow.expect
    expect(
        main.get_by_text(re.compile(r"timed in alternation .* 5 rounds after a warm-up"))
    ).to_be_visible()
    expect(main.get_by_text(re.compile(r"load average 0\.50 before, 0\.70 after"))).to_be_visible()
    verdicts = main.get_by_role("listitem")  # the bullets under "Latency"
    unmeasurable = re.compile(r"prefill 16 tokens: not measurable on this machine at this load")
    expect(verdicts.filter(has_text=unmeasurable)).to_be_visible()
    faster = re.compile(r"decode batch 1: 2\.00x \[2\.00-2\.05\] faster")
    expect(verdicts.filter(has_text=faster)).to_be_visible()
    chart = flow.charts(page).filter(has_text="Prefill (ms, lower is better)")
    expect(chart).to_have_count(1)
    bars = [t for t in flow.plotly_traces(chart) if t.get("type") == "bar"]
    assert {t["name"] for t in bars} == {"baseline", "compressed"}
    assert all(t.get("error_y", {}).get("type") == "data" for t in bars)  # the spread drawn
    shots("latency")
    job = queue.get_job(app_db, job_id)
    assert job.result[cat.PREFILL_SPEEDUP.key] is None  # no number where not measurable
    assert job.result[cat.DECODE_SPEEDUP.key] == pytest.approx(2.0)


def test_clone_into_new_run_three_times_in_one_session(
    flow: ModuleType, app: Any, app_db: Any, page: Any, shots: Shots
) -> None:
    """Clone from the Runs history could open New run blank (st.switch_page from the
    server while the history's timed fragments ticked: a tick arriving mid-switch reran
    the old page's fragment, under load about one clone in eight). Clone is a link now,
    and New run shows the pre-filled recipe every time."""
    from tests.browser.test_identity_e2e import _pick_run, _run

    run = _run("demo", [{"method": "rtn", "bits": 6}], "", 3.05, 3.0, 2)
    run["fingerprint"]["device"] = "clone twice"  # apart from other tests' runs
    data = {"format": bundle.BUNDLE_FORMAT, "version": bundle.BUNDLE_VERSION, "runs": [run]}
    added = bundle.import_bundle(app_db, data, owner="local").added
    job_id = (
        added[0]
        if added
        else next(
            j.id
            for j in queue.finished_runs(app_db)
            if j.fingerprint.get("device") == "clone twice"
        )
    )
    main = flow.main_area(page)
    for attempt in range(3):
        flow.open_app(page, app.url)
        flow.go_to(page, "Runs")
        _pick_run(flow, page, job_id)
        main.get_by_role("link", name="Clone into New run").click()
        flow.expect_title(page, "New run")
        page.wait_for_timeout(3000)  # the blank page came after the title had shown
        flow.expect(main.get_by_text(re.compile(rf"Pre-filled from run #{job_id}"))).to_be_visible()
        area = main.get_by_label(re.compile(r"^Recipe as JSON"))
        flow.expect(area).to_have_value(re.compile(r'"bits": 6'))
        shots(f"cloned-{attempt + 1}")
