"""Task scores and generations in the pages, headless (AppTest): New run queues the task
preset and the typed prompts; the Run page shows the scores beside the baseline's and the
generations side by side; the Leaderboard has a column per task metric."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.generate import Continuation
from core.recipe import NAMED_RECIPES
from core.tasks import TaskScore
from db import queue
from runs import catalogue as cat
from runs.generations import pairs
from ui.shell import LEADERBOARD, NEW_RUN, RUN
from ui.submit import submit_run

APP = str(Path(__file__).resolve().parent.parent / "app.py")
WORKER = "fixture-worker"


def _app(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _finished(sf) -> int:
    job_id = submit_run(
        sf, "tiny-random", NAMED_RECIPES["rtn-int8"], "rtn-int8", "stdlib-code", "stdlib-heldout",
        None, None, tasks=["stdlib_body"], task_limit=10,
    )  # fmt: skip
    queue.claim(sf, WORKER, job_id=job_id)
    score = TaskScore("stdlib_body", "acc", 0.3, 0.15, 10)
    base = TaskScore("stdlib_body", "acc", 0.4, 0.16, 10)
    gens = pairs(
        [Continuation("def f(x):\n", [1, 2, 3], ["    ", "return", " x"], "    return x")],
        [Continuation("def f(x):\n", [1, 2, 4], ["    ", "return", " y"], "    return y")],
    )
    result = {
        cat.PERPLEXITY.key: 12.0,
        cat.WEIGHT_BYTES.key: 1_000_000,
        cat.TASK_SCORES.key: [score.to_dict()],
        cat.BASELINE_TASK_SCORES.key: [base.to_dict()],
        cat.GENERATIONS.key: gens,
    }
    fp = {"model": "tiny-random", "revision": "seed:0", "device": "cpu"}
    assert queue.complete(sf, job_id, WORKER, result, [], fp)
    return job_id


def test_new_run_queues_a_task_preset_and_typed_prompts(sf, db_url) -> None:
    at = _app(NEW_RUN)
    at.radio(key="model_kind").set_value("tiny-random").run()
    at.selectbox(key="task_preset").set_value("stdlib function bodies (local, demo model)")
    at.number_input(key="task_limit").set_value(20)
    at.text_area(key="gen_prompts").set_value("def main():\n---\nclass A:\n").run()
    next(b for b in at.button if b.label == "Queue run").click().run()
    assert not at.error, [e.value for e in at.error]
    (job,) = queue.list_jobs(sf)
    assert job.spec["tasks"] == ["stdlib_body"] and job.spec["task_limit"] == 20
    assert job.spec["prompts"] == ["def main():\n", "class A:\n"]


def test_run_page_shows_scores_and_generations(sf, db_url) -> None:
    job_id = _finished(sf)
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["run"] = str(job_id)
    at.run()
    at.switch_page(RUN).run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Task accuracy (lm-evaluation-harness)" in [s.value for s in at.subheader]
    assert "Generations" in [s.value for s in at.subheader]
    frames = [d.value for d in at.dataframe]
    tasks = next(f for f in frames if "this run" in f.columns)
    row = tasks.iloc[0]
    assert (row["task"], row["metric"], row["baseline"], row["this run"]) == (
        "stdlib_body",
        "acc",
        "0.4000 ± 0.1600",
        "0.3000 ± 0.1500",
    )
    assert abs(row["change"] + 0.1) < 1e-9 and row["examples"] == 10
    assert any("0 of 1 identical" in c.value for c in at.caption)


def test_leaderboard_has_a_column_per_task_metric(sf, db_url) -> None:
    _finished(sf)
    at = _app(LEADERBOARD)
    table = at.dataframe[0].value
    assert list(table[cat.task_column("stdlib_body", "acc")]) == [0.3]
