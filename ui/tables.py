"""Sortable tables of runs and jobs with units in their column headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from runs import catalogue as cat

_cc = st.column_config


def metric_column(m: cat.Metric) -> Any:
    """A table column of a catalogued metric: its header, format and definition."""
    if m.kind == "flag":
        return _cc.CheckboxColumn(m.header, help=m.definition)
    return _cc.NumberColumn(m.header, format=m.fmt, help=m.definition)


RUN_COLUMNS: dict[str, Any] = {
    "id": _cc.NumberColumn("run", format="%d"),
    "model": _cc.TextColumn("model"),
    "recipe": _cc.TextColumn("recipe"),
    "method": _cc.TextColumn("method"),
    **{m.col: metric_column(m) for m in cat.RUN_TABLE},
    **{q.col: metric_column(q) for pair in cat.SPREAD.values() for q in pair},
    "eval": _cc.TextColumn("evaluated on"),
    "finished": _cc.DatetimeColumn("finished", format="YYYY-MM-DD HH:mm"),
}


def runs_table(
    df: pd.DataFrame,
    *,
    key: str,
    on_select: Callable[[], None] | None = None,
) -> Any:
    """A sortable table of runs; with ``on_select`` one row can be selected."""
    kwargs: dict[str, Any] = {}
    if on_select is not None:
        kwargs = {"on_select": on_select, "selection_mode": "single-row"}
    return st.dataframe(
        df,
        column_config=RUN_COLUMNS,
        hide_index=True,
        width="stretch",
        key=key,
        **kwargs,
    )


JOB_COLUMNS: dict[str, Any] = {
    "id": _cc.NumberColumn("job", format="%d"),
    "progress": _cc.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
    "submitted": _cc.DatetimeColumn("submitted", format="YYYY-MM-DD HH:mm:ss"),
    cat.PERPLEXITY.col: metric_column(cat.PERPLEXITY),
    "error": _cc.TextColumn("error", width="large"),
}


def jobs_table(df: pd.DataFrame, *, key: str) -> Any:
    return st.dataframe(df, column_config=JOB_COLUMNS, hide_index=True, width="stretch", key=key)


LEADERBOARD_COLUMNS: dict[str, Any] = {
    **RUN_COLUMNS,
    "pareto": _cc.CheckboxColumn(
        "Pareto", help="on the front of its model and evaluation: memory, latency, perplexity"
    ),
    "bits": _cc.TextColumn("bits", help=cat.NOMINAL_BITS.definition + "; a/b: mixed"),
    "sparsity": _cc.NumberColumn("sparsity", format="%.2f"),
    "calib": _cc.TextColumn("calibration set"),
    "origin": _cc.TextColumn("origin", help="who measured it: local, or an imported bundle's"),
    "fingerprint": _cc.TextColumn("fingerprint", help="first 12 characters of its hash"),
    "open": _cc.LinkColumn("open", display_text="open", help="the run's own page"),
    "name": _cc.TextColumn("name", width="medium", help="its name, else its recipe label"),
    "details": _cc.TextColumn(
        "recipe in full", width="large", help="bits, group size, sparsity of every step"
    ),
    "tags": _cc.TextColumn("tags"),
    "owner": _cc.TextColumn("owner"),
}


def leaderboard_table(df: pd.DataFrame, *, key: str) -> Any:
    """Sortable, several rows selectable; returns the selection event."""
    return st.dataframe(
        df,
        column_config=LEADERBOARD_COLUMNS,
        hide_index=True,
        width="stretch",
        key=key,
        on_select="rerun",
        selection_mode="multi-row",
    )


HISTORY_COLUMNS: dict[str, Any] = {
    **JOB_COLUMNS,
    "open": _cc.LinkColumn("open", display_text="open", help="the run's own page"),
    "name": _cc.TextColumn("name", width="medium", help="its name, else its recipe label"),
    "recipe": _cc.TextColumn("recipe", width="medium"),
    "details": _cc.TextColumn(
        "recipe in full", width="large", help="bits, group size, sparsity of every step"
    ),
    "tags": _cc.TextColumn("tags"),
    "archived": _cc.CheckboxColumn("archived"),
}


def history_table(df: pd.DataFrame, *, key: str, on_select: Callable[[], None]) -> Any:
    """The Runs history: one row selectable (it opens the run's panel below)."""
    return st.dataframe(
        df,
        column_config=HISTORY_COLUMNS,
        hide_index=True,
        width="stretch",
        key=key,
        on_select=on_select,
        selection_mode="single-row",
    )
