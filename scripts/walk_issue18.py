"""Walk the seven tasks of issue 18 in headless Chromium and record what each page shows,
so that a closing note can quote it (text lines and screenshot paths).

    python scripts/walk_issue18.py [--out /tmp/walk_issue18] [--no-sweep]

It starts `streamlit run app.py` against a temporary database (the app starts its own
worker), then, as a new user would:

1. latency: queues RTN 4-bit on the demo model and reads the Run page's latency section;
2. calibration: uploads a 22-character calibration file for GPTQ, reads the warning and
   the memory estimate, and the estimate of RTN (no calibration);
3. sparse + quantized: queues Wanda 50% then RTN 4-bit and reads both runs' bytes;
4. validation: group size 7, the message under the field, Queue disabled, the form kept;
5. identity: renames and tags a run, filters the history, clones it into New run, and
   reads the config diff of the two runs;
6. charts: a custom x and y on Compare, the parallel coordinates, the Pareto line;
7. status: the sidebar right after Queue, and a per-block sensitivity sweep: the time it
   says before queueing, then how long it took and what the picker says at the end.

Writes report.md and report.json (what each task showed) and the screenshots in --out.
Uses the browser tests' steps (tests/browser/flow.py); Playwright and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from tests.browser import flow  # noqa: E402

RTN4 = [{"method": "rtn", "bits": 4, "granularity": "group", "group_size": 128}]
WANDA_RTN4 = [{"method": "wanda", "sparsity": 0.5}, *RTN4]
SHORT_CALIB = "def f(x): return x + 1"  # 22 characters, as in the issue


class Walk:
    """Steps that record what the page shows: ``note`` lines and ``shot`` pictures per task."""

    def __init__(self, page: Page, url: str, out: Path) -> None:
        self.page, self.url, self.out = page, url, out
        self.report: dict[str, dict[str, Any]] = {}
        self.task = ""

    def start(self, task: str) -> None:
        self.task = task
        self.report[task] = {"shows": [], "screens": [], "error": None, "t0": time.time()}

    def note(self, line: str) -> None:
        print(f"[{self.task}] {line}", flush=True)
        self.report[self.task]["shows"].append(line)

    def shot(self, name: str) -> None:
        n = len(self.report[self.task]["screens"]) + 1
        path = self.out / f"{self.task}-{n:02d}-{name}.png"
        flow.shot(self.page, path)
        self.report[self.task]["screens"].append(str(path))

    def lines(self, pattern: str, where: Any = None, limit: int = 12) -> list[str]:
        """Lines of the main area (or ``where``) that match ``pattern``, each noted."""
        text = (where or flow.main_area(self.page)).inner_text()
        found = [ln.strip() for ln in text.splitlines() if re.search(pattern, ln, re.I)]
        for ln in found[:limit]:
            self.note(ln[:400])
        return found

    def sidebar(self) -> str:
        text = self.page.get_by_test_id("stSidebar").inner_text()
        return " | ".join(
            ln.strip() for ln in text.splitlines() if re.search(r"worker|queued|Jobs", ln)
        )


def _json_recipe(page: Page, steps: list[dict[str, Any]]) -> None:
    flow.pick_radio(page, "Recipe", "JSON")
    area = flow.main_area(page).get_by_label(re.compile(r"^Recipe as JSON"))
    area.fill(json.dumps(steps))
    area.press("Control+Enter")
    flow.wait_idle(page)


def _fast_demo(page: Page) -> None:
    flow.pick_radio(page, "Model", "Bundled demo model")
    for label, value in flow.FAST_SETTINGS.items():
        flow.set_number(page, label, value)


def first_load(w: Walk) -> None:
    flow.open_app(w.page, w.url)
    w.note(f"sidebar on first load: {w.sidebar()}")
    w.shot("first-load")


def validation(w: Walk) -> None:
    page = w.page
    flow.go_to(page, "New run")
    flow.pick_radio(page, "Model", "Bundled demo model")
    flow.pick_radio(page, "Recipe", "Build steps")
    flow.choose(page, "granularity", "group")
    help_text = flow.main_area(page).get_by_label("group_size", exact=True)
    w.note(f"group_size field: value {help_text.input_value()}")
    flow.set_number(page, "group_size", 7)
    w.lines(r"group_size=7|Fix first")
    queue_btn = page.get_by_role("button", name="Queue run")
    w.note(f"Queue run enabled: {queue_btn.is_enabled()}")
    w.shot("group-size-7")
    flow.go_to(page, "Runs")
    flow.go_to(page, "New run")
    kept = flow.main_area(page).get_by_label("group_size", exact=True).input_value()
    w.note(f"after visiting Runs and back, group_size reads {kept}")
    flow.set_number(page, "group_size", 128)
    w.note(f"group_size 128: Queue run enabled: {queue_btn.is_enabled()}")
    w.lines(r"Fix first|out of range")
    w.shot("group-size-128")


def calibration(w: Walk) -> None:
    page = w.page
    flow.go_to(page, "New run")
    _fast_demo(page)
    flow.pick_radio(page, "Recipe", "Named recipe")
    flow.choose(page, "Named recipe", "rtn-4bit-g128")
    w.lines(r"calibration", limit=6)
    w.shot("rtn-estimate")
    flow.choose(page, "Named recipe", "gptq-4bit-g128")
    upload = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)  # noqa: SIM115
    upload.write(SHORT_CALIB)
    upload.close()
    page.locator("input[type=file]").first.set_input_files(upload.name)
    flow.wait_idle(page)
    page.wait_for_timeout(1500)  # the upload's rerun
    flow.wait_idle(page)
    w.lines(r"calibration|token|upload|too short|window|sha256")
    w.shot("short-upload")


def queue_two_runs(w: Walk) -> tuple[int, int]:
    page = w.page
    flow.go_to(page, "New run")
    _fast_demo(page)
    calib = flow.main_area(page).get_by_role("combobox", name="Calibration set", exact=True)
    if "upload" in (calib.input_value() or ""):  # the short upload of task 2 is kept
        calib.click()
        calib.fill("stdlib-code")
        page.get_by_role("option", name=re.compile(r"^stdlib-code: ")).first.click()
        flow.wait_idle(page)
    w.note(f"calibration set: {calib.input_value()}")
    _json_recipe(page, RTN4)
    rtn = flow.queue_run(page)
    w.note(f"queued RTN 4-bit as #{rtn}; sidebar at once: {w.sidebar()}")
    w.shot("queued")
    _json_recipe(page, WANDA_RTN4)
    chain = flow.queue_run(page)
    w.note(f"queued Wanda 50% then RTN 4-bit as #{chain}; sidebar at once: {w.sidebar()}")
    flow.go_to(page, "Runs")
    t0 = time.monotonic()
    flow.wait_run_finished(page, rtn, timeout_ms=900_000)
    flow.wait_run_finished(page, chain, timeout_ms=900_000)
    w.note(f"both finished {time.monotonic() - t0:.0f} s after queueing")
    return rtn, chain


def latency(w: Walk, rtn: int) -> None:
    page = w.page
    page.goto(f"{w.url}/run?run={rtn}")
    flow.expect_title(page, "Run")
    w.lines(r"^Latency timed|prefill \d+ tokens:|decode batch \d+:|load could")
    w.lines(r"Compression (CPU|wall)|compress.*time", limit=4)
    w.shot("run-page")


def sparse_quant(w: Walk, rtn: int, chain: int) -> None:
    page = w.page
    page.goto(f"{w.url}/run?run={rtn},{chain}")
    flow.expect_title(page, "Run")
    main = flow.main_area(page)
    flow.expect(main.get_by_test_id("stDataFrame").first).to_be_visible()
    wanted = re.compile(r"Perplexity|Weight memory|Bits per weight|Sparsity|Storage|format", re.I)
    for row in flow.grid_rows(main.get_by_test_id("stDataFrame").first):
        if row and wanted.search(row[0]):
            w.note("side by side: " + " | ".join(row))
    w.lines(r"sparse|mask|nonzero|N:M|bytes equal|dense", limit=6)
    w.shot("side-by-side")


def identity(w: Walk, rtn: int, chain: int) -> None:
    page = w.page
    main = flow.main_area(page)
    w.lines(r"Only the \d+ setting", limit=2)  # still on the side-by-side page
    diff = main.get_by_test_id("stDataFrame").nth(1)
    for row in flow.grid_rows(diff)[:6]:
        w.note("config diff: " + " | ".join(row))
    flow.go_to(page, "Runs")
    grid = main.get_by_test_id("stDataFrame").last
    for row in flow.grid_rows(grid)[:4]:
        w.note("history row: " + " | ".join(row[1:6]))
    _pick_run(page, rtn)
    main.get_by_label("Name", exact=True).fill("int4 first try")
    main.get_by_label("Tags (comma-separated)", exact=True).fill("walk, int4")
    main.get_by_role("button", name="Save name, tags and notes").click()
    flow.wait_idle(page)
    params = main.get_by_label("Parameters", exact=True)
    params.fill("method=wanda")
    params.press("Enter")
    flow.wait_idle(page)
    page.wait_for_timeout(3000)  # the history refreshes after the filter's rerun
    w.lines(r"\d+ of \d+ shown")
    w.shot("filtered")
    params.fill("")
    params.press("Enter")
    flow.wait_idle(page)
    _pick_run(page, rtn)
    main.get_by_role("button", name="Clone into New run").click()
    flow.expect_title(page, "New run")
    w.lines(r"Pre-filled from")
    w.shot("cloned")


def _pick_run(page: Page, job_id: int) -> None:
    """The history's "Run" box; it refreshes every 5 s and may close the list: retried."""
    box = flow.main_area(page).get_by_role("combobox", name="Run", exact=True)
    option = page.get_by_role("option", name=re.compile(rf"^#{job_id}\b"))
    for attempt in range(5):
        try:
            box.click()
            box.fill(f"#{job_id}")
            option.first.click(timeout=10_000)
            break
        except Exception:
            if attempt == 4:
                raise
            page.keyboard.press("Escape")
    flow.wait_idle(page)


def charts(w: Walk) -> None:
    page = w.page
    flow.go_to(page, "Compare")
    main = flow.main_area(page)
    main.get_by_text(re.compile("^Choose the axes")).click()
    flow.wait_idle(page)
    flow.choose(page, "x axis", "Decode throughput (tokens/s, median)")
    flow.choose(page, "y axis", "KL to baseline (nats/token)")
    chart = flow.charts(page).filter(has_text="KL to baseline")
    flow.expect(chart.first).to_be_visible()
    layout = flow.plotly_layout(chart.first)
    w.note(
        f"custom chart axes: x {layout['xaxis']['title']['text']!r}, "
        f"y {layout['yaxis']['title']['text']!r}"
    )
    parallel = flow.charts(page).filter(has_text="Parameters and metrics")
    if parallel.count():
        kinds = {t["type"] for t in flow.plotly_traces(parallel.first)}
        w.note(f"parallel coordinates chart: trace types {sorted(kinds)}")
    memory = flow.charts(page).first
    names = [t.get("name") for t in flow.plotly_traces(memory)]
    w.note(f"memory chart traces: {names}")
    w.shot("compare")


def sensitivity(w: Walk, sweep: bool) -> None:
    page = w.page
    flow.go_to(page, "Sensitivity")
    main = flow.main_area(page)
    opener = main.get_by_text("Start a sweep", exact=True)
    if opener.count() and not main.get_by_role("button", name="Queue sensitivity sweep").count():
        opener.click()
        flow.wait_idle(page)
    flow.pick_radio(page, "Model", "Bundled demo model")
    flow.pick_radio(page, "Sweep over", "each decoder block")
    flow.set_number(page, "bits", 4)  # the sweep: 4-bit RTN, block by block
    for label, value in flow.FAST_SETTINGS.items():
        flow.set_number(page, label, value)
    w.lines(r"job\(s\), one per|About .* for \d+ jobs|not known yet|share one baseline")
    w.shot("before-queue")
    if not sweep:
        return
    page.get_by_role("button", name="Queue sensitivity sweep").click()
    flow.wait_idle(page)
    t0 = time.monotonic()
    done = main.get_by_text(re.compile(r"^(\d+)/\1 finished · 0 running"))
    flow.expect(done).to_be_visible(timeout=1_800_000)  # no click: the page refreshes itself
    w.note(
        f"sweep finished {time.monotonic() - t0:.0f} s after queueing (page not touched; "
        f"settings {flow.FAST_SETTINGS})"
    )
    w.lines(r"finished · \d+ running")
    picker = main.get_by_role("combobox", name="Sweep", exact=True).input_value()
    w.note(f"sweep picker: {picker}")
    w.lines(r"Units to keep|everywhere except", limit=3)
    w.shot("sweep-done")


def attempt(w: Walk, task: str, step: Callable[[], Any]) -> Any:
    w.start(task)
    try:
        return step()
    except Exception as e:  # one task's failure is recorded, the walk goes on
        w.report[task]["error"] = f"{type(e).__name__}: {str(e)[:1500]}"
        traceback.print_exc()
        try:
            w.shot("error")
        except Exception:
            pass
        return None
    finally:
        w.report[task]["seconds"] = round(time.time() - w.report[task].pop("t0"), 1)


def walk(page: Page, url: str, out: Path, sweep: bool) -> dict[str, Any]:
    w = Walk(page, url.rstrip("/"), out)
    attempt(w, "0-first-load", lambda: first_load(w))
    attempt(w, "4-validation", lambda: validation(w))
    attempt(w, "2-calibration", lambda: calibration(w))
    ids = attempt(w, "7a-queue-status", lambda: queue_two_runs(w))
    if ids:
        rtn, chain = ids
        attempt(w, "1-latency", lambda: latency(w, rtn))
        attempt(w, "3-sparse-quant", lambda: sparse_quant(w, rtn, chain))
        attempt(w, "5-identity", lambda: identity(w, rtn, chain))
        attempt(w, "6-charts", lambda: charts(w))
    attempt(w, "7b-sensitivity", lambda: sensitivity(w, sweep))
    return w.report


def write_report(report: dict[str, Any], out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2))
    md = ["# Issue 18 walk", ""]
    for task, r in report.items():
        md.append(f"## {task} ({r['seconds']} s)")
        md += [f"- {line}" for line in r["shows"]]
        md += [f"- screenshot: {p}" for p in r["screens"]]
        if r["error"]:
            md.append(f"- ERROR: {r['error']}")
        md.append("")
    (out / "report.md").write_text("\n".join(md))
    print(f"wrote {out / 'report.md'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/walk_issue18"))
    ap.add_argument("--no-sweep", action="store_true", help="plan the sweep, do not run it")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        flow.running_app(Path(tmp), args.out / "logs") as app,
        sync_playwright() as pw,
    ):
        browser = flow.launch_browser(pw)
        page = flow.new_page(browser)
        report = walk(page, app.url, args.out, sweep=not args.no_sweep)
        browser.close()
    write_report(report, args.out)
    return 1 if any(r["error"] for r in report.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
