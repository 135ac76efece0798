"""Generations side by side in Chromium: prompts typed on New run are continued by the
baseline and the run in the job, and the Run page shows both with the first differing
token marked (issue 16)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from db import queue
from runs import catalogue as cat

pytestmark = pytest.mark.browser

PROMPTS = ["def parse_args(argv):\n", "class Counter:\n    def __init__(self):\n"]


def test_generations_side_by_side_with_the_first_difference_marked(
    flow: ModuleType, app: Any, app_db: Any, page: Any, shots: Any
) -> None:
    expect = flow.expect
    main = flow.main_area(page)
    flow.open_app(page, app.url)
    flow.go_to(page, "New run")
    flow.fill_fast_run(page, "magnitude-50")
    main.get_by_text("Generations: prompts to continue (optional)", exact=True).click()
    box = main.get_by_role("textbox", name="Prompts, separated by a line holding only ---")
    box.fill(PROMPTS[0] + "---\n" + PROMPTS[1])
    box.press("Control+Enter")  # commit the text area before queueing
    flow.wait_idle(page)
    shots("new-run-prompts")
    job_id = flow.queue_run(page)
    job = queue.get_job(app_db, job_id)
    assert job is not None
    assert [p.rstrip("\n") for p in job.spec["prompts"]] == [p.rstrip("\n") for p in PROMPTS]

    flow.go_to(page, "Runs")
    flow.wait_run_finished(page, job_id)
    job = queue.get_job(app_db, job_id)
    assert job.status == "succeeded", job.error
    rows = job.result[cat.GENERATIONS.key]
    assert [r["prompt"] for r in rows] == job.spec["prompts"]
    differing = [r for r in rows if r["first_diff"] is not None]
    assert differing, "50% magnitude pruning left every continuation unchanged"

    page.goto(f"{app.url}/run?run={job_id}")
    flow.expect_title(page, "Run")
    expect(main.get_by_role("heading", name="Generations")).to_be_visible()
    blocks = main.locator(".cl-gen")
    expect(blocks).to_have_count(len(rows))
    shots("run-generations")
    for block, row in zip(blocks.all(), rows, strict=True):
        cols = block.locator("pre")
        expect(cols).to_have_count(2)
        base, run = cols.nth(0).inner_text(), cols.nth(1).inner_text()
        assert base.startswith(row["prompt"].rstrip()) and run.startswith(row["prompt"].rstrip())
        marks = block.locator("mark.cl-first-diff")
        if row["first_diff"] is None:
            expect(marks).to_have_count(0)
            assert base == run
            continue
        expect(marks).to_have_count(2)  # the same position, on both sides
        k = row["first_diff"]
        before = "".join(row["run"]["pieces"][:k])
        assert run.startswith(row["prompt"].rstrip()) and before.strip() in run
        assert base != run
