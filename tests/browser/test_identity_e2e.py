"""Issue 18 in a real browser: a wrong field is refused under the field with Queue
disabled (and the form survives a visit to another page); a run is renamed, tagged,
filtered, archived, restored and cloned into New run; two runs' config diff; a custom
axis on Compare.

The runs are put in the app's database as a teammate's bundle would (finished, no worker
involved), so these tests do not wait for a compression.
"""

from __future__ import annotations

import json
import re
from types import ModuleType
from typing import Any

import pytest

from db import queue
from runs.spec import build_spec
from ui import bundle

pytestmark = pytest.mark.browser

Shots = Any


def _run(model: str, steps: list[dict], name: str, ppl: float, mb: float, n: int) -> dict:
    spec, label = build_spec(
        model,
        steps,
        text_exists=lambda _: True,
        recipe_name=name,
        calib="stdlib-code",
        eval_set="stdlib-heldout",
        eval_settings=None,
        calib_settings=None,
    )
    return {
        "fingerprint": {"model": model, "recipe": steps, "n": n, "t": "issue18"},
        "model": model,
        "recipe_label": label,
        "spec": json.loads(spec.to_json()),
        "result": {
            "perplexity": ppl,
            "weight_bytes": mb * 1e6,
            "prefill_ms": 5.0 + n,
            "decode_tok_s": 100.0 - n,
            "kl_to_baseline": 0.01 * n,
        },
    }


@pytest.fixture
def two_runs(app_db: Any) -> tuple[int, int]:
    """A 4-bit and an 8-bit RTN run of the demo model, finished (imported once per app)."""
    ours = [j.id for j in queue.finished_runs(app_db) if j.fingerprint.get("t") == "issue18"]
    if len(ours) == 2:
        return ours[0], ours[1]
    runs = [
        _run("demo", [{"method": "rtn", "bits": 4, "granularity": "group"}], "", 3.1, 2.0, 0),
        _run("demo", [{"method": "rtn", "bits": 8}], "", 3.0, 4.0, 1),
    ]
    data = {"format": bundle.BUNDLE_FORMAT, "version": bundle.BUNDLE_VERSION, "runs": runs}
    report = bundle.import_bundle(app_db, data, owner="local")
    assert len(report.added) == 2, report
    return report.added[0], report.added[1]


def _under(field: Any, message: Any) -> None:
    """``message`` is drawn below ``field`` and overlaps it horizontally (its column)."""
    f, m = field.bounding_box(), message.bounding_box()
    assert f and m
    assert m["y"] >= f["y"] + f["height"] - 1, (f, m)
    assert m["x"] < f["x"] + f["width"] and f["x"] < m["x"] + m["width"], (f, m)


def test_an_invalid_field_is_refused_under_it_and_queue_is_disabled(
    flow: ModuleType, app: Any, app_db: Any, page: Any, shots: Shots
) -> None:
    expect = flow.expect
    flow.open_app(page, app.url)
    flow.go_to(page, "New run")
    flow.pick_radio(page, "Model", "Tiny Llama")
    flow.pick_radio(page, "Recipe", "Build steps")
    flow.choose(page, "granularity", "group")
    main = flow.main_area(page)
    queue_button = page.get_by_role("button", name="Queue run")
    expect(flow.settled(queue_button)).to_be_enabled()
    flow.set_number(page, "group_size", 7)
    errors = main.get_by_test_id("stAlertContentError")
    message = errors.filter(has_text="group_size=7").filter(has_not_text="Fix first")
    expect(message).to_contain_text("group_size=7 is out of range: a power of two in [32, 256]")
    expect(errors.filter(has_text="Fix first: rtn: group_size=7")).to_be_visible()
    expect(message).not_to_contain_text("RTNConfig")
    _under(main.get_by_label("group_size", exact=True), message)
    expect(flow.settled(queue_button)).to_be_disabled()
    shots("group-size-7")

    flow.go_to(page, "Runs")  # the form keeps its state across pages
    flow.go_to(page, "New run")
    expect(main.get_by_label("group_size", exact=True)).to_have_value("7")
    expect(message).to_be_visible()
    expect(flow.settled(queue_button)).to_be_disabled()
    flow.set_number(page, "group_size", 64)
    expect(message).to_have_count(0)
    expect(flow.settled(queue_button)).to_be_enabled()
    shots("group-size-64")


SHOWN = re.compile(r"(\d+) of (\d+) shown")


def _history(flow: ModuleType, page: Any) -> list[str]:
    """The run ids in the Runs history (its last grid), after the filters."""
    flow.wait_idle(page)
    main = flow.main_area(page)
    # mid-rerun Streamlit can show the old caption beside the new one: read the last,
    # as the grid below (the caller polls until the state it waits for)
    caption = main.get_by_text(SHOWN).last
    flow.expect(caption).to_be_visible()
    m = SHOWN.search(caption.inner_text())
    if m and m.group(1) == "0":
        return []
    return [r[0] for r in flow.grid_rows(main.get_by_test_id("stDataFrame").last) if r]


def _until(page: Any, check: Any, what: str) -> None:
    """Wait up to 30 s for ``check()`` (a database write the click starts)."""
    for _ in range(60):
        if check():
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"not done within 30 s: {what}")


def _history_becomes(
    flow: ModuleType, page: Any, want: set[str], exact: bool = True, others: frozenset = frozenset()
) -> None:
    """Wait (the history refreshes after the rerun a filter starts) until the shown ids
    are ``want`` (or include them, ``exact=False``); ``others`` (runs earlier tests left in
    the shared app database) may show as well."""
    got: list[str] = []
    for _ in range(60):
        got = _history(flow, page)
        if (set(got) - others == want) if exact else (want <= set(got)):
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"history shows {got}, expected {sorted(want)}")


def _multiselect(flow: ModuleType, page: Any, label: str, option: str) -> None:
    box = flow.main_area(page).get_by_role("combobox", name=label, exact=True)
    flow.live(page, box.click)
    flow.fill_live(page, box, option)
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")
    flow.wait_idle(page)


def _pick_run(flow: ModuleType, page: Any, job_id: int) -> None:
    """Pick the run in the history's "Run" box; the history refreshes every 5 s and may
    close an open list, so the pick is tried again."""
    box = flow.main_area(page).get_by_role("combobox", name="Run", exact=True)
    option = page.get_by_role("option", name=re.compile(rf"^#{job_id}: "))
    for attempt in range(5):
        try:
            flow.live(page, box.click)  # the box too can show an old copy for a moment
            option.click(timeout=10_000)
            break
        except Exception:
            if attempt == 4:
                raise
            page.keyboard.press("Escape")
    flow.expect(box).to_have_value(re.compile(rf"^#{job_id}: "))
    flow.wait_idle(page)


def test_a_run_renamed_tagged_filtered_archived_restored_and_cloned(
    flow: ModuleType, app: Any, app_db: Any, page: Any, shots: Shots, two_runs
) -> None:
    expect = flow.expect
    four, eight = two_runs
    # runs of earlier tests in the shared app database (a filter may show them too)
    others = {str(j.id) for j in queue.finished_runs(app_db)} - {str(four), str(eight)}
    flow.open_app(page, app.url)
    flow.go_to(page, "Runs")
    main = flow.main_area(page)
    _pick_run(flow, page, four)
    flow.fill_live(page, main.get_by_label("Name", exact=True), "int4 first try")
    flow.fill_live(page, main.get_by_label("Tags (comma-separated)", exact=True), "paper, int4")
    flow.fill_live(page, main.get_by_label("Notes", exact=True), "group size 128")
    flow.live(page, main.get_by_role("button", name="Save name, tags and notes").click)
    _until(page, lambda: queue.get_job(app_db, four).name, "saved")
    job = queue.get_job(app_db, four)
    assert (job.name, job.tags, job.notes) == (
        "int4 first try",
        ["paper", "int4"],
        "group size 128",
    )
    grid = main.get_by_test_id("stDataFrame").last
    _until(
        page,
        lambda: any(r[0] == str(four) and "int4 first try" in r for r in flow.grid_rows(grid)),
        "the history shows the name",
    )
    shots("named")

    params = main.get_by_label("Parameters", exact=True)  # any parameter of the recipe
    flow.fill_live(page, params, "bits=8", enter=True)
    _history_becomes(flow, page, {str(eight)}, others=others)
    flow.fill_live(page, params, "method=rtn, bits<=4", enter=True)
    _history_becomes(flow, page, {str(four)}, others=others)
    flow.fill_live(page, params, "", enter=True)
    _history_becomes(flow, page, {str(four), str(eight)}, exact=False)
    _multiselect(flow, page, "Tag", "paper")  # the tag filter: only the tagged run is left
    _history_becomes(flow, page, {str(four)}, others=others)
    shots("filtered-by-tag")

    _pick_run(flow, page, four)
    flow.live(page, main.get_by_role("button", name="Archive", exact=True).click)
    _until(page, lambda: queue.get_job(app_db, four).archived, "archived")
    _history_becomes(
        flow, page, set(), others=others
    )  # the tag filter still on: nothing else is tagged
    shots("archived")
    flow.live(page, main.get_by_text("Show archived", exact=True).click)
    _history_becomes(flow, page, {str(four)}, others=others)
    _pick_run(flow, page, four)
    flow.live(page, main.get_by_role("button", name="Restore", exact=True).click)
    _until(page, lambda: not queue.get_job(app_db, four).archived, "restored")

    _pick_run(flow, page, four)
    flow.live(page, main.get_by_role("link", name="Clone into New run").click)
    flow.expect_title(page, "New run")
    expect(main.get_by_text(re.compile(rf"Pre-filled from run #{four}"))).to_be_visible()
    area = main.get_by_label(re.compile(r"^Recipe as JSON"))
    expect(area).to_have_value(re.compile(r'"bits": 4'))
    expect(area).to_have_value(re.compile(r'"granularity": "group"'))
    shots("cloned")


def test_the_config_diff_of_two_runs(
    flow: ModuleType, app: Any, page: Any, shots: Shots, two_runs
) -> None:
    four, eight = two_runs
    page.goto(f"{app.url.rstrip('/')}/run?run={four},{eight}")
    flow.expect_title(page, "Run")
    main = flow.main_area(page)
    flow.expect(main.get_by_role("heading", name="Config diff")).to_be_visible()
    grid = main.get_by_test_id("stDataFrame").last  # after the metrics side by side
    rows = {r[0]: r[1:] for r in flow.grid_rows(grid) if r}
    assert rows["step 1 rtn.bits"] == ["4", "8"]
    assert rows["step 1 rtn.granularity"] == ["group", "channel"]
    assert "model" not in rows and "eval.ctx" not in rows  # equal settings are left out
    shots("config-diff")


def test_choosing_a_custom_axis_on_compare(
    flow: ModuleType, app: Any, page: Any, shots: Shots, two_runs
) -> None:
    flow.open_app(page, app.url)
    flow.go_to(page, "Compare")
    main = flow.main_area(page)
    main.get_by_text(re.compile("^Choose the axes")).click()
    flow.wait_idle(page)
    flow.choose(page, "x axis", "Decode throughput (tokens/s, median)")
    flow.choose(page, "y axis", "KL to baseline (nats/token)")
    chart = flow.charts(page).filter(has_text="KL to baseline")  # the chosen y axis
    flow.expect(chart).to_have_count(1)
    flow.expect(chart.locator(".scatterlayer path.point").first).to_be_visible()
    layout = flow.plotly_layout(chart)
    assert "tokens/s" in layout["xaxis"]["title"]["text"]
    assert "KL" in layout["yaxis"]["title"]["text"]
    traces = [t for t in flow.plotly_traces(chart) if t.get("mode") == "markers"]
    assert sum(len(t["x"]) for t in traces) >= 2
    parallel = flow.plotly_traces(flow.charts(page).filter(has_text="Parameters and metrics"))
    assert parallel[0]["type"] == "parcoords"
    shots("custom-axes")
