"""The Compare page's parts: filters, the trade-off charts, and one run's full record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.save import QUANT_CONFIG, archive, folder_bytes
from db.models import Job
from runs import catalogue as cat
from ui import annotations, auth, figures
from ui.frames import eval_label, fmt_bytes, fmt_duration, recipe_steps
from ui.latency_view import latency_section
from ui.shell import md_text

definition = cat.definition


def fmt_value(m: cat.Metric | None, value: Any) -> str:
    """A stored value as the Run page shows it: sizes in B/kB/MB/GB with the exact count,
    long durations in minutes, other numbers to 6 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    kind = m.kind if m else "number"
    if kind == "size":
        return f"{fmt_bytes(value)} ({value:,.0f} B)"
    if isinstance(value, int):
        return f"{value:,}"
    if kind == "duration":
        return fmt_duration(value) if value >= 60 else f"{value:.2f} s"
    return f"{value:.6g}"  # perplexities of close recipes differ in the 4th digit


def metrics_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Every metric of a run: name, value with unit, and its definition (catalogue order,
    then any key the catalogue does not know, as stored)."""
    rows = [
        (m.label, fmt_value(m, result[m.key]), m.unit, m.definition, m.key)
        for m in cat.RESULT
        if m.key in result and m is not cat.LATENCY_REPORT  # drawn under the table
    ]
    rows += [(k, fmt_value(None, v), "", "", k) for k, v in result.items() if k not in cat.BY_KEY]
    return pd.DataFrame(rows, columns=["metric", "value", "unit", "definition", "key"])


def filter_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Model and evaluation filters (perplexities compare only under the same evaluation),
    and the latency measure to plot."""
    c1, c2, c3 = st.columns([2, 2, 1])
    models = sorted(df["model"].unique())
    chosen = c1.multiselect("Models", models, default=models, key="cmp_models")
    evals = df["eval"].value_counts().index.tolist()  # the most common first
    ev = c2.selectbox(
        "Evaluated on",
        evals,
        key="cmp_eval",
        help="Perplexity depends on the text, context length and number of tokens: only "
        "runs evaluated the same way are plotted together.",
    )
    latency = c3.radio(
        "Latency axis",
        [m.col for m in cat.LATENCY],
        format_func=lambda col: cat.BY_COLUMN[col].header.replace("tok/s", "tokens/s"),
        key="cmp_latency",
    )
    return df[df["model"].isin(chosen) & (df["eval"] == ev)], latency


def slower_message(result: dict[str, Any], device: str) -> str:
    """Why a run that saved memory is still no win for speed on this device."""
    before, after = (result[m.key] for m in (cat.BASELINE_WEIGHT_BYTES, cat.WEIGHT_BYTES))
    speeds = [
        f"{name} {v:.2f}x" if v is not None else f"{name} not measurable"
        for name, v in (
            ("prefill", result.get(cat.PREFILL_SPEEDUP.key)),
            ("decode", result.get(cat.DECODE_SPEEDUP.key)),
        )
    ]
    return (
        f"Space saving is not a speed-up: the weights shrank ({fmt_bytes(before)} -> "
        f"{fmt_bytes(after)}) but this run is slower than the uncompressed model on {device}: "
        f"{', '.join(speeds)} (both measured in the same job). The method card says which "
        "hardware accelerates it."
    )


def saved_model_download(job: Job) -> None:
    """The run's compressed model as a .zip, where this machine has the worker's folder."""
    folder = (job.result or {}).get(cat.SAVED_MODEL.key)
    if (getattr(job, "origin", None) or "local") != "local":  # imported: never a path here
        st.caption(f"The compressed model stays with {md_text(job.origin)}, who measured this run.")
        return
    if not folder:
        if job.fingerprint and recipe_steps(job):
            st.caption(
                "The compressed model was not kept: tick 'Keep the compressed model for "
                "download' on New run (or pass --save to python -m workers run)."
            )
        return
    path = Path(folder)
    if not (path / QUANT_CONFIG).is_file():
        st.caption("The compressed model was saved on its worker's machine at:")
        st.code(str(folder), language=None)
        return
    who, owner = auth.current_identity(), getattr(job, "owner", "local")
    if who.name != owner and not who.admin:  # a teammate's model may be private
        st.caption(f"Only {md_text(owner)}, who queued this run, or an admin may download it.")
        return
    st.download_button(
        f"Download the compressed model (.zip, {fmt_bytes(folder_bytes(path))})",
        # The zip is written to disk beside the model (reused); Streamlit serves its bytes.
        data=lambda: archive(path).read_bytes(),
        file_name=f"compresslab-run-{job.id}.zip",
        mime="application/zip",
        on_click="ignore",
        icon=":material/download:",
        key=f"download_model_{job.id}",
    )
    st.caption(
        "Unzip, then load it back in its compressed storage with "
        "`core.save.load_compressed(folder)` (Hugging Face config and tokenizer included)."
    )


def run_details(job: Job) -> None:
    """Recipe, settings, every metric with its definition, and the fingerprint of one run."""
    spec, fp, result = job.spec, job.fingerprint, job.result
    st.subheader(f"Run #{job.id}: {md_text(job.model, 300)} · {md_text(job.recipe_label, 300)}")
    st.caption(f"Queued by {md_text(getattr(job, 'owner', 'local'))}")
    annotations.panel(job, key="details")
    if result.get(cat.MODEL_NOTE.key):
        st.caption(f"Model note: {md_text(result[cat.MODEL_NOTE.key])}")
    if result.get(cat.SMALLER_BUT_SLOWER.key):
        st.warning(slower_message(result, fp.get("device", "this device")), icon=":material/speed:")
    t_metrics, t_recipe, t_settings, t_fp = st.tabs(
        ["Metrics", "Recipe", "Settings", "Fingerprint"]
    )
    with t_metrics:
        st.table(metrics_frame(result).drop(columns=["key"]).set_index("metric"))
        latency_section(result, key=str(job.id))
        saved_model_download(job)
    with t_recipe:
        steps = recipe_steps(job)
        if not steps:
            st.write("No steps: the uncompressed baseline.")
        st.code(json.dumps(steps, indent=2), language="json")
    with t_settings:
        st.json(
            {
                "model": spec.get("model"),
                "evaluation set": spec.get("eval_set"),
                "evaluation": spec.get("eval"),
                "calibration set": set_label(spec.get("calib")),
                "calibration": spec.get("calib_settings"),
                "worker": job.worker_id,
                "elapsed": fmt_duration(
                    (job.finished_at or 0) - (job.started_at or 0) if job.started_at else None
                ),
            }
        )
    with t_fp:
        st.caption(f"Fingerprint hash: `{job.fingerprint_hash}`")
        st.json(fp)


def set_label(name: Any) -> Any:
    """A text set's name; an uploaded one also by file name, size and SHA-256."""
    from db import queue
    from ui import shell
    from ui.frames import text_label

    if isinstance(name, str) and name.startswith("upload:"):
        blob = queue.get_text(shell.session(), name)
        if blob is not None:
            return f"{text_label(blob)} [{name}]"
    return name


def run_label(job: Any) -> str:
    return f"#{job.id} {job.recipe_label}"


def side_by_side(jobs: list[Any]) -> pd.DataFrame:
    """Metrics (rows, with units) of several runs (one column each), in catalogue order;
    a metric no run recorded is left out, and so are lists and folders (kernel paths,
    the saved model) that do not compare side by side."""
    results = [j.result or {} for j in jobs]
    rows = []
    for m in cat.RESULT:
        apart = m.kind == "list" or m in (cat.SAVED_MODEL, cat.SAVED_MODEL_BYTES)
        if apart or not any(m.key in r for r in results):
            continue
        rows.append(
            {
                "metric": m.label,
                "unit": m.unit,
                **{
                    run_label(j): fmt_value(m, r.get(m.key))
                    for j, r in zip(jobs, results, strict=True)
                },
            }
        )
    facts = (
        ("Model", lambda j: j.model),
        ("Evaluated on", eval_label),
        ("Origin", lambda j: getattr(j, "origin", None) or "local"),
    )
    for label, get in facts:
        rows.append({"metric": label, "unit": "", **{run_label(j): str(get(j)) for j in jobs}})
    return pd.DataFrame(rows)


def config_diff_view(jobs: list[Any]) -> None:
    """The settings in which these runs differ, highlighted (all equal: said so)."""
    from ui.frames import config_diff

    labels = [run_label(j) for j in jobs]
    diff = config_diff(jobs, labels)
    st.subheader("Config diff")
    if diff.empty:
        st.caption("Same model, recipe and settings: only the measurements differ.")
        return
    st.caption(f"Only the {len(diff)} setting(s) in which the runs differ ('-': not set).")
    styled = diff.style.apply(
        lambda row: ["" if c == "setting" else "background-color: #fff3b0" for c in row.index],
        axis=1,
    )
    st.dataframe(styled, hide_index=True, width="stretch", key="run_config_diff")


DEFAULT_PARALLEL = ("method", "bits", "group_size", "sparsity")


def custom_axes(df: pd.DataFrame) -> None:
    """A chart of any two catalogued metrics and a parallel-coordinates view of the
    runs' parameters and metrics, on request (the page's fixed charts stay above)."""
    if not st.toggle("Choose the axes: any metric, and parameters side by side", key="cmp_explore"):
        return
    options = figures.axis_options(df)
    cols = list(options)
    c1, c2 = st.columns(2)
    default_x = cols.index(cat.WEIGHT_BYTES.col) if cat.WEIGHT_BYTES.col in cols else 0
    x = c1.selectbox("x axis", cols, index=default_x, format_func=options.get, key="cmp_x")
    default_y = cols.index(cat.PERPLEXITY.col) if cat.PERPLEXITY.col in cols else 0
    y = c2.selectbox("y axis", cols, index=default_y, format_func=options.get, key="cmp_y")
    st.plotly_chart(figures.tradeoff_figure(df, x, y), key="fig_custom")
    _parallel(df, options)


def _parallel(df: pd.DataFrame, options: dict[str, str]) -> None:
    params = [c for c in DEFAULT_PARALLEL if c in df.columns and df[c].nunique(dropna=False) > 1]
    choices = [*DEFAULT_PARALLEL, *options]
    picked_cols = st.multiselect(
        "Parallel coordinates: axes",
        choices,
        default=params + [c for c in (cat.WEIGHT_BYTES.col, cat.PERPLEXITY.col) if c in options],
        format_func=lambda c: options.get(c, c),
        key="cmp_par_cols",
    )
    ids = df["id"].tolist()
    chosen = st.multiselect(
        "Runs in the parallel coordinates",
        ids,
        default=ids[:50],
        format_func=lambda i: f"#{i}",
        key="cmp_par_runs",
    )
    st.plotly_chart(
        figures.parallel_figure(df[df["id"].isin(chosen)], picked_cols), key="fig_parallel"
    )
