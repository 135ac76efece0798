"""The pre-run memory estimate on New run: the model's weights and the calibration memory."""

from __future__ import annotations

from typing import Any

import streamlit as st
from torch import nn

from core.calib import CalibSettings
from core.errors import ModelLoadError
from core.estimate import MemoryEstimate, estimate_memory
from core.models import model_skeleton
from core.recipe import Recipe, recipe_from_steps
from db import queue
from runs.calib_check import too_short
from ui.frames import fmt_bytes


@st.cache_resource(show_spinner="Reading the model's config...", max_entries=8, ttl=600)
def _skeleton(model: str) -> nn.Module | str:
    """The model on the meta device, or why not (cached too: an offline probe takes seconds)."""
    try:
        return model_skeleton(model)
    except ModelLoadError as e:
        return str(e)


def breakdown(est: MemoryEstimate, calib: CalibSettings) -> str:
    """One line per term of the calibration memory, with what it counts."""
    rows = calib.n_samples * calib.seq_len
    return (
        f"- one block's inputs and outputs: {fmt_bytes(est.block_io_bytes)} "
        f"({calib.n_samples} samples x {calib.seq_len} tokens = {rows:,} rows, float32)\n"
        f"- statistics held at once (Hessians, input norms): "
        f"{fmt_bytes(est.layer_stats_bytes)}\n"
        f"- rows kept per linear for its output error: {fmt_bytes(est.error_rows_bytes)}"
    )


def short_set_warning(name: str, n_bytes: int | None, recipe: Recipe, cs: CalibSettings) -> str:
    """Why this calibration set will be refused, or what it really gives ("" if fine)."""
    if n_bytes is None or not recipe.steps:
        return ""
    if n_bytes < cs.seq_len:
        what = too_short(name, n_bytes, "bytes", cs)
        if recipe.needs_calibration:
            return f"Will not be queued: {what}."
        return (
            f"{what[0].upper()}{what[1:]}; this recipe needs no calibration data, but each "
            "layer's error will be measured on those few tokens only."
        )
    if n_bytes < cs.n_samples * cs.seq_len:
        return (
            f"The calibration set has {n_bytes:,} bytes, so at most about as many tokens: "
            f"fewer than the {cs.n_samples} x {cs.seq_len} requested; the windows will "
            "overlap (the run stores the real count)."
        )
    return ""


def show(
    model: str,
    steps: list[dict[str, Any]] | None,
    calib: dict[str, Any],
    calib_set: str = "",
    sf: queue.Factory | None = None,
) -> None:
    """Weights and calibration memory of this run, or why they cannot be estimated yet;
    with the calibration set's name and the database, a warning when an uploaded set is
    shorter than the settings ask."""
    if not model or steps is None:
        st.caption("The estimate appears once the model and the recipe are valid.")
        return
    meta = _skeleton(model)
    try:
        if isinstance(meta, str):
            raise ModelLoadError(meta)
        settings = CalibSettings(**calib)
        recipe = recipe_from_steps(steps)
        est = estimate_memory(meta, recipe, settings)
    except (ModelLoadError, ValueError) as e:  # ConfigError is a ValueError
        st.caption(f"No estimate: {e}")
        return
    _metrics(est, recipe, settings)
    n_bytes = queue.text_bytes(sf)(calib_set) if sf is not None and calib_set else None
    warning = short_set_warning(calib_set, n_bytes, recipe, settings)
    if warning:
        st.warning(warning, icon=":material/data_alert:")


def _metrics(est: MemoryEstimate, recipe: Recipe, settings: CalibSettings) -> None:
    c1, c2 = st.columns(2)
    c1.metric("Model weights (float32, as loaded)", fmt_bytes(est.weight_bytes))
    c2.metric(
        "Calibration memory, besides the model",
        fmt_bytes(est.calibration_bytes),
        help="Held at the peak of calibration: the walker keeps one block's inputs at a "
        "time and one layer's (or one block's) statistics.",
    )
    if not recipe.steps:
        st.caption("No recipe steps: nothing is calibrated.")
        return
    if est.calibrated:
        st.markdown(breakdown(est, settings))
        return
    methods = ", ".join(dict.fromkeys(s.method for s in recipe.steps))
    st.caption(
        f"{methods} needs no calibration data: no calibration memory. The samples still "
        f"pass block by block to measure each layer's output error, which holds "
        f"{fmt_bytes(est.measurement_bytes)} besides the model."
    )
