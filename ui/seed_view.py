"""Calibration seeds and protocol in the UI: the New run option that repeats a run over N
calibration seeds (one seed group, queued as one sweep), the protocol picker, and the
Compare section with each group's mean and spread of perplexity and KL."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from db import queue
from runs import catalogue as cat
from runs.sweep import MAX_SEEDS, seed_group_summary, seed_specs
from ui.figures_seeds import seed_spread_figure
from ui.submit import build_spec


def protocol_picker() -> str:
    """How windows are drawn: "default" or "reference" (definitions from the catalogue)."""
    return st.radio(
        "Calibration and evaluation protocol",
        list(cat.PROTOCOLS),
        horizontal=True,
        key="nr_protocol",
        help=" ".join(f"{k}: {v}." for k, v in cat.PROTOCOLS.items()),
    )


def submit_seed_group(sf: queue.Factory, n_seeds: int, *, owner: str, **spec_args: Any) -> str:
    """Validate the run (ui.submit.build_spec arguments) and queue it once per calibration
    seed as one seed group; returns its sweep id. Nothing is queued if anything is wrong."""
    spec, label = build_spec(sf, **spec_args)
    jobs = [(name, one.to_json()) for name, one in seed_specs(spec, label, n_seeds)]
    return queue.submit_sweep(sf, model=spec.model, jobs=jobs, owner=owner)


def seed_count() -> int:
    return int(
        st.number_input(
            "Calibration seeds",
            min_value=2,
            max_value=MAX_SEEDS,
            value=5,
            key="nr_seed_count",
            help="the run is queued once per seed (seed, seed + 1, ...); Compare shows the "
            "group's mean and spread of perplexity and KL. " + cat.SEED_SPREAD_DEF,
        )
    )


def seed_frame(jobs: list[Any]) -> pd.DataFrame:
    """One row per seed group among the finished ``jobs`` (runs.sweep.seed_group_summary)."""
    records = [
        {
            "sweep_id": j.sweep_id,
            "label": j.recipe_label,
            "spec": j.spec if isinstance(j.spec, dict) else json.loads(j.spec_json),
            "metrics": j.result or {},
        }
        for j in jobs
        if getattr(j, "sweep_id", None) and j.result
    ]
    return pd.DataFrame(seed_group_summary(records))


def seed_chart(jobs: list[Any]) -> bool:
    """A "Seed spread" section on Compare; nothing (False) without a finished seed group."""
    df = seed_frame(jobs)
    if df.empty:
        return False
    st.subheader("Seed spread")
    st.caption(
        "Each seed group is one recipe repeated over calibration seeds: the point is the "
        "mean, the error bar one standard deviation, the grey bar min..max. " + cat.SEED_SPREAD_DEF
    )
    cols = st.columns(len(cat.SEED_GROUP))
    for col, m in zip(cols, cat.SEED_GROUP, strict=True):
        col.plotly_chart(seed_spread_figure(df, m), key=f"fig_seed_{m.key}")
    st.dataframe(df, hide_index=True)
    return True
