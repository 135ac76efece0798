"""In a browser, COMPRESSLAB_AUTH=password: a login; a second user who cannot cancel the
first user's run (the button is disabled and says why); the first user who can.

The app runs without a worker, so the job stays queued until someone cancels it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from db import queue, users
from db.session import dispose_engine, session_factory

PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}


@pytest.fixture(scope="module")
def password_app(
    flow: ModuleType, artifacts: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The app with logins, two users made with db.users before it starts."""
    workdir = tmp_path_factory.mktemp("auth_app")
    url = f"sqlite:///{workdir / 'compresslab.db'}"
    sf = session_factory(url)
    for name, password in PASSWORDS.items():
        users.add_user(sf, name, password)
    old = os.environ.get("COMPRESSLAB_AUTH")
    os.environ["COMPRESSLAB_AUTH"] = "password"  # app_env copies the environment
    try:
        with flow.running_app(workdir, artifacts / "logs-auth", autoworker=False) as app:
            yield app, sf
    finally:
        if old is None:
            os.environ.pop("COMPRESSLAB_AUTH", None)
        else:
            os.environ["COMPRESSLAB_AUTH"] = old
        dispose_engine(url)


def _sign_in(flow: ModuleType, page: Any, url: str, name: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    flow.expect_title(page, "CompressLab")
    expect(page.get_by_test_id("stSidebarNav")).to_have_count(0)  # nothing before login
    page.get_by_role("textbox", name="User name").fill(name)
    page.get_by_role("textbox", name="Password", exact=True).fill(PASSWORDS[name])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("stSidebarNav")).to_be_visible()
    expect(page.get_by_test_id("stSidebar").get_by_text(name, exact=True)).to_be_visible()


def _cancel_button(page: Any, job_id: int) -> Any:
    return page.locator(f".st-key-cancel{job_id}").get_by_role("button")


def test_login_and_only_the_owner_cancels(
    flow: ModuleType, password_app: Any, browser: Any, shots: Any, page: Any
) -> None:
    from playwright.sync_api import expect

    app, sf = password_app
    job_id = queue.submit(sf, model="demo", recipe_label="rtn-int8", spec_json="{}", owner="alice")

    page.goto(app.url)
    flow.expect_title(page, "CompressLab")
    page.get_by_role("textbox", name="User name").fill("bob")
    page.get_by_role("textbox", name="Password", exact=True).fill("wrong-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Wrong user name or password.")).to_be_visible()
    shots("wrong password")

    _sign_in(flow, page, app.url, "bob")
    flow.go_to(page, "Runs")
    expect(page.get_by_text("demo · rtn-int8 · by alice")).to_be_visible()
    expect(_cancel_button(page, job_id)).to_be_disabled()
    shots("bob cannot cancel alice's run")
    assert queue.get_job(sf, job_id).status == "queued"

    alice = flow.new_page(browser)
    try:
        _sign_in(flow, alice, app.url, "alice")
        flow.go_to(alice, "Runs")
        expect(_cancel_button(alice, job_id)).to_be_enabled()
        _cancel_button(alice, job_id).click()
        expect(alice.get_by_text(f"Job #{job_id}: cancelled")).to_be_visible()
    finally:
        alice.context.close()
    assert queue.get_job(sf, job_id).status == "cancelled"
    # Bob's Runs page refreshes its active jobs every 2 s (a reload would sign him out:
    # the session token lives in the Streamlit session).
    expect(page.get_by_text("Nothing queued or running.")).to_be_visible()
    shots("bob sees it cancelled")
