"""Fixtures of the browser tests: the app started as a subprocess on a free port against a
temporary database (stopped at the end with the worker it starts), Debian's Chromium, a
fresh page per test, and numbered screenshots of each step in artifacts/browser/.

Locally the tests are skipped when Playwright or Chromium is missing; with CI=true they
fail instead, because CI installs both (.ci/run).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "browser"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI must run the browser tests: see .ci/run)", pytrace=False)
    pytest.skip(what)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    """Keep each phase's report on the item, so the page fixture knows a test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # only this run's pictures and logs
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def flow() -> ModuleType:
    """The shared steps module (imports Playwright, so only once it is known to exist)."""
    if importlib.util.find_spec("playwright") is None:
        _missing("Playwright is not installed: pip install -r requirements-dev.txt")
    from . import flow as module

    if not Path(module.CHROMIUM).is_file():
        _missing(f"no Chromium at {module.CHROMIUM}: apt-get install chromium")
    return module


@pytest.fixture(scope="session")
def app(
    flow: ModuleType, artifacts: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """`streamlit run app.py` on a free port, its own database and data folder, offline.

    Torn down with every process it started, the auto-started worker included."""
    with flow.running_app(tmp_path_factory.mktemp("app"), artifacts / "logs") as running:
        yield running


@pytest.fixture(scope="session")
def browser(flow: ModuleType) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = flow.launch_browser(pw)
        yield chromium
        chromium.close()


@pytest.fixture
def app_db(app: Any) -> Any:
    """A session factory on the app's database, to check what the pages did."""
    from db.session import session_factory

    return session_factory(app.database_url)


@pytest.fixture
def page(
    flow: ModuleType, browser: Any, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """A new browser context (a new Streamlit session) per test; on failure its last state
    is saved as failure.png next to the test's screenshots."""
    pg = flow.new_page(browser)
    yield pg
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        try:
            flow.shot(pg, artifacts / _slug(request.node.name) / "failure.png")
        except Exception as e:  # the page may be gone; the test's own error matters more
            print(f"no failure screenshot: {e}")
    pg.context.close()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


@pytest.fixture
def shots(
    flow: ModuleType, page: Any, artifacts: Path, request: pytest.FixtureRequest
) -> Callable[[str], Path]:
    """``shots("step")`` saves artifacts/browser/<test>/NN-step.png and notes the seconds
    since the test started in steps.log there (where a slow CI run spent its time)."""
    folder = artifacts / _slug(request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    t0, count = time.monotonic(), 0

    def take(step: str) -> Path:
        nonlocal count
        count += 1
        path = flow.shot(page, folder / f"{count:02d}-{_slug(step)}.png")
        with (folder / "steps.log").open("a") as fh:
            fh.write(f"{time.monotonic() - t0:7.1f} s  {path.name}\n")
        return path

    return take
