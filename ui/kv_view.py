"""KV-cache results on Compare and Run: NLL / KL by position, passkey retrieval, bytes.

Pure frame and figure builders (tested without Streamlit) plus two small sections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from runs import catalogue as cat

BUCKET_ORDER = ("<=256", "<=512", "<=1024", "<=2048", "<=4096")


def kv_runs(jobs: Sequence[Any]) -> list[Any]:
    """The runs that measured a KV cache policy."""
    return [j for j in jobs if j.result.get(cat.KV_BY_POSITION.key)]


def _name(job: Any) -> str:
    return f"#{job.id} {job.recipe_label}"


def position_frame(jobs: Sequence[Any]) -> pd.DataFrame:
    """One row per (run, position bucket): NLL through the run's cache and the plain one,
    KL and top-1 agreement."""
    rows = []
    for job in kv_runs(jobs):
        for r in job.result[cat.KV_BY_POSITION.key]:
            rows.append({"run": _name(job), **r})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        order = {b: i for i, b in enumerate(BUCKET_ORDER)}
        frame = frame.sort_values(["run", "bucket"], key=lambda s: s.map(lambda v: order.get(v, v)))
    return frame


def position_figure(frame: pd.DataFrame, value: str = "kl") -> go.Figure:
    """``value`` (nll / kl / top1) by position bucket, one line per run; with NLL the
    plain cache of each run is drawn dotted."""
    titles = {
        "nll": "NLL (nats/token)",
        "kl": "KL to the plain cache (nats/token)",
        "top1": "top-1 agreement with the plain cache",
    }
    fig = go.Figure()
    for run, part in frame.groupby("run", sort=False):
        fig.add_trace(
            go.Scatter(x=part["bucket"], y=part[value], mode="lines+markers", name=str(run))
        )
        if value == "nll":
            fig.add_trace(
                go.Scatter(
                    x=part["bucket"],
                    y=part["ref_nll"],
                    mode="lines",
                    line={"dash": "dot"},
                    name=f"{run}: plain cache",
                )
            )
    fig.update_layout(
        xaxis_title="predicted position (bucket)",
        yaxis_title=titles[value],
        height=360,
        margin={"t": 30},
    )
    return fig


def passkey_frame(jobs: Sequence[Any]) -> pd.DataFrame:
    rows = []
    for job in jobs:
        for r in job.result.get(cat.KV_PASSKEY.key) or []:
            rows.append(
                {
                    "run": _name(job),
                    "depth": f"{r['depth']:.0%}",
                    "found (this cache)": r["found"],
                    "found (plain cache)": r["plain_found"],
                    "answer NLL": round(r["answer_nll"], 2),
                    "answer NLL (plain)": round(r["plain_answer_nll"], 2),
                }
            )
    return pd.DataFrame(rows)


def summary_frame(jobs: Sequence[Any]) -> pd.DataFrame:
    keys = (
        cat.KV_POLICY,
        cat.KV_BYTES_PER_TOKEN,
        cat.KV_BYTES_PER_TOKEN_ANALYTIC,
        cat.KV_PEAK_BYTES,
        cat.KV_PERPLEXITY,
        cat.KV_REF_PERPLEXITY,
        cat.KV_KL,
        cat.KV_TOP1,
        cat.KV_DECODE_SPEEDUP,
        cat.KV_STREAM_TOKENS,
        cat.KV_ATTENTION,
    )
    return pd.DataFrame(
        [{"run": _name(j), **{m.label: j.result.get(m.key) for m in keys}} for j in kv_runs(jobs)]
    )


def kv_section(jobs: Sequence[Any], *, key: str) -> None:
    """KV-cache results of the runs that have them (nothing when none does)."""
    runs = kv_runs(jobs)
    if not runs:
        return
    st.subheader("KV cache")
    st.caption(cat.KV_STREAM_TOKENS.definition + ". " + cat.KV_PASSKEY.definition + ".")
    st.dataframe(summary_frame(runs), hide_index=True)
    value = st.radio(
        "By position",
        ("kl", "nll", "top1"),
        horizontal=True,
        key=key,
        format_func={"kl": "KL", "nll": "NLL", "top1": "top-1"}.get,
    )
    st.plotly_chart(position_figure(position_frame(runs), value), key=f"{key}_fig")
    keys = passkey_frame(runs)
    if not keys.empty:
        st.markdown("**Passkey retrieval**: eviction can keep perplexity and still lose recall")
        st.dataframe(keys, hide_index=True)
