"""The Run page's "Export for vLLM / transformers": pick a format, prepare the export (its
size checked against the data quota first), then download it as a zip.

The export is written in a temporary folder beside the run's kept model (named for this
process, so ``python -m workers gc`` removes what a killed export leaves), zipped, read
into memory for the download and removed: nothing stays on disk. It writes to the
worker's data folder, so only the run's owner or an admin may prepare one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core.data import human_bytes
from core.export import ExportError
from core.export.saved import CT, DENSE, FORMATS, export_bytes, export_zip_bytes, numeric_metrics
from core.save import QUANT_CONFIG, SaveError
from runs import catalogue as cat
from runs.preflight import quota_problem
from runs.records import recipe_steps
from ui import auth
from ui.shell import md_text

LABELS = {
    CT: "compressed-tensors: vLLM, SGLang, transformers (stays compressed)",
    DENSE: "dense float16: any engine, no extra package (uncompressed size)",
}
PACKED, PADDED = "packed", "padded"
NOT_KEPT = (
    "This run did not keep its compressed model, so there is nothing to export. Queue its "
    "recipe again with 'Keep the compressed model for download' ticked on New run (CLI: "
    "`python -m workers run ... --save`), then export that run."
)


def kept_folder(job: Any) -> Path | None:
    """The run's kept model folder on this machine, or None (after saying why not)."""
    if (getattr(job, "origin", None) or "local") != "local":
        st.caption(f"Imported run: its model stays with {md_text(job.origin)}.")
        return None
    saved = (job.result or {}).get(cat.SAVED_MODEL.key)
    if not saved:
        st.info(NOT_KEPT, icon=":material/info:")
        return None
    folder = Path(saved)
    if not (folder / QUANT_CONFIG).is_file():
        st.caption(f"The kept model is not on this machine (it was saved at `{saved}`).")
        return None
    return folder


def size_problem(job: Any, folder: Path, fmt: str) -> str | None:
    """Why the export (folder + zip) would not fit the data quota; None if it fits."""
    base = (job.result or {}).get(cat.BASELINE_WEIGHT_BYTES.key)
    need = 2 * export_bytes(folder, fmt, base)
    return quota_problem([folder.parent, folder.parent.parent / "cache"], need, "this export")


def _prepare(job: Any, folder: Path, fmt: str, zero_points: str) -> bytes | None:
    if problem := size_problem(job, folder, fmt):
        st.error(problem, icon=":material/block:")
        return None
    try:
        with st.spinner("Exporting (loads the kept model, writes and zips the folder)..."):
            return export_zip_bytes(
                folder,
                fmt,
                f"run-{job.id}-export",
                recipe=recipe_steps(job.fingerprint, job.spec),
                metrics=numeric_metrics(job.result),
                fingerprint=job.fingerprint,
                zero_points=zero_points,
            )
    except (ExportError, SaveError) as e:
        st.error(str(e), icon=":material/block:")
        return None


def _options(job: Any) -> tuple[str, str]:
    fmt = st.radio("Export format", FORMATS, format_func=LABELS.get, key=f"export_fmt_{job.id}")
    padded = fmt == CT and st.checkbox(
        "Asymmetric int-N: zero points padded for transformers 5.23 (vLLM reads the default, "
        "packed; symmetric and other formats are the same either way)",
        key=f"export_padded_{job.id}",
    )
    return fmt, PADDED if padded else PACKED


def panel(job: Any) -> None:
    """The export section of one run's page."""
    st.subheader("Export for vLLM / transformers")
    folder = kept_folder(job)
    if folder is None:
        return
    who, owner = auth.current_identity(), getattr(job, "owner", "local")
    if who.name != owner and not who.admin:  # writes to the worker's data folder
        st.caption(f"Only {md_text(owner)}, who queued this run, or an admin may export it.")
        return
    fmt, zero_points = _options(job)
    key = f"export_zip_{job.id}"
    if st.button("Prepare the export", key=f"export_prepare_{job.id}", icon=":material/build:"):
        st.session_state.pop(key, None)
        data = _prepare(job, folder, fmt, zero_points)
        if data is not None:
            st.session_state[key] = (fmt, zero_points, data)
    ready = st.session_state.get(key)
    if ready and ready[:2] == (fmt, zero_points):
        st.download_button(
            f"Download the {fmt} export (.zip, {human_bytes(len(ready[2]))})",
            data=ready[2],
            file_name=f"compresslab-run-{job.id}-{fmt}.zip",
            mime="application/zip",
            on_click="ignore",
            icon=":material/download:",
            key=f"export_download_{job.id}",
        )
        st.caption(
            "Unzip, then `AutoModelForCausalLM.from_pretrained(folder)` (compressed-tensors "
            "needs `pip install compressed-tensors`) or `vllm serve folder`; its README holds "
            "the recipe, metrics and fingerprint."
        )
