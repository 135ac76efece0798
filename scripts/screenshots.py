"""Screenshots of the main pages for the README, taken by driving the real app in headless
Chromium with the same steps as the browser tests (tests/browser/flow.py).

    python scripts/screenshots.py [--out docs/screenshots] [--recipes fp16,rtn-int8,...]

It starts `streamlit run app.py` against a temporary database, queues one run of the
demo model per recipe from the New run page, lets the auto-started local worker run them,
and saves home.png, new_run.png, runs.png, compare.png, weights.png, leaderboard.png,
outliers.png and concepts.png. Needs Playwright and Chromium at /usr/bin/chromium (see
.ci/run); takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402

from tests.browser import flow  # noqa: E402

log = logging.getLogger("screenshots")

# The last recipe's run is the one the Weights page shows (the newest run).
DEFAULT_RECIPES = ("fp16", "rtn-int8", "wanda-2:4", "int4-weight-only")
# Closer to the app's defaults than the tests' budget: the README's numbers should mean
# something, and nobody waits on this script in CI.
README_SETTINGS: dict[str, int] = {
    "Context length (tokens)": 256,
    "Evaluation tokens": 4096,
    "Calibration samples": 16,
    "Calibration length (tokens)": 128,
}
MAX_BYTES = 300_000  # keep the repository small


def save_png(page: Page, path: Path, max_height: int = 1700) -> Path:
    """A screenshot; reduced to a 256-colour palette only if it is over MAX_BYTES."""
    raw = flow.shot(page, path, max_height=max_height)
    if raw.stat().st_size > MAX_BYTES:
        buf = io.BytesIO()
        img = Image.open(raw).convert("RGB")
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        raw.write_bytes(buf.getvalue())
    log.info("saved %s (%d kB)", path, raw.stat().st_size // 1000)
    return raw


def queue_runs(page: Page, recipes: list[str]) -> list[int]:
    ids = []
    for recipe in recipes:
        flow.go_to(page, "New run")
        flow.pick_radio(page, "Model", "Bundled demo model")
        flow.pick_radio(page, "Recipe", "Named recipe")
        flow.choose(page, "Named recipe", recipe)
        for label, value in README_SETTINGS.items():
            flow.set_number(page, label, value)
        ids.append(flow.queue_run(page))
        log.info("queued %s as job #%d", recipe, ids[-1])
    return ids


def new_run_page(page: Page, out: Path) -> None:
    """New run with a recipe built from the generated widgets and its method card."""
    flow.go_to(page, "New run")
    flow.pick_radio(page, "Recipe", "Build steps")
    flow.expect(flow.main_area(page).get_by_text("Method card: rtn")).to_be_visible()
    page.mouse.move(0, 0)
    save_png(page, out / "new_run.png", max_height=1500)


def take(out: Path, recipes: list[str], workdir: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with flow.running_app(workdir, workdir / "logs") as app, sync_playwright() as pw:
        browser = flow.launch_browser(pw)
        page = flow.new_page(browser)
        flow.open_app(page, app.url)
        ids = queue_runs(page, recipes)
        flow.go_to(page, "Runs")
        taken = {"runs": False}

        def runs_shot() -> None:
            """The last job's progress bar under way, next to the finished ones."""
            if taken["runs"]:
                return
            taken["runs"] = True
            bar = flow.main_area(page).get_by_test_id("stProgress")
            try:  # a moment past 0%, and no rerun fading the elements
                flow.expect(bar.get_by_text(re.compile(r"^[1-9]\d*% "))).to_be_visible()
                flow.wait_idle(page)
            except AssertionError:
                log.info("the job finished before its progress showed; a shot of the history")
            save_png(page, out / "runs.png", max_height=1100)

        for job_id in ids:
            flow.wait_run_finished(
                page, job_id, on_running=runs_shot if job_id == ids[-1] else None
            )
        runs_shot()

        flow.go_to(page, "Home", heading="CompressLab")
        save_png(page, out / "home.png", max_height=1100)
        new_run_page(page, out)
        flow.go_to(page, "Compare")
        charts = flow.charts(page)
        flow.expect(charts).to_have_count(2)
        flow.expect(charts.first.locator(".scatterlayer path.point").first).to_be_visible()
        page.mouse.move(0, 0)
        save_png(page, out / "compare.png", max_height=1300)
        flow.go_to(page, "Weights")
        hist = flow.charts(page).first
        flow.expect(hist.locator(".barlayer .point").first).to_be_attached()
        page.mouse.move(0, 0)
        save_png(page, out / "weights.png", max_height=1500)
        for title, heading, name in (
            ("Leaderboard", "Leaderboard", "leaderboard.png"),
            ("Outliers", "Outlier explorer", "outliers.png"),
            ("Concepts", "Concepts", "concepts.png"),
        ):
            flow.go_to(page, title, heading=heading)
            flow.wait_idle(page)
            page.mouse.move(0, 0)
            save_png(page, out / name, max_height=1500)
        browser.close()
    return sorted(out.glob("*.png"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="named recipes")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compresslab-shots-") as tmp:
        paths = take(args.out, [r for r in args.recipes.split(",") if r], Path(tmp))
    print(f"{len(paths)} screenshots in {args.out} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
