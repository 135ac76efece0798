"""Database rows -> pandas DataFrames for tables and charts (pure: no Streamlit, no I/O).

Jobs arrive as ``db.models.Job`` objects, or anything with the same attributes, so
tests can pass plain namespaces.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from runs import catalogue as cat
from runs.records import as_float, bits_label
from runs.records import recipe_steps as recipe_steps_of

MB = cat.MB  # charts and tables use decimal megabytes (10^6 bytes)

# Columns of the runs frame, in display order: the catalogue's run table between who
# and when.
RUN_COLUMNS: tuple[str, ...] = (
    "id",
    "model",
    "recipe",
    "method",
    *(m.col for m in cat.RUN_TABLE),
    *(q.col for pair in cat.SPREAD.values() for q in pair),  # error bars of the charts
    "eval",
    "finished",
)


# Runs-frame columns the pages sort and flag by.
PERPLEXITY = cat.PERPLEXITY.col
SMALLER_BUT_SLOWER = cat.SMALLER_BUT_SLOWER.col


def recipe_steps(job: Any) -> list[dict[str, Any]]:
    """The recipe steps a job ran (stored once, in its spec; old rows' fingerprints held
    a copy, read first)."""
    return recipe_steps_of(getattr(job, "fingerprint", None), getattr(job, "spec", None))


def run_option(job: Any) -> str:
    """How a run is named in the pages' pickers: its name (else recipe label) and its
    recipe in full, "#12: demo · rtn-int8 — rtn(bits=8, per-channel)"."""
    title, details = run_title(job), recipe_details(recipe_steps(job))
    return f"#{job.id}: {job.model} · {title if title == details else f'{title} — {details}'}"


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


def metric_cell(m: cat.Metric, result: dict[str, Any]) -> Any:
    """A metric of a stored result as its runs-frame cell (scaled; NaN if absent)."""
    value = result.get(m.key)
    if m.kind == "flag":
        return bool(value or False)
    return as_float(value) * m.scale


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
                **{m.col: metric_cell(m, r) for m in cat.RUN_TABLE},
                **{q.col: metric_cell(q, r) for pair in cat.SPREAD.values() for q in pair},
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
                cat.PERPLEXITY.col: metric_cell(cat.PERPLEXITY, r),
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
        cat.PERPLEXITY.col,
        "error",
    ]
    return pd.DataFrame(rows, columns=cols)


def layers_frame(rows: Iterable[dict[str, Any]], k: float = 3.0) -> pd.DataFrame:
    """One row per linear layer: scheme, relative error, and weight statistics before/after."""
    key = str(float(k))
    out = []
    for d in rows:
        b, a = d.get("before") or {}, d.get("after") or {}
        act = d.get("act") or {}
        shape = a.get("shape") or b.get("shape") or ()
        out.append(
            {
                "layer": d.get("name", "?"),
                "scheme": d.get("scheme", ""),
                "shape": " x ".join(str(s) for s in shape),
                "rel_error": as_float(d.get("rel_error")),
                "kurtosis_before": as_float(b.get("kurtosis")),
                "kurtosis_after": as_float(a.get("kurtosis")),
                "absmax_before": as_float(b.get("absmax")),
                "absmax_after": as_float(a.get("absmax")),
                "zeros_after": as_float(a.get("zeros")),
                f"outliers_before_{key}": as_float((b.get("outliers") or {}).get(key)),
                f"outliers_after_{key}": as_float((a.get("outliers") or {}).get(key)),
                # Input activations on the calibration set (runs with a calibrated recipe).
                "act_absmax": as_float(act.get("absmax")),
                "act_above": as_float(act.get("n_above")),
                "act_max_over_median": as_float(act.get("max_over_median")),
            }
        )
    return pd.DataFrame(out)


# --- leaderboard -------------------------------------------------------------------


def recipe_sparsity(steps: Sequence[dict[str, Any]]) -> float:
    """The sparsity a recipe asks for: its pruning step's ``sparsity``, or 1 - N/M of an
    N:M pattern; 0 without pruning."""
    out = 0.0
    for s in steps:
        pattern = s.get("pattern")
        if isinstance(pattern, str) and ":" in pattern:
            n, m = (int(v) for v in pattern.split(":"))
            out = max(out, 1 - n / m)
        elif isinstance(s.get("sparsity"), int | float) and not isinstance(s["sparsity"], bool):
            out = max(out, float(s["sparsity"]))
    return round(out, 4)


def calib_label(job: Any) -> str:
    """The calibration set a run used ('none' when it needed none)."""
    fp = getattr(job, "fingerprint", None) or {}
    if "calib_set" in fp:
        return (fp["calib_set"] or {}).get("name", "none") if fp["calib_set"] else "none"
    spec = getattr(job, "spec", None) or {}
    return str(spec.get("calib", "none")) if recipe_steps(job) else "none"


# The Leaderboard's Pareto objectives (column -> better direction) and shown columns.
PARETO: dict[str, str] = {m.col: m.better or "lower" for m in cat.PARETO}
LEADERBOARD_SHOWN: list[str] = [
    "id",
    "open",
    "name",
    "pareto",
    "model",
    "recipe",
    "details",
    "method",
    "bits",
    "sparsity",
    *(
        m.col
        for m in (
            cat.PERPLEXITY,
            cat.BITS_PER_BYTE,
            cat.KL_TO_BASELINE,
            cat.WEIGHT_BYTES,
            cat.PREFILL_MS,
            cat.DECODE_TOK_S,
        )
    ),
    "calib",
    "eval",
    "tags",
    "owner",
    "origin",
    "fingerprint",
    "finished",
]


def leaderboard_frame(jobs: Iterable[Any]) -> pd.DataFrame:
    """The runs frame plus what the leaderboard filters and shares by: bits, sparsity,
    calibration set, origin and fingerprint hash."""
    jobs = list(jobs)
    df = runs_frame(jobs)
    df["bits"] = [bits_label(j.result or {}) for j in jobs]
    df["sparsity"] = [recipe_sparsity(recipe_steps(j)) for j in jobs]
    df["calib"] = [calib_label(j) for j in jobs]
    df["origin"] = [getattr(j, "origin", None) or "local" for j in jobs]
    df["fingerprint"] = [(getattr(j, "fingerprint_hash", None) or "")[:12] for j in jobs]
    df["name"] = [run_title(j) for j in jobs]
    df["details"] = [recipe_details(recipe_steps(j)) for j in jobs]
    df["tags"] = [tags_text(j) for j in jobs]
    df["notes"] = [getattr(j, "notes", None) or "" for j in jobs]
    df["owner"] = [getattr(j, "owner", None) or "local" for j in jobs]
    df["open"] = [f"run?run={j.id}" for j in jobs]
    return df


def pareto_mask(
    df: pd.DataFrame, objectives: dict[str, str], group: str | None = "model"
) -> pd.Series:
    """True for rows no other row of the same ``group`` dominates on every objective
    (column -> "lower" or "higher" is better). A row missing any objective is never on
    the front and dominates nothing; exact ties do not dominate each other."""
    cols = list(objectives)
    mask = pd.Series(False, index=df.index)
    if df.empty or not set(cols) <= set(df.columns):
        return mask
    groups = df.groupby(group, sort=False) if group else [(None, df)]
    for _, g in groups:
        d = g.dropna(subset=cols)
        if d.empty:
            continue
        signs = np.array([1.0 if objectives[c] == "lower" else -1.0 for c in cols])
        v = d[cols].to_numpy(dtype=float) * signs  # smaller is better in every column
        no_worse = (v[None, :, :] <= v[:, None, :]).all(axis=2)  # [i, j]: j no worse than i
        better = (v[None, :, :] < v[:, None, :]).any(axis=2)
        dominated = (no_worse & better).any(axis=1)
        mask.loc[d.index[~dominated]] = True
    return mask


def most_interesting(rows: dict[str, dict[str, Any]]) -> str:
    """The layer to open first: the most activation values above the outlier threshold,
    else the largest layer error, else the first layer."""

    def key(item: tuple[str, dict[str, Any]]) -> tuple[float, float]:
        d = item[1]
        above = as_float((d.get("act") or {}).get("n_above"))
        err = as_float(d.get("rel_error"))
        return (above if above == above else -1.0, err if err == err else -1.0)

    return max(rows.items(), key=key)[0] if rows else ""


# --- run identity: full recipe, names, tags, filters, config diff (issue 18) -------------

# The parameters a recipe's one-line description always shows (when a step has them).
KEY_PARAMS: tuple[str, ...] = ("bits", "group_size", "sparsity", "pattern", "dtype", "alpha")


def _step_text(step: dict[str, Any]) -> str:
    shown = []
    for k in KEY_PARAMS:
        v = step.get(k)
        if v is None or (k == "group_size" and step.get("granularity", "group") != "group"):
            continue
        shown.append(f"{k}={v}")
    if step.get("granularity") in ("tensor", "channel"):
        shown.append(f"per-{step['granularity']}")
    return f"{step.get('method', '?')}({', '.join(shown)})" if shown else str(step.get("method"))


def recipe_details(steps: Sequence[dict[str, Any]]) -> str:
    """A recipe in one line with its bits, group size and sparsity, whatever its name:
    "wanda(sparsity=0.5) + rtn(bits=4, group_size=128)"; "baseline" without steps."""
    return " + ".join(_step_text(s) for s in steps) or "baseline"


def run_title(job: Any) -> str:
    """What a run is called: its name, else its recipe label."""
    return str(getattr(job, "name", None) or job.recipe_label)


def tags_text(job: Any) -> str:
    tags = getattr(job, "tags", None) or []
    return ", ".join(tags)


def _defaults(method: Any) -> dict[str, Any]:
    """A method's parameter defaults (a stored step may list only what was changed)."""
    from core.registry import get_method

    try:
        return get_method(str(method)).config_cls().to_dict()
    except (KeyError, ValueError, TypeError):
        return {}


def flat_config(job: Any) -> dict[str, Any]:
    """Every setting of a run as "path: value" (recipe steps as "step 1 rtn.bits"), for
    the config diff; lists shown as text."""
    spec = getattr(job, "spec", None) or {}
    out: dict[str, Any] = {"model": job.model}
    for i, step in enumerate(recipe_steps(job), start=1):
        for k, v in {**_defaults(step.get("method")), **step}.items():
            if k != "method":
                out[f"step {i} {step.get('method', '?')}.{k}"] = v
        out[f"step {i}"] = step.get("method")
    for section in ("eval", "calib_settings"):
        for k, v in (spec.get(section) or {}).items():
            out[f"{section}.{k}"] = v
    for k in ("eval_set", "calib", "tasks", "save_model"):
        if k in spec:
            out[k] = spec[k]
    return {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in out.items()}


def config_diff(jobs: Sequence[Any], labels: Sequence[str]) -> pd.DataFrame:
    """The settings in which the runs differ (a setting one run lacks counts as
    different): one row per setting, one column per run, "-" where absent."""
    flats = [flat_config(j) for j in jobs]
    keys: list[str] = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    missing = object()
    rows = []
    for k in keys:
        values = [f.get(k, missing) for f in flats]
        if all(v == values[0] for v in values):
            continue
        cells = ["-" if v is missing else str(v) for v in values]
        rows.append({"setting": k, **dict(zip(labels, cells, strict=True))})
    return pd.DataFrame(rows, columns=["setting", *labels])


def _param_value(job: Any, name: str) -> list[Any]:
    """The values of parameter ``name`` in a run: any recipe step's, or a setting's."""
    spec = getattr(job, "spec", None) or {}
    found = [s[name] for s in recipe_steps(job) if name in s]
    for section in ("eval", "calib_settings"):
        if name in (spec.get(section) or {}):
            found.append(spec[section][name])
    if name in spec and not isinstance(spec[name], dict | list):
        found.append(spec[name])
    return found


class FilterError(ValueError):
    """A parameter filter that cannot be read; says how to write it."""


def parse_param_filter(text: str) -> list[tuple[str, str, str]]:
    """ "bits=4, group_size>=64, method=gptq" -> [(name, op, value)]."""
    out = []
    for clause in filter(None, (c.strip() for c in text.split(","))):
        for op in (">=", "<=", "!=", "=", ">", "<"):
            if op in clause:
                name, value = (x.strip() for x in clause.split(op, 1))
                if not name or not value:
                    break
                out.append((name, op, value))
                break
        else:
            raise FilterError(f"{clause!r}: write name=value, name>=value or name<value")
    return out


def _compare(have: Any, op: str, want: str) -> bool:
    try:
        a, b = float(have), float(want)
    except (TypeError, ValueError):
        a, b = str(have).lower(), want.lower()  # type: ignore[assignment]
        if op in ("=", "!="):
            return (a == b) == (op == "=")
        return False
    return {
        "=": a == b,
        "!=": a != b,
        ">=": a >= b,
        "<=": a <= b,
        ">": a > b,
        "<": a < b,
    }[op]


def matches_params(job: Any, clauses: Sequence[tuple[str, str, str]]) -> bool:
    """Whether every clause holds for some value of its parameter in the run ("method"
    matches any step's method)."""
    for name, op, want in clauses:
        values = _param_value(job, name)
        if not any(_compare(v, op, want) for v in values):
            return False
    return True


def job_text(job: Any) -> str:
    """What the runs search box looks through: id, name, recipe, model, tags, notes."""
    parts = [f"#{job.id}", run_title(job), job.recipe_label, job.model, tags_text(job)]
    parts.append(getattr(job, "notes", None) or "")
    return " ".join(str(p) for p in parts).lower()


def run_link(job: Any) -> str | None:
    """The Run page of a succeeded run, relative to the current page's address."""
    return f"run?run={job.id}" if job.status == "succeeded" else None


def history_frame(jobs: Iterable[Any], now: float | None = None) -> pd.DataFrame:
    """The Runs history: who, what (name, full recipe), tags, how it went, a link."""
    rows = []
    for job in jobs:
        r = job.result or {}
        rows.append(
            {
                "id": int(job.id),
                "open": run_link(job),
                "name": run_title(job),
                "status": job.status,
                "model": job.model,
                "recipe": job.recipe_label,
                "details": recipe_details(recipe_steps(job)),
                "tags": tags_text(job),
                "owner": job.owner,
                "submitted": _when(job.created_at),
                "elapsed": fmt_duration(elapsed_s(job, now)),
                cat.PERPLEXITY.col: metric_cell(cat.PERPLEXITY, r),
                "archived": bool(getattr(job, "archived", False)),
                "error": job.error or "",
            }
        )
    cols = ["id", "open", "name", "status", "model", "recipe", "details", "tags", "owner"]
    cols += ["submitted", "elapsed", cat.PERPLEXITY.col, "archived", "error"]
    return pd.DataFrame(rows, columns=cols)


def _first_param(job: Any, name: str) -> Any:
    values = [s.get(name) for s in recipe_steps(job) if s.get(name) is not None]
    return values[0] if values else None


def chart_frame(jobs: Sequence[Any]) -> pd.DataFrame:
    """The runs frame plus what Compare's own axes and parallel coordinates may show:
    every plottable catalogue metric a run recorded, its task scores (task:<task>:<metric>),
    the recipe's bits / group size / sparsity, and its name and full recipe."""
    from runs.tasks import score_columns  # the task columns' one reader

    df = runs_frame(jobs)
    results = [j.result or {} for j in jobs]
    for m in cat.RESULT:
        if m.axis and m.col not in df.columns and any(m.key in r for r in results):
            df[m.col] = [metric_cell(m, r) for r in results]
    tasks = [score_columns(r) for r in results]
    for col in sorted({c for t in tasks for c in t}):
        df[col] = [t.get(col, np.nan) for t in tasks]
    df["name"] = [run_title(j) for j in jobs]
    df["details"] = [recipe_details(recipe_steps(j)) for j in jobs]
    df["bits"] = [bits_label(r) for r in results]
    df["group_size"] = [as_float(_first_param(j, "group_size")) for j in jobs]
    df["sparsity"] = [recipe_sparsity(recipe_steps(j)) for j in jobs]
    return df


def text_label(blob: Any) -> str:
    """An uploaded text set as people know it: file name, size and SHA-256 (12 digits)."""
    return f"{blob.filename} ({fmt_bytes(blob.n_bytes)}, sha256 {blob.sha256[:12]})"
