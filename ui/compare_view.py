"""The Compare page's parts: filters, the trade-off charts, and one run's full record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.metrics import DEFINITIONS
from core.save import QUANT_CONFIG, archive, folder_bytes
from db.models import Job
from ui.frames import eval_label, fmt_bytes, fmt_duration

# Keys of job.result shown in this order, with units; anything else follows as stored.
METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("perplexity", "Perplexity", ""),
    ("baseline_perplexity", "Baseline perplexity", ""),
    ("bits_per_byte", "Bits per byte", "bits/byte"),
    ("baseline_bits_per_byte", "Baseline bits per byte", "bits/byte"),
    ("kl_to_baseline", "KL to baseline", "nats/token"),
    ("top1_agreement", "Top-1 agreement", "fraction"),
    ("weight_bytes", "Weight memory", "bytes"),
    ("bits_per_weight", "Bits per weight (all linears)", "bits"),
    ("compressed_bits_per_weight", "Bits per weight (compressed linears)", "bits"),
    ("peak_mem_bytes", "Peak memory", "bytes"),
    ("prefill_ms", "Prefill latency", "ms"),
    ("decode_tok_s", "Decode throughput", "tokens/s"),
    ("prefill_speedup", "Prefill speed-up over the baseline", "x"),
    ("decode_speedup", "Decode speed-up over the baseline", "x"),
    ("smaller_but_slower", "Smaller but slower", ""),
    ("baseline_weight_bytes", "Baseline weight memory", "bytes"),
    ("baseline_prefill_ms", "Baseline prefill latency", "ms"),
    ("baseline_decode_tok_s", "Baseline decode throughput", "tokens/s"),
    ("compress_s", "Compression time", "s"),
    ("mean_layer_error", "Mean layer error", "relative"),
    ("n_params", "Parameters", "count"),
    ("linear_weights", "Linear-layer weights", "count"),
    ("eval_tokens_used", "Evaluation tokens used", "tokens"),
    ("eval_bytes_used", "Evaluation bytes used", "bytes"),
    ("model_note", "Model note", ""),
)

# Definitions of result keys that core.metrics.DEFINITIONS does not cover.
EXTRA_DEFINITIONS: dict[str, str] = {
    "baseline_perplexity": "perplexity of the uncompressed model on the same windows "
    "(computed once per model, evaluation set and settings, then reused)",
    "baseline_bits_per_byte": "bits per byte of the uncompressed model on the same windows",
    "mean_layer_error": "mean over compressed linears of " + DEFINITIONS.get("layer_error", ""),
    "n_params": "parameters of the model as loaded (before compression)",
    "linear_weights": "weights of all linear layers (biases excluded)",
    "eval_tokens_used": "tokens actually predicted (the first token of each window is context)",
    "eval_bytes_used": "UTF-8 bytes of the predicted tokens' text (denominator of bits per byte)",
    "baseline_weight_bytes": "weight_bytes of the uncompressed model as loaded in this job",
    "baseline_prefill_ms": "prefill_ms of the uncompressed model, measured in this job before "
    "compressing",
    "baseline_decode_tok_s": "decode_tok_s of the uncompressed model, measured in this job",
    "saved_model": "folder where the worker kept the compressed model (null: not kept)",
    "saved_model_bytes": "size of that folder: weights as stored, configs, tokenizer",
    "model_note": "what to keep in mind about the model (e.g. random weights)",
}


def definition(key: str) -> str:
    return DEFINITIONS.get(key) or EXTRA_DEFINITIONS.get(key, "")


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key.endswith("_bytes") and key != "eval_bytes_used":
        return f"{fmt_bytes(value)} ({value:,.0f} B)"
    if isinstance(value, int):
        return f"{value:,}"
    if key == "compress_s":
        return fmt_duration(value) if value >= 60 else f"{value:.2f} s"
    return f"{value:.6g}"  # perplexities of close recipes differ in the 4th digit


def metrics_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Every metric of a run: name, value with unit, and its definition."""
    rows, seen = [], set()
    for key, label, unit in METRIC_ROWS:
        if key in result:
            rows.append((label, _fmt(key, result[key]), unit, definition(key), key))
            seen.add(key)
    for key, value in result.items():
        if key not in seen:
            rows.append((key, _fmt(key, value), "", definition(key), key))
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
        ["prefill_ms", "decode_tok_s"],
        format_func={"prefill_ms": "prefill (ms)", "decode_tok_s": "decode (tokens/s)"}.get,
        key="cmp_latency",
    )
    return df[df["model"].isin(chosen) & (df["eval"] == ev)], latency


def slower_message(result: dict[str, Any], device: str) -> str:
    """Why a run that saved memory is still no win for speed on this device."""
    return (
        "Space saving is not a speed-up: the weights shrank "
        f"({fmt_bytes(result['baseline_weight_bytes'])} -> {fmt_bytes(result['weight_bytes'])}) "
        f"but this run is slower than the uncompressed model on {device}: "
        f"prefill {result['prefill_speedup']:.2f}x, decode {result['decode_speedup']:.2f}x "
        "(both measured in the same job). The method card says which hardware accelerates it."
    )


def saved_model_download(job: Job) -> None:
    """The run's compressed model as a .zip, where this machine has the worker's folder."""
    folder = (job.result or {}).get("saved_model")
    if not folder:
        if (job.fingerprint or {}).get("recipe"):
            st.caption(
                "The compressed model was not kept: tick 'Keep the compressed model for "
                "download' on New run (or pass --save to python -m workers run)."
            )
        return
    path = Path(folder)
    if (getattr(job, "origin", None) or "local") != "local":  # an imported bundle's path
        st.caption(f"The compressed model stays with {job.origin}, who measured this run.")
        return
    if not (path / QUANT_CONFIG).is_file():
        st.caption(f"The compressed model was saved on its worker's machine at `{folder}`.")
        return
    st.download_button(
        f"Download the compressed model (.zip, {fmt_bytes(folder_bytes(path))})",
        data=lambda: archive(path),
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
    st.subheader(f"Run #{job.id}: {job.model} · {job.recipe_label}")
    if result.get("model_note"):
        st.caption(f"Model note: {result['model_note']}")
    if result.get("smaller_but_slower"):
        st.warning(slower_message(result, fp.get("device", "this device")), icon=":material/speed:")
    t_metrics, t_recipe, t_settings, t_fp = st.tabs(
        ["Metrics", "Recipe", "Settings", "Fingerprint"]
    )
    with t_metrics:
        st.table(metrics_frame(result).drop(columns=["key"]).set_index("metric"))
        saved_model_download(job)
    with t_recipe:
        steps = fp.get("recipe", spec.get("recipe", []))
        if not steps:
            st.write("No steps: the uncompressed baseline.")
        st.code(json.dumps(steps, indent=2), language="json")
    with t_settings:
        st.json(
            {
                "model": spec.get("model"),
                "evaluation set": spec.get("eval_set"),
                "evaluation": spec.get("eval"),
                "calibration set": spec.get("calib"),
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


def run_label(job: Any) -> str:
    return f"#{job.id} {job.recipe_label}"


def side_by_side(jobs: list[Any]) -> pd.DataFrame:
    """Metrics (rows, with units) of several runs (one column each), in the order of
    :data:`METRIC_ROWS`; a metric no run recorded is left out."""
    results = [j.result or {} for j in jobs]
    rows = []
    for key, label, unit in METRIC_ROWS:
        if not any(key in r for r in results):
            continue
        rows.append(
            {
                "metric": label,
                "unit": unit,
                **{run_label(j): _fmt(key, r.get(key)) for j, r in zip(jobs, results, strict=True)},
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
