"""Sortable tables of runs and jobs with units in their column headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from core.metrics import DEFINITIONS

_cc = st.column_config


def _num(label: str, fmt: str, key: str | None = None) -> Any:
    return _cc.NumberColumn(label, format=fmt, help=DEFINITIONS.get(key or "", None))


RUN_COLUMNS: dict[str, Any] = {
    "id": _cc.NumberColumn("run", format="%d"),
    "model": _cc.TextColumn("model"),
    "recipe": _cc.TextColumn("recipe"),
    "method": _cc.TextColumn("method"),
    "perplexity": _num("perplexity", "%.3f", "perplexity"),
    "baseline_perplexity": _num("baseline ppl", "%.3f"),
    "bits_per_byte": _num("bits/byte", "%.4f", "bits_per_byte"),
    "kl_to_baseline": _num("KL (nats)", "%.2e", "kl_to_baseline"),
    "top1_agreement": _num("top-1 agree", "%.3f", "top1_agreement"),
    "weight_mb": _num("weights (MB)", "%.3f", "weight_bytes"),
    "bits_per_weight": _num("bits/weight", "%.2f", "bits_per_weight"),
    "compressed_bits_per_weight": _num(
        "bits/weight (compressed)", "%.2f", "compressed_bits_per_weight"
    ),
    "prefill_ms": _num("prefill (ms)", "%.1f", "prefill_ms"),
    "decode_tok_s": _num("decode (tok/s)", "%.1f", "decode_tok_s"),
    "prefill_speedup": _num("prefill speed-up", "%.2fx", "prefill_speedup"),
    "decode_speedup": _num("decode speed-up", "%.2fx", "decode_speedup"),
    "smaller_but_slower": _cc.CheckboxColumn(
        "smaller but slower", help=DEFINITIONS["smaller_but_slower"]
    ),
    "peak_mem_mb": _num("peak mem (MB)", "%.0f", "peak_mem_bytes"),
    "compress_s": _num("compress (s)", "%.1f", "compress_s"),
    "mean_layer_error": _num("layer error", "%.2e", "layer_error"),
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
    "perplexity": _num("perplexity", "%.3f", "perplexity"),
    "error": _cc.TextColumn("error", width="large"),
}


def jobs_table(df: pd.DataFrame, *, key: str) -> Any:
    return st.dataframe(df, column_config=JOB_COLUMNS, hide_index=True, width="stretch", key=key)


LEADERBOARD_COLUMNS: dict[str, Any] = {
    **RUN_COLUMNS,
    "pareto": _cc.CheckboxColumn(
        "Pareto", help="on the front of its model and evaluation: memory, latency, perplexity"
    ),
    "bits": _cc.TextColumn("bits", help="nominal bit width of the weights; a/b: mixed"),
    "sparsity": _num("sparsity", "%.2f"),
    "calib": _cc.TextColumn("calibration set"),
    "origin": _cc.TextColumn("origin", help="who measured it: local, or an imported bundle's"),
    "fingerprint": _cc.TextColumn("fingerprint", help="first 12 characters of its hash"),
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
