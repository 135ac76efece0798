"""The Run page's latency section: how the speed was measured (rounds, threads, device,
load), each workload's verdict, and the baseline / compressed medians with error bars."""

from __future__ import annotations

from typing import Any

import streamlit as st

from runs import catalogue as cat
from ui.figures_runs import latency_report_figure


def conditions(result: dict[str, Any]) -> str:
    """One sentence on how the latency was measured ("" for runs that did not record it)."""
    rounds = result.get(cat.LATENCY_REPEATS.key)
    if rounds is None:
        return ""
    how = (
        "timed in alternation with the uncompressed model in this job"
        if result.get(cat.LATENCY_INTERLEAVED.key)
        else "timed apart from the uncompressed model"
    )
    load = [result.get(m.key) for m in (cat.LOAD_BEFORE, cat.LOAD_AFTER)]
    load_text = (
        f"; load average {load[0]:.2f} before, {load[1]:.2f} after" if None not in load else ""
    )
    return (
        f"Latency {how}: {rounds} rounds after a warm-up, "
        f"{result.get(cat.LATENCY_THREADS.key)} threads on "
        f"{result.get(cat.LATENCY_DEVICE.key) or 'this device'}{load_text}. "
        "Error bars: the middle half (first to third quartile) of the rounds."
        + load_factor_text(result.get(cat.LATENCY_REPORT.key) or [])
    )


def load_factor_text(report: list[dict[str, Any]]) -> str:
    """How much the load could move a round (runs/latency.load_factor), where above 1."""
    factor = max((float(m.get("load") or 1.0) for m in report), default=1.0)
    if factor <= 1.0:
        return ""
    return (
        f" The machine's load could slow a round by up to {factor:.2f}x: a speed-up within "
        "that is not claimed."
    )


def verdicts(result: dict[str, Any]) -> list[str]:
    text = result.get(cat.LATENCY_VERDICT.key) or ""
    return [v.strip() for v in text.split(";") if v.strip()]


def latency_section(result: dict[str, Any], key: str) -> None:
    """Shown under the Run page's metrics when the run stored a latency report."""
    report = result.get(cat.LATENCY_REPORT.key)
    if not report:
        return
    st.markdown("**Latency**")
    st.caption(conditions(result))
    for line in verdicts(result):
        st.markdown(f"- {line}")
    st.plotly_chart(latency_report_figure(report), key=f"latency_{key}")
