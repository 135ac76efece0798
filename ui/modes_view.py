"""New run: which memory mode a run takes and its estimated peak, for the chosen model and
for the large hub presets (core/modes.py; nothing is downloaded)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.calib import CalibSettings
from core.errors import ModelLoadError
from core.models import model_skeleton
from core.modes import fmt, mode_peaks, preset_rows
from core.recipe import recipe_from_steps


@st.cache_data(show_spinner=False, max_entries=16, ttl=600)
def _presets(steps: tuple[str, ...], calib: tuple[tuple[str, Any], ...]) -> list[dict]:
    import json

    recipe = recipe_from_steps([json.loads(s) for s in steps])
    return preset_rows(recipe, CalibSettings(**dict(calib)))


def show(model: str, steps: list[dict[str, Any]] | None, calib: dict[str, Any]) -> None:
    """Both modes' peaks for ``model``, and the presets' in an expander."""
    import json

    if not model or steps is None:
        return
    try:
        recipe = recipe_from_steps(steps)
        peaks = mode_peaks(model_skeleton(model), recipe, CalibSettings(**calib))
    except (ModelLoadError, ValueError) as e:
        st.caption(f"No mode estimate: {e}")
        return
    st.caption(
        f"Peak device memory: about {fmt(peaks.in_memory)} with the whole model loaded; "
        f"about {fmt(peaks.onloaded)} one decoder block at a time. A worker started with "
        f"`--max-device-memory` below the first runs it block by block (weights left in "
        f"their safetensors files), and refuses it below the second."
    )
    with st.expander("Large hub presets (0.5 B to 8 B): estimated peak per mode"):
        key = tuple(json.dumps(s, sort_keys=True) for s in steps)
        st.dataframe(_presets(key, tuple(sorted(calib.items()))), hide_index=True)
