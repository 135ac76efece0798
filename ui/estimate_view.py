"""The pre-run memory estimate on New run: the model's weights and the calibration memory."""

from __future__ import annotations

from typing import Any

import streamlit as st
from torch import nn

from core.calib import CalibSettings
from core.errors import ModelLoadError
from core.estimate import MemoryEstimate, estimate_memory
from core.models import model_skeleton
from core.recipe import recipe_from_steps
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


def show(model: str, steps: list[dict[str, Any]] | None, calib: dict[str, Any]) -> None:
    """Weights and calibration memory of this run, or why they cannot be estimated yet."""
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
    c1, c2 = st.columns(2)
    c1.metric("Model weights (float32, as loaded)", fmt_bytes(est.weight_bytes))
    c2.metric(
        "Calibration memory, besides the model",
        fmt_bytes(est.calibration_bytes),
        help="Held at the peak of calibration: the walker keeps one block's inputs at a "
        "time and one layer's (or one block's) statistics.",
    )
    if recipe.steps:
        st.markdown(breakdown(est, settings))
    else:
        st.caption("No recipe steps: nothing is calibrated.")
