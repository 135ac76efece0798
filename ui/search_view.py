"""The Search page's logic: plan a budget search, read its scores and verification runs
from the database, queue what is missing, and chart the predicted front against the
measured points (the page itself, app_pages/search.py, only lays widgets out).

The math is runs/search.py; the CLI twin is ``python -m workers search``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

from core.models import model_skeleton
from core.sensitivity import model_layers
from db import queue
from runs import catalogue as cat
from runs import search as S
from runs.spec import JobSpec
from ui.submit import build_spec

UNITS = {
    "bpw": "bits per weight",
    "mb": "MB (10^6 bytes)",
    "ms": "ms of the searched linears (latency, timed on this app's machine)",
}
BUDGET_LABEL = {"bpw": "bpw", "mb": "MB", "ms": "ms"}
LATENCY_M = {1: "decode step (1 token)", 512: "prefill (512 tokens)"}
CANDIDATES = list(S.DEFAULT_CANDIDATES)
ScoreTable = S.ScoreTable


def kind_of(unit: str) -> str:
    return S.SECONDS if unit == "ms" else S.BYTES


def front(table: S.ScoreTable, unit: str = "bpw") -> list[dict[str, Any]]:
    """The predicted front over a grid of budgets from the least to the most costly choice."""
    kind = kind_of(unit)
    return S.predicted_front(table, S.budget_grid(table, kind=kind), kind)


def cached_times(model: str, p: SearchPlan, m: int) -> dict | None:
    """This machine's cached layer times at ``m`` tokens, or None if one is missing."""
    from runs.search_latency import cached_seconds

    return cached_seconds(model_skeleton(model), p.layers, p.candidates, m)


def time_layers(model: str, p: SearchPlan, m: int) -> dict[str, dict[str, float]]:
    """Time every layer x candidate on this machine at ``m`` tokens (then cached)."""
    from core.models import load_model
    from runs.search_latency import LatencySettings, layer_seconds

    loaded = load_model(model)
    seconds, _ = layer_seconds(loaded.model, p.layers, p.candidates, LatencySettings(m=m))
    return seconds


class SearchInputError(ValueError):
    """Input the page refuses (the message says what is allowed)."""


@dataclass
class SearchPlan:
    template: JobSpec
    candidates: list[S.Candidate]
    layers: list[str]


def parse_budgets(text: str) -> list[float]:
    """``"3.5, 4.5, 6"`` -> [3.5, 4.5, 6.0]; SearchInputError if not positive numbers."""
    try:
        values = [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise SearchInputError(f"budgets must be comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise SearchInputError("budgets must be positive numbers")
    if len(values) > S.MAX_BUDGETS:
        raise SearchInputError(f"at most {S.MAX_BUDGETS} budgets")
    return values


def plan(sf: queue.Factory, model: str, names: list[str], data: tuple) -> SearchPlan:
    """The searched layers (linears inside the decoder blocks) and a validated job
    template; ValueError with the reason if refused."""
    cands = S.parse_candidates(names)
    layer_names, path = model_layers(model_skeleton(model))
    layers = [n for n in layer_names if n.startswith(path + ".")]
    if not layers:
        raise SearchInputError("the model has no linear layer inside its decoder blocks")
    calib, eval_set, ev, cs = data
    template, _ = build_spec(
        sf, model, S.scoring_recipe(cands[0], layers[0]), "", calib, eval_set, ev, cs
    )
    return SearchPlan(template, cands, layers)


def _records(sf: queue.Factory, p: SearchPlan) -> list[dict[str, Any]]:
    """Finished runs of the plan's model and settings, with their layer rows."""
    out = []
    for job in queue.finished_runs(sf):
        if job.model != p.template.model:
            continue
        spec = JobSpec.from_json(job.spec_json)
        if S.same_setting(spec, p.template):
            rows = [r.data for r in queue.layer_stats(sf, job.id)]
            out.append({"id": job.id, "recipe": spec.recipe, "metrics": job.result, "layers": rows})
    return out


def state(sf: queue.Factory, p: SearchPlan) -> tuple[S.ScoreTable, list[dict[str, Any]]]:
    """(the score table so far, the finished verification runs' points)."""
    records = _records(sf, p)
    table = S.scores_from_records(records, p.candidates, p.layers)
    return table, S.verification_points(records, table)


def queue_scoring(sf: queue.Factory, p: SearchPlan, table: S.ScoreTable, owner: str) -> int:
    """Queue every missing scoring job (one sweep per candidate); how many."""
    missing = table.missing()
    for jobs in S.scoring_jobs(p.template, p.candidates, missing).values():
        queue.submit_sweep(sf, model=p.template.model, jobs=jobs, owner=owner)
    return len(missing)


def solutions(table: S.ScoreTable, unit: str, budgets: list[float]) -> list[tuple[str, Any]]:
    """(label, Solution or None) per budget in ``unit`` ("bpw" or "mb")."""
    out = []
    for b in budgets:
        if unit == "ms":
            sol = S.solve(table, b / 1e3, S.SECONDS)
        else:
            sol = S.solve(table, S.budget_bytes(table, **{unit: b}))
        out.append((f"budget {b:g} {BUDGET_LABEL[unit]}", sol))
    return out


def queue_verification(
    sf: queue.Factory, p: SearchPlan, sols: list[tuple[str, Any]], owner: str
) -> int:
    """Queue one ordinary run per budget something fits; how many."""
    chosen = [(label, sol) for label, sol in sols if sol is not None]
    jobs = S.verification_jobs(p.template, p.candidates, chosen)
    if jobs:
        queue.submit_sweep(sf, model=p.template.model, jobs=jobs, owner=owner)
    return len(jobs)


def uniform_points(table: S.ScoreTable) -> list[dict[str, Any]]:
    """Each candidate on every searched layer, as the scores predict it."""
    n = max(1, table.total_weights())
    rows = []
    for c in table.candidates:
        if all(math.isfinite(table.score[la].get(c, math.nan)) for la in table.layers):
            nbytes = sum(table.nbytes[la][c] for la in table.layers)
            score = sum(table.score[la][c] for la in table.layers)
            row = {"candidate": c, "bpw": 8 * nbytes / n, "predicted": score}
            if table.seconds:
                row["ms"] = 1e3 * sum(table.seconds[la][c] for la in table.layers)
            rows.append(row)
    return rows


X_TITLE = {
    "bytes": "bits per weight of the searched layers (as stored)",
    "ms": "predicted ms of the searched linears (sum of their op times, this machine)",
}


def front_figure(
    front: list[dict[str, Any]],
    measured: list[dict[str, Any]],
    uniform: list[dict[str, Any]],
    unit: str = "bpw",
) -> go.Figure:
    """Predicted front (line), verification runs (measured KL, with their prediction) and
    uniform recipes (as predicted), KL against bits per weight of the searched layers, or
    against their predicted milliseconds (``unit="ms"``)."""
    by_time = unit == "ms"
    bpw = cat.PREDICTED_LINEAR_MS.key if by_time else cat.BITS_PER_WEIGHT.key
    measured = [r for r in measured if r.get(bpw) is not None]
    fig = go.Figure()
    fig.add_scatter(
        x=[r[bpw] for r in front],
        y=[r[S.PREDICTED_KL] for r in front],
        mode="lines+markers",
        name="predicted front (sum of layer scores)",
    )
    if measured:
        fig.add_scatter(
            x=[r[bpw] for r in measured],
            y=[r[cat.KL_TO_BASELINE.key] for r in measured],
            mode="markers",
            marker={"size": 12, "symbol": "diamond"},
            name="searched recipe, measured",
            customdata=[r[S.PREDICTED_KL] for r in measured],
            hovertemplate="%{x:.3f} bpw<br>measured KL %{y:.3g}<br>predicted %{customdata:.3g}",
        )
    if uniform:
        fig.add_scatter(
            x=[r["ms" if by_time else "bpw"] for r in uniform],
            y=[r["predicted"] for r in uniform],
            mode="markers+text",
            text=[r["candidate"] for r in uniform],
            textposition="top center",
            marker={"size": 10, "symbol": "x"},
            name="uniform recipes (predicted)",
        )
    fig.update_layout(
        xaxis_title=X_TITLE["ms" if by_time else "bytes"],
        yaxis_title=cat.KL_TO_BASELINE.axis,
        yaxis_type="log",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig
