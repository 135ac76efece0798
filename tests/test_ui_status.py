"""Fresh status (issue 18, item 7): one sidebar line on workers (a worker this app just
started is "starting", never "no worker alive" beside "started a local worker"), a
sweep picker label that cannot go stale, and how long a sensitivity sweep will take."""

from __future__ import annotations

from types import SimpleNamespace

from db.models import FAILED, SUCCEEDED
from runs import catalogue as cat
from ui.sensitivity_view import (
    forward_seconds_per_job,
    past_job_seconds,
    sweep_duration_text,
    sweep_title,
)
from ui.shell import worker_headline
from ui.worker import LocalWorker


def test_a_just_started_local_worker_reads_as_starting_not_as_none_alive() -> None:
    started = LocalWorker("started", "started a local worker (pid 42)", 42)
    line = worker_headline(0, 0, started, pid_running=True)
    assert "starting" in line and "no worker alive" not in line
    assert "no worker alive" in worker_headline(0, 0, started, pid_running=False)  # it died
    assert "2 workers alive** (1 busy)" in worker_headline(2, 1, started, pid_running=True)
    off = LocalWorker("disabled", "auto-start off")
    assert "no worker alive" in worker_headline(0, 0, off, pid_running=False)


def _job(status: str, started: float, finished: float, model: str = "demo", recipe=True):  # noqa: ANN001, ANN202
    spec = {"recipe": [{"method": "rtn", "bits": 4}] if recipe else []}
    return SimpleNamespace(
        model=model,
        status=status,
        started_at=started,
        finished_at=finished,
        spec=spec,
        created_at=1.7e9,
        result={},
    )


def test_the_sweep_picker_label_has_no_count_that_could_go_stale() -> None:
    jobs = [_job(SUCCEEDED, 0, 1), _job(FAILED, 0, 1)]
    assert "done" not in sweep_title(jobs) and "2 jobs" in sweep_title(jobs)


def test_a_sweep_duration_from_past_jobs_or_the_forward_time() -> None:
    jobs = [
        _job(SUCCEEDED, 0, 90),
        _job(SUCCEEDED, 0, 100, model="other"),
        _job(FAILED, 0, 5),
        _job(SUCCEEDED, 0, 10, recipe=False),  # a baseline run says little of a recipe's
    ]
    assert past_job_seconds(jobs, "demo") == [90.0]
    text = sweep_duration_text(4, 90.0, "basis", workers=2)
    assert text.startswith("About 3 min 00 s for 4 jobs") and "share one baseline" in text
    assert "not known yet" in sweep_duration_text(4, None, "", workers=1)
    result = {cat.BASELINE_PREFILL_MS.key: 128.0, cat.BASELINE_DECODE_TOK_S.key: 100.0}
    ev = {"prompt_len": 128, "eval_tokens": 1000, "repeats": 5, "decode_tokens": 10}
    cs = {"n_samples": 2, "seq_len": 100}
    # 1 ms a token: evaluation 1 s, calibration 0.4 s, latency 6 rounds x 2 x (0.416 + 0.2) s
    got = forward_seconds_per_job(result, ev, cs)
    assert abs(got - (1.0 + 0.4 + 6 * 2 * (3.25 * 128 / 1000 + 0.2))) < 1e-9
    assert forward_seconds_per_job({}, ev, cs) == 0.0


def _sidebar_text(at) -> str:  # noqa: ANN001
    return "\n".join(str(m.value) for m in at.sidebar.markdown)


def test_the_sidebar_counts_a_run_as_soon_as_it_is_queued(sf, db_url) -> None:  # noqa: ANN001
    """The sidebar is drawn before the page; queueing reruns the app, so the counts on
    the page that shows "Queued job #N" already include it (no worker runs here)."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from db import queue
    from ui.shell import NEW_RUN

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"))
    at.run(timeout=90)
    at.switch_page(NEW_RUN).run(timeout=90)
    at.radio(key="model_kind").set_value("tiny-random").run(timeout=90)
    assert "**0** queued" in _sidebar_text(at)
    next(b for b in at.button if b.label == "Queue run").click().run(timeout=90)
    assert not at.exception and not at.error
    (job,) = queue.list_jobs(sf)
    assert any(f"Queued job #{job.id}" in s.value for s in at.success)
    assert "**1** queued · **0** running" in _sidebar_text(at)


def test_the_sensitivity_page_reruns_whole_when_a_job_of_its_sweep_ends() -> None:
    from ui.sensitivity_view import ended_since_last_look

    state: dict = {}
    assert not ended_since_last_look(state, "a", 0)  # first look
    assert not ended_since_last_look(state, "a", 0)  # nothing new
    assert ended_since_last_look(state, "a", 1)  # a job ended: the kept recipe follows
    assert not ended_since_last_look(state, "a", 1)  # once only
    assert not ended_since_last_look(state, "b", 3)  # another sweep picked: a full run anyway
