"""Database rows -> pandas DataFrames for tables and charts (pure: no Streamlit, no I/O).

Jobs arrive as ``db.models.Job`` objects, or anything with the same attributes, so
tests can pass plain namespaces.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

MB = 1e6  # charts and tables use decimal megabytes (10^6 bytes)

# Columns of the runs frame, in display order.
RUN_COLUMNS: tuple[str, ...] = (
    "id",
    "model",
    "recipe",
    "method",
    "perplexity",
    "baseline_perplexity",
    "bits_per_byte",
    "kl_to_baseline",
    "top1_agreement",
    "weight_mb",
    "bits_per_weight",
    "compressed_bits_per_weight",
    "prefill_ms",
    "decode_tok_s",
    "peak_mem_mb",
    "compress_s",
    "mean_layer_error",
    "eval",
    "finished",
)


def recipe_steps(job: Any) -> list[dict[str, Any]]:
    """The recipe steps a job ran (from its fingerprint when finished, else its spec)."""
    fp = getattr(job, "fingerprint", None) or {}
    if isinstance(fp.get("recipe"), list):
        return fp["recipe"]
    spec = getattr(job, "spec", None) or {}
    return list(spec.get("recipe") or [])


def method_label(steps: Sequence[dict[str, Any]]) -> str:
    """The method(s) of a recipe, chained with ' + '; 'baseline' for no steps."""
    return " + ".join(str(s.get("method", "?")) for s in steps) or "baseline"


def eval_label(job: Any) -> str:
    """What a perplexity was measured on: only runs with the same label compare fairly."""
    spec = getattr(job, "spec", None) or {}
    ev = spec.get("eval") or {}
    return f"{spec.get('eval_set', '?')}, ctx {ev.get('ctx', '?')}, {ev.get('eval_tokens', '?')} tokens"


def elapsed_s(job: Any, now: float | None = None) -> float | None:
    """Seconds a job ran (or has been running); None if it never started."""
    now = time.time() if now is None else now
    if job.started_at is None:
        return None
    end = job.finished_at if job.finished_at is not None else now
    return max(0.0, end - job.started_at)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _when(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t) if t is not None else None


def _num(value: Any) -> float:
    return (
        float(value)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else float("nan")
    )


def runs_frame(jobs: Iterable[Any]) -> pd.DataFrame:
    """One row per finished run with its metrics (memory in MB); NaN where a metric is absent."""
    rows = []
    for job in jobs:
        r = job.result or {}
        rows.append(
            {
                "id": int(job.id),
                "model": job.model,
                "recipe": job.recipe_label,
                "method": method_label(recipe_steps(job)),
                "perplexity": _num(r.get("perplexity")),
                "baseline_perplexity": _num(r.get("baseline_perplexity")),
                "bits_per_byte": _num(r.get("bits_per_byte")),
                "kl_to_baseline": _num(r.get("kl_to_baseline")),
                "top1_agreement": _num(r.get("top1_agreement")),
                "weight_mb": _num(r.get("weight_bytes")) / MB,
                "bits_per_weight": _num(r.get("bits_per_weight")),
                "compressed_bits_per_weight": _num(r.get("compressed_bits_per_weight")),
                "prefill_ms": _num(r.get("prefill_ms")),
                "decode_tok_s": _num(r.get("decode_tok_s")),
                "peak_mem_mb": _num(r.get("peak_mem_bytes")) / MB,
                "compress_s": _num(r.get("compress_s")),
                "mean_layer_error": _num(r.get("mean_layer_error")),
                "eval": eval_label(job),
                "finished": _when(job.finished_at),
            }
        )
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def jobs_frame(jobs: Iterable[Any], now: float | None = None) -> pd.DataFrame:
    """One row per job of any status, for the Runs history table."""
    rows = []
    for job in jobs:
        r = job.result or {}
        rows.append(
            {
                "id": int(job.id),
                "status": job.status,
                "model": job.model,
                "recipe": job.recipe_label,
                "progress": float(job.progress or 0.0),
                "message": job.message or "",
                "submitted": _when(job.created_at),
                "elapsed": fmt_duration(elapsed_s(job, now)),
                "perplexity": _num(r.get("perplexity")),
                "error": job.error or "",
            }
        )
    cols = [
        "id",
        "status",
        "model",
        "recipe",
        "progress",
        "message",
        "submitted",
        "elapsed",
        "perplexity",
        "error",
    ]
    return pd.DataFrame(rows, columns=cols)


def layers_frame(rows: Iterable[dict[str, Any]], k: float = 3.0) -> pd.DataFrame:
    """One row per linear layer: scheme, relative error, and weight statistics before/after."""
    key = str(float(k))
    out = []
    for d in rows:
        b, a = d.get("before") or {}, d.get("after") or {}
        shape = a.get("shape") or b.get("shape") or ()
        out.append(
            {
                "layer": d.get("name", "?"),
                "scheme": d.get("scheme", ""),
                "shape": " x ".join(str(s) for s in shape),
                "rel_error": _num(d.get("rel_error")),
                "kurtosis_before": _num(b.get("kurtosis")),
                "kurtosis_after": _num(a.get("kurtosis")),
                "absmax_before": _num(b.get("absmax")),
                "absmax_after": _num(a.get("absmax")),
                "zeros_after": _num(a.get("zeros")),
                f"outliers_before_{key}": _num((b.get("outliers") or {}).get(key)),
                f"outliers_after_{key}": _num((a.get("outliers") or {}).get(key)),
            }
        )
    return pd.DataFrame(out)
