"""A job's task scores (core.tasks, lm-eval): the uncompressed model's before the recipe
runs, cached on disk like its log-probs, and the compressed model's after it.

The stages hand the pipeline result fields through ``job.outputs`` (catalogue keys).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from core.errors import Cancelled
from core.paths import temp_path
from core.tasks import (
    TaskScore,
    data_hash,
    evaluate_tasks,
    lm_eval_version,
    require_hub,
)
from runs import catalogue as cat
from runs.progress import Progress

log = logging.getLogger(__name__)


def check_before_loading(job: Any) -> None:
    """A hub task while the hub cannot be reached fails here, before the model loads."""
    require_hub(job.spec.tasks)


def cache_path(cache_dir: Path, loaded: Any, tasks: list[str], limit: int | None) -> Path:
    """Where the uncompressed model's scores on these tasks are kept."""
    raw = json.dumps(
        [
            loaded.model_id,
            loaded.revision,
            sorted(tasks),
            limit,
            data_hash(tasks),
            lm_eval_version(),
        ]
    )
    return cache_dir / f"tasks-{hashlib.sha256(raw.encode()).hexdigest()[:20]}.json"


def _read(path: Path) -> list[dict[str, Any]] | None:
    try:
        rows = json.loads(path.read_text())
        return [TaskScore.from_dict(r).to_dict() for r in rows]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, path)  # readers see the whole file or none


def score(job: Any, report: Progress, what: str) -> list[dict[str, Any]]:
    """The model as it is now in ``job.loaded``, scored on the job's tasks."""
    if job.should_cancel():
        raise Cancelled("cancelled before scoring the tasks")
    scores = evaluate_tasks(
        job.loaded.model,
        job.loaded.tokenizer,
        job.spec.tasks,
        job.spec.task_limit,
        on_progress=lambda f, m: report(f, f"{what}: {m}"),
    )
    return [s.to_dict() for s in scores]


def baseline_scores(job: Any, report: Progress) -> None:
    """The uncompressed model's scores: from the cache, else measured and cached."""
    if not job.spec.tasks:
        return
    path = cache_path(job.cache_dir, job.loaded, job.spec.tasks, job.spec.task_limit)
    rows = _read(path) if path.exists() else None
    if rows is None:
        rows = score(job, report, "baseline tasks")
        _write(path, rows)
    job.outputs[cat.BASELINE_TASK_SCORES.key] = rows


def run_scores(job: Any, report: Progress) -> None:
    """The compressed model's scores (the baseline's own when the recipe has no steps)."""
    if not job.spec.tasks:
        return
    if not job.compresses:
        job.outputs[cat.TASK_SCORES.key] = job.outputs[cat.BASELINE_TASK_SCORES.key]
        return
    job.outputs[cat.TASK_SCORES.key] = score(job, report, "tasks")


def score_columns(result: dict[str, Any]) -> dict[str, float]:
    """A result's task scores as runs-frame cells: {"task:<task>:<metric>": value}."""
    out = {}
    for row in result.get(cat.TASK_SCORES.key) or []:
        try:
            s = TaskScore.from_dict(row)
        except (KeyError, TypeError, ValueError):
            continue
        out[cat.task_column(s.task, s.metric)] = s.value
    return out


def rows_problem(rows: Any) -> tuple[str, str] | None:
    """(where, what it must be) for stored task scores that break their shape (an imported
    bundle), None when they are fine."""
    if not isinstance(rows, list) or len(rows) > 1000:
        return "", "a list of at most 1000 task scores"
    for i, row in enumerate(rows):
        try:
            s = TaskScore.from_dict(row)
        except (KeyError, TypeError, ValueError, AttributeError):
            return f"[{i}]", "an object {task, metric, value, stderr, n}"
        if len(s.task) > 200 or len(s.metric) > 200 or s.n < 0:
            return f"[{i}]", "a task score with names of at most 200 characters and n >= 0"
        if s.stderr is not None and s.stderr < 0:
            return f"[{i}].stderr", "a number >= 0 or null"
    return None
