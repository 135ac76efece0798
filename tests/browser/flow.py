"""The browser scenario's building blocks, shared by tests/browser/test_e2e.py and
scripts/screenshots.py: start the app as a subprocess (and stop it with every process it
spawned), launch Debian's Chromium through Playwright, and drive the pages.

Every wait is on a condition the user would see (a heading, a message, a chart in the
DOM), never a fixed sleep: the machines these run on are slow and shared.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from playwright.sync_api import Browser, Locator, Page, Playwright, expect
from playwright.sync_api import Error as PlaywrightError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("COMPRESSLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 860}
APP_START_S = 120.0  # streamlit imports torch through the pages' modules on a loaded machine
PAGE_LOAD_MS = 90_000  # the first render of a page imports its modules
RUN_FINISH_MS = 240_000  # worker start (torch import) + load, baseline, compress, evaluate
EXPECT_MS = 60_000  # plotly.js and the data grid load lazily; tens of seconds on a loaded host

expect.set_options(timeout=EXPECT_MS)

# Small enough that the demo model's run takes well under a minute of CPU.
FAST_SETTINGS: dict[str, int] = {
    "Context length (tokens)": 128,
    "Evaluation tokens": 1024,
    "Calibration samples": 4,
    "Calibration length (tokens)": 64,
}
FAST_LATENCY: dict[str, int] = {
    "Prompt length (tokens)": 16,
    "Decode steps timed": 4,
    "Repeats (median reported)": 1,
}


# --- the app as a subprocess -----------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_env(workdir: Path, autoworker: bool = True) -> dict[str, str]:
    """The app's environment: a private database and data folder, never the hub."""
    env = dict(os.environ)
    env.pop("COMPRESSLAB_NO_AUTOWORKER", None)  # tests/conftest.py sets it for AppTest
    if not autoworker:
        env["COMPRESSLAB_NO_AUTOWORKER"] = "1"
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{workdir / 'compresslab.db'}",
            "COMPRESSLAB_DATA": str(workdir / "data"),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # On a small shared machine OpenMP threads spin-wait for each other and a run takes
    # several times longer; one thread per process keeps the worker predictable.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def streamlit_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "app.py"),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",  # others edit the UI while tests run: no reruns on their saves
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--theme.base",
        "light",
    ]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = APP_START_S) -> None:
    """Poll /_stcore/health until it answers "ok"; fail early if the app exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode} before it was up")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)  # polling interval of a condition, not a wait for the app
    raise TimeoutError(f"{url}/_stcore/health did not answer ok within {timeout_s:.0f} s")


def _recorded_workers(data_dir: Path) -> list[psutil.Process]:
    """Local workers the app recorded in its pid files (ui/worker.py), if still running.

    The worker runs in its own session and outlives the app if the app dies abruptly,
    so the process tree alone may not find it."""
    procs = []
    for pid_file in data_dir.glob("local-worker-*.pid"):
        try:
            rec = json.loads(pid_file.read_text())
            proc = psutil.Process(int(rec["pid"]))
            if abs(proc.create_time() - float(rec["created"])) <= 1.0:
                procs.append(proc)
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            continue
    return procs


def stop_tree(proc: subprocess.Popen, data_dir: Path, grace_s: float = 15.0) -> list[int]:
    """Stop the app, the worker it started and anything else it spawned.

    SIGTERM first (the worker requeues its job and exits, the app stops the worker it
    started), SIGKILL for whatever is left after ``grace_s``. Returns the pids that had
    to be killed."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        family = []
    family += [p for p in _recorded_workers(data_dir) if p.pid not in {f.pid for f in family}]
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)  # reap the Popen object so no zombie is left
    return [p.pid for p in alive]


@dataclass
class RunningApp:
    url: str
    workdir: Path
    proc: subprocess.Popen
    log_path: Path

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.workdir / 'compresslab.db'}"


@contextlib.contextmanager
def running_app(workdir: Path, log_dir: Path, autoworker: bool = True) -> Iterator[RunningApp]:
    """`streamlit run app.py` on a free port against a database in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = log_dir / "streamlit.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            streamlit_command(port),
            cwd=ROOT,
            env=app_env(workdir, autoworker),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    app = RunningApp(f"http://127.0.0.1:{port}", workdir, proc, log_path)
    try:
        wait_healthy(app.url, proc)
        yield app
    finally:
        killed = stop_tree(proc, app.data_dir)
        if killed:
            log.warning("had to SIGKILL %s after SIGTERM", killed)
        worker_log = app.data_dir / "worker.log"
        if worker_log.is_file():  # keep it with the test artefacts
            (log_dir / "worker.log").write_bytes(worker_log.read_bytes())


# --- the browser -------------------------------------------------------------------------


def launch_browser(pw: Playwright) -> Browser:
    """Debian's Chromium (no Playwright browser download), headless."""
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def new_page(browser: Browser) -> Page:
    context = browser.new_context(viewport=VIEWPORT, color_scheme="light", reduced_motion="reduce")
    page = context.new_page()
    page.set_default_timeout(EXPECT_MS)
    return page


def main_area(page: Page) -> Locator:
    return page.get_by_test_id("stMain")


def wait_idle(page: Page, timeout_ms: float = PAGE_LOAD_MS) -> None:
    """Wait until no script run is in progress and no element is still a placeholder.

    The app root carries the script state (Streamlit's own tests wait on it); the
    "Running..." widget is no signal, it only shows for runs longer than a moment."""
    app = page.get_by_test_id("stApp")
    expect(app).to_have_attribute("data-test-script-state", "notRunning", timeout=timeout_ms)
    expect(main_area(page).get_by_test_id("stSkeleton")).to_have_count(0, timeout=timeout_ms)


STALE_COPY_MS = 20_000  # how long a widget's old copy may stay beside the new one


def live(page: Page, act: Callable[[], None], timeout_ms: float = STALE_COPY_MS) -> None:
    """Do ``act`` (a fill, a click) on a widget inside a fragment that refreshes on a timer.

    While such a fragment reruns, Streamlit can for a moment show the old copy of a widget
    beside the new one, and the action then fails Playwright's strict mode before doing
    anything (seen in CI on the history's "Parameters" filter, once for longer than five
    tries half a second apart on a busy machine), so it is tried again every half second
    for up to ``timeout_ms``. A second copy that stays fails, as it should."""
    waited = 0.0
    while True:
        try:
            act()
            return
        except PlaywrightError as e:
            if "strict mode violation" not in str(e) or waited >= timeout_ms:
                raise
            page.wait_for_timeout(500)
            waited += 500


def settled(locator: Locator, timeout_ms: float = PAGE_LOAD_MS) -> Locator:
    """``locator`` once it matches exactly one element, for assertions on its state.

    Right after a rerun Streamlit can for a moment show a widget's old copy beside its new
    one (see ``live``; seen in CI on "Queue run", enabled beside the disabled new copy),
    and an assertion then fails Playwright's strict mode at once. This waits for the old
    copy to go; a second copy that stays fails, as it should."""
    expect(locator).to_have_count(1, timeout=timeout_ms)
    return locator


def fill_live(page: Page, field: Locator, value: str, enter: bool = False) -> None:
    """Fill a field in a timer-refreshed fragment (see ``live``); Enter commits it."""

    def act() -> None:
        field.fill(value)
        if enter:
            field.press("Enter")

    live(page, act)


def expect_title(page: Page, title: str, timeout_ms: float = PAGE_LOAD_MS) -> None:
    """Wait for the page's h1; a script error shown instead fails at once, with its text."""
    heading = page.get_by_role("heading", level=1, name=title, exact=True)
    error = main_area(page).get_by_test_id("stException")
    expect(heading.or_(error).first).to_be_visible(timeout=timeout_ms)
    if error.count():
        raise AssertionError(f"the {title!r} page raised: {error.first.inner_text()[:2000]}")
    wait_idle(page)


def open_app(page: Page, url: str) -> None:
    page.goto(url)
    expect_title(page, "CompressLab")


def go_to(page: Page, title: str, heading: str | None = None) -> None:
    """Click a page in the sidebar navigation and wait for its title."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title, exact=True).click()
    expect_title(page, heading or title)


def set_number(page: Page, label: str, value: int) -> None:
    """Type into a number input and commit it (Enter), then wait for the rerun."""
    field = main_area(page).get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    expect(field).to_have_value(str(value))
    wait_idle(page)


def content_height(page: Page) -> int:
    """Height the page needs to show the main area whole. Streamlit scrolls that area
    (``stMain``) inside the window, so a "full page" screenshot would stop at the viewport."""
    return int(
        main_area(page).evaluate(
            "el => Math.ceil(el.getBoundingClientRect().top + window.scrollY + el.scrollHeight)"
        )
    )


def shot(page: Page, path: Path, max_height: int = 3000) -> Path:
    """A screenshot of the main area from its top (up to ``max_height`` px), sidebar included.

    The viewport grows to the content for the picture and shrinks back; the main area is
    scrolled to the top first, so a message below a clicked button is in it too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size or VIEWPORT
    main_area(page).evaluate("el => el.scrollTo(0, 0)")
    height = min(max(content_height(page), size["height"]), max_height)
    if height != size["height"]:
        page.set_viewport_size({"width": size["width"], "height": height})
    try:
        page.screenshot(path=str(path), animations="disabled")
    finally:
        if height != size["height"]:
            page.set_viewport_size(size)
    return path


# --- the scenario's steps --------------------------------------------------------------------


def pick_radio(page: Page, group: str, option: str) -> None:
    """Click ``option`` (its visible text, a prefix is enough) in the radio group ``group``."""
    radios = main_area(page).get_by_role("radiogroup", name=group, exact=True)
    radio = radios.get_by_role("radio", name=re.compile("^" + re.escape(option)))
    if not radio.is_checked():
        radios.get_by_text(re.compile("^" + re.escape(option))).click()
    expect(radio).to_be_checked()
    wait_idle(page)


def fill_fast_run(page: Page, recipe: str = "rtn-int8") -> None:
    """On New run: the demo model, a named recipe, and a small evaluation budget."""
    pick_radio(page, "Model", "Bundled demo model")
    pick_radio(page, "Recipe", "Named recipe")
    choose(page, "Named recipe", recipe)
    for label, value in FAST_SETTINGS.items():
        set_number(page, label, value)
    main_area(page).get_by_text("Latency measurement", exact=True).click()
    for label, value in FAST_LATENCY.items():
        set_number(page, label, value)


def choose(page: Page, label: str, option: str) -> None:
    """Pick ``option`` in the select box labelled ``label``; typing filters the list first,
    because a long list renders only the options in view."""
    box = main_area(page).get_by_role("combobox", name=label, exact=True)
    if box.input_value() == option:
        return
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option)
    wait_idle(page)


QUEUED = re.compile(r"Queued job #(\d+)")


def queue_run(page: Page) -> int:
    """Click "Queue run"; returns the new job's id from the success message. A message left
    from an earlier click does not count; a "Not queued" error fails at once."""
    main = main_area(page)
    fresh = main.get_by_text(QUEUED)
    for old in set(QUEUED.findall(" ".join(fresh.all_inner_texts()))):
        fresh = fresh.filter(has_not_text=re.compile(rf"#{old}\b"))
    refused = main.get_by_test_id("stAlertContentError").filter(has_text="Not queued")
    page.get_by_role("button", name="Queue run").click()
    expect(fresh.or_(refused).first).to_be_visible(timeout=PAGE_LOAD_MS)
    if refused.count():
        raise AssertionError(refused.first.inner_text())
    m = QUEUED.search(fresh.first.inner_text())
    assert m is not None
    return int(m.group(1))


def _in_history(main: Locator, job_id: int) -> bool:
    """Whether the Runs page's history table (its last grid: the workers table comes
    first) has a row for ``job_id`` (in its first or, after the selection column, second
    column)."""
    grid = main.get_by_test_id("stDataFrame")
    if grid.count() == 0:
        return False
    # column 0 is the row-selection checkbox where rows can be selected, the job id next
    cells = grid.last.locator("[data-testid^='glide-cell-0-'], [data-testid^='glide-cell-1-']")
    return str(job_id) in (t.strip() for t in cells.all_text_contents())


def wait_run_finished(
    page: Page,
    job_id: int,
    timeout_ms: float = RUN_FINISH_MS,
    on_running: Callable[[], object] | None = None,
) -> None:
    """On Runs: wait until the job has left the active list and its row is in the history
    (the two parts refresh separately, every 2 and 5 s). A failed job's error is on the
    page: raise it at once rather than at the timeout. ``on_running`` is called once if
    the job is seen running (to take a screenshot, say)."""
    main = main_area(page)
    active_card = main.get_by_text(re.compile(rf"#{job_id}\b.*—\s*(queued|running)"))
    running = main.get_by_text(re.compile(rf"#{job_id}\b.*—\s*running"))
    progress = main.get_by_test_id("stProgress")
    failed = main.get_by_text(re.compile(rf"Job #{job_id} \(.*\) failed:"))
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        if failed.count():
            raise AssertionError(failed.first.inner_text())
        if on_running is not None and running.count() and progress.count():
            on_running()
            on_running = None
        if active_card.count() == 0 and _in_history(main, job_id):
            return
        page.wait_for_timeout(250)  # polling interval of the condition above
    raise TimeoutError(f"job #{job_id} did not finish within {timeout_ms / 1000:.0f} s")


def _numbers(v: Any) -> list[Any]:
    """Plotly sends numeric arrays base64-encoded ({"dtype", "bdata"}); decode them."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v or [])


def plotly_traces(chart: Locator) -> list[dict[str, Any]]:
    """The traces the rendered chart holds (the graph div's ``data``), arrays as lists."""
    traces = chart.locator(".js-plotly-plot").first.evaluate(
        "gd => JSON.parse(JSON.stringify(gd.data))"
    )
    for t in traces:
        t["x"], t["y"] = _numbers(t.get("x")), _numbers(t.get("y"))
    return traces


def plotly_layout(chart: Locator) -> dict[str, Any]:
    return chart.locator(".js-plotly-plot").first.evaluate(
        "gd => JSON.parse(JSON.stringify(gd.layout))"
    )


def charts(page: Page) -> Locator:
    return main_area(page).get_by_test_id("stPlotlyChart")


def hover_point(page: Page, chart: Locator, trace_name: str, point: int = 0) -> str:
    """Hover marker ``point`` (in data order) of the trace ``trace_name``; returns the
    hover label's text."""
    names = [t["name"] for t in plotly_traces(chart)]
    index = names.index(trace_name)
    marker = chart.locator(".scatterlayer .trace").nth(index).locator("path.point").nth(point)
    marker.hover(force=True)
    label = chart.locator(".hoverlayer .hovertext")
    expect(label.first).to_be_visible()
    return label.first.text_content() or ""


def submit_json_recipe(page: Page, recipe: list[dict[str, Any]]) -> None:
    """On New run: type a recipe into the JSON text area and click "Queue run"."""
    pick_radio(page, "Recipe", "JSON")
    area = main_area(page).get_by_label(re.compile(r"^Recipe as JSON"))
    area.fill(json.dumps(recipe))
    area.press("Control+Enter")  # text areas commit on Ctrl+Enter or blur
    wait_idle(page)
    page.get_by_role("button", name="Queue run").click()


def grid_rows(grid: Locator) -> list[list[str]]:
    """The rendered rows of a Streamlit data grid, from the cells it mirrors into the DOM
    for accessibility (``glide-cell-<column>-<row>``); the canvas itself has no text."""
    expect(grid.locator("[data-testid^='glide-cell-']").first).to_be_attached()
    cells = grid.locator("[data-testid^='glide-cell-']").evaluate_all(
        "cs => cs.map(c => [c.dataset.testid, c.textContent])"
    )
    rows: dict[int, dict[int, str]] = {}
    for testid, text in cells:
        col, row = (int(n) for n in testid.rsplit("-", 2)[-2:])
        rows.setdefault(row, {})[col] = (text or "").strip()
    return [[r[c] for c in sorted(r)] for _, r in sorted(rows.items())]
