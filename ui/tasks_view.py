"""Task accuracy in the pages: presets on New run, the scores of a run (baseline beside
it) on the Run page, task columns on the Leaderboard."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st

from core.tasks import HUB_TASKS, LOCAL_TASKS, PRESETS, TaskScore
from runs import catalogue as cat
from runs.tasks import score_columns


def _rows(result: dict[str, Any], key: str) -> dict[tuple[str, str], TaskScore]:
    out = {}
    for row in result.get(key) or []:
        try:
            s = TaskScore.from_dict(row)
        except (KeyError, TypeError, ValueError):
            continue
        out[(s.task, s.metric)] = s
    return out


def _pm(s: TaskScore | None) -> str:
    if s is None:
        return "-"
    return f"{s.value:.4f}" + (f" ± {s.stderr:.4f}" if s.stderr is not None else "")


def scores_frame(result: dict[str, Any]) -> pd.DataFrame:
    """One row per task and metric: baseline and run (value ± stderr), change, examples."""
    run = _rows(result, cat.TASK_SCORES.key)
    base = _rows(result, cat.BASELINE_TASK_SCORES.key)
    rows = []
    for key in sorted(set(run) | set(base)):
        r, b = run.get(key), base.get(key)
        change = r.value - b.value if r and b else float("nan")
        rows.append(
            {
                "task": key[0],
                "metric": key[1],
                "baseline": _pm(b),
                "this run": _pm(r),
                "change": change,
                "examples": (r or b).n if (r or b) else 0,
            }
        )
    return pd.DataFrame(
        rows, columns=["task", "metric", "baseline", "this run", "change", "examples"]
    )


def task_section(job: Any) -> None:
    """The Run page's task scores (nothing when the run scored no task)."""
    df = scores_frame(job.result or {})
    if df.empty:
        return
    st.subheader("Task accuracy (lm-evaluation-harness)")
    st.dataframe(
        df,
        hide_index=True,
        width="stretch",
        key=f"tasks_{job.id}",
        column_config={"change": st.column_config.NumberColumn("change", format="%+.4f")},
    )
    st.caption(
        "value ± standard error; a change smaller than about twice the standard error is "
        "within noise. " + cat.TASK_SCORES.definition
    )


def with_task_columns(df: pd.DataFrame, jobs: Sequence[Any]) -> tuple[pd.DataFrame, list[str]]:
    """A runs frame (one row per job, in ``jobs`` order) with a column per task metric
    any of the jobs recorded; also returns those columns' names."""
    cells = [score_columns(j.result or {}) for j in jobs]
    cols = sorted({c for row in cells for c in row})
    df = df.copy()
    for col in cols:
        df[col] = [row.get(col, float("nan")) for row in cells]
    return df, cols


def task_picker() -> tuple[list[str], int | None]:
    """New run: a preset of tasks (or a custom list) and the examples per task."""
    with st.expander("Task accuracy (optional, lm-evaluation-harness)"):
        preset = st.selectbox(
            "Tasks",
            [*PRESETS, "custom"],
            key="task_preset",
            help="Scored on the uncompressed model and on the compressed one, in the job. "
            "Local: " + "; ".join(f"{n}: {d}" for n, (_, d) in LOCAL_TASKS.items()) + ". Hub "
            "tasks need the Hugging Face hub (refused at once when offline): "
            + "; ".join(f"{n}: {d}" for n, d in HUB_TASKS.items()),
        )
        if preset == "custom":
            chosen = st.multiselect("Tasks", [*LOCAL_TASKS, *HUB_TASKS], key="task_custom")
        else:
            chosen = list(PRESETS[preset])
        limit = st.number_input(
            "Examples per task (0: all)", 0, 100_000, 0, step=50, key="task_limit"
        )
    return chosen, int(limit) or None


def outputs_picker() -> dict[str, Any]:
    """New run's task presets and generation prompts, as ``submit_run`` keywords."""
    from ui.generations_view import prompt_editor

    tasks, limit = task_picker()
    return {"tasks": tasks, "task_limit": limit, "prompts": prompt_editor()}
