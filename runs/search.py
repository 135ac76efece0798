"""Budget-driven recipe search: one candidate per linear layer, the least summed loss
under a byte (or time) budget, and the recipe that realises the choice.

Everything here is pure (names, step dicts, numbers in; recipes and rows out):

- a :class:`Candidate` is what one layer may become (a list of steps without targets);
- a :class:`ScoreTable` holds, per layer and candidate, the *score* (the increase in KL
  to the baseline when only that layer is compressed so) and the layer's stored bytes;
  it is filled from finished sensitivity-style jobs (:func:`scores_from_records`) or by
  a measurement in one process (``workers/search.py``);
- :func:`solve` is an exact multiple-choice knapsack under a byte budget (dynamic
  programming over bytes in units of their greatest common divisor) or a time budget
  (each layer x candidate's op time at a target shape, measured by
  ``runs/search_latency.py``: an exact MILP with scipy, else the DP over 1,000 bins of the
  budget, times rounded up); :func:`predicted_front` sweeps budgets;
- :func:`mixed_recipe` turns a choice into an ordinary per-layer recipe (targets per
  step), which a verification run measures like any other.

The prediction assumes the layers' losses add up; the verification runs say where they
do not (their result carries both: ``runs.catalogue`` PREDICTED_KL / PREDICTED_BYTES).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.recipe import recipe_from_steps
from core.registry import ConfigError
from runs import catalogue as cat
from runs.records import as_float
from runs.spec import JobSpec

MAX_DP_STATES = 4_000_000  # byte units the exact solver tabulates (else coarser units)
MAX_BUDGETS = 50  # budgets in one predicted front
TIME_BINS = 1000  # a time budget's DP resolution (times rounded up: never over budget)
BYTES, SECONDS = "bytes", "seconds"  # the two kinds of budget
PREDICTED_KL = cat.PREDICTED_KL.key
PREDICTED_BYTES = cat.PREDICTED_BYTES.key


@dataclass(frozen=True)
class Candidate:
    """One way to store a layer: ``steps`` (method + parameters, no targets)."""

    name: str
    steps: tuple[dict[str, Any], ...]

    def validate(self) -> None:
        """ConfigError if a step is not a valid recipe step."""
        recipe_from_steps([{**s, "targets": ["x"]} for s in self.steps])


# The defaults: keep 16-bit, int8 per channel, GPTQ 4 and 3 bits, 2:4 + int4.
DEFAULT_CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        Candidate("fp16", ({"method": "cast", "dtype": "float16"},)),
        Candidate("rtn-int8", ({"method": "rtn", "bits": 8, "granularity": "channel"},)),
        Candidate("gptq-4bit-g128", ({"method": "gptq", "bits": 4, "group_size": 128},)),
        Candidate("gptq-3bit-g128", ({"method": "gptq", "bits": 3, "group_size": 128},)),
        Candidate(
            "2:4+int4",
            (
                {"method": "wanda", "pattern": "2:4"},
                {"method": "rtn", "bits": 4, "granularity": "group", "group_size": 128},
            ),
        ),
    )
}


def parse_candidates(names: Sequence[str], extra: Mapping[str, Candidate] | None = None) -> list:
    """Candidates by name (the defaults, or ``extra``); ConfigError naming what is allowed."""
    known = {**DEFAULT_CANDIDATES, **(extra or {})}
    out = []
    for n in names:
        if n not in known:
            raise ConfigError(f"unknown candidate {n!r}; known: {', '.join(known)}")
        out.append(known[n])
    if len({c.name for c in out}) != len(out):
        raise ConfigError("a candidate is named twice")
    if not out:
        raise ConfigError("the search needs at least one candidate")
    return out


def candidate_from_json(name: str, steps: Any) -> Candidate:
    """A user's own candidate (steps without targets), validated."""
    if isinstance(steps, dict):
        steps = [steps]
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"candidate {name!r} needs a list of steps")
    cand = Candidate(name, tuple({k: v for k, v in s.items() if k != "targets"} for s in steps))
    cand.validate()
    return cand


def scoring_recipe(cand: Candidate, layer: str) -> list[dict[str, Any]]:
    """The recipe that compresses ``layer`` alone with ``cand`` (a sensitivity job)."""
    steps = [{**copy.deepcopy(s), "targets": [layer], "ignore": []} for s in cand.steps]
    return recipe_from_steps(steps).to_list()


@dataclass
class ScoreTable:
    """score[layer][candidate] (KL increase, nats/token) and nbytes[layer][candidate]."""

    layers: list[str]
    candidates: list[str]
    score: dict[str, dict[str, float]] = field(default_factory=dict)
    nbytes: dict[str, dict[str, int]] = field(default_factory=dict)
    n_weights: dict[str, int] = field(default_factory=dict)
    # seconds[layer][candidate]: the layer's op time at the target shape (latency budget)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)  # how the seconds were measured

    def set(self, layer: str, cand: str, score: float, nbytes: int, n_weights: int) -> None:
        self.score.setdefault(layer, {})[cand] = float(score)
        self.nbytes.setdefault(layer, {})[cand] = int(nbytes)
        self.n_weights[layer] = int(n_weights)

    def missing(self) -> list[tuple[str, str]]:
        """(layer, candidate) pairs not measured yet (or without a finite score)."""
        return [
            (layer, c)
            for layer in self.layers
            for c in self.candidates
            if not math.isfinite(self.score.get(layer, {}).get(c, math.nan))
        ]

    def total_weights(self) -> int:
        return sum(self.n_weights.get(layer, 0) for layer in self.layers)

    def options(self, layer: str) -> list[str]:
        """The candidates measured for ``layer`` (with a time too, once times are set)."""
        timed = bool(self.seconds)
        return [
            c
            for c in self.candidates
            if math.isfinite(self.score[layer].get(c, math.nan))
            and (not timed or math.isfinite(self.seconds.get(layer, {}).get(c, math.nan)))
        ]

    def set_seconds(self, seconds: Mapping[str, Mapping[str, float]], how: dict) -> None:
        """Each layer x candidate's op time (seconds) and how it was measured."""
        self.seconds = {la: {c: float(t) for c, t in row.items()} for la, row in seconds.items()}
        self.latency = dict(how)

    def cost(self, kind: str, layer: str, cand: str) -> float:
        """What ``cand`` costs on ``layer`` against a budget of ``kind`` (BYTES or SECONDS)."""
        if kind == BYTES:
            return self.nbytes[layer][cand]
        if kind == SECONDS:
            return self.seconds[layer][cand]
        raise ConfigError(f"unknown budget kind {kind!r}: {BYTES} or {SECONDS}")

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "layer": layer,
                "candidate": c,
                "score": self.score[layer][c],
                "bytes": self.nbytes[layer][c],
                cat.BITS_PER_WEIGHT.key: 8 * self.nbytes[layer][c] / max(1, self.n_weights[layer]),
                **({"ms": 1e3 * self.seconds[layer][c]} if self.seconds else {}),
            }
            for layer in self.layers
            for c in self.options(layer)
        ]


def budget_bytes(table: ScoreTable, *, mb: float | None = None, bpw: float | None = None) -> int:
    """A budget in bytes for the searched layers, from MB (10^6 bytes) or bits per weight."""
    if (mb is None) == (bpw is None):
        raise ConfigError("give the budget as exactly one of MB or bits per weight")
    value = mb if mb is not None else bpw
    if value is None or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"the budget must be a positive number, got {value!r}")
    if mb is not None:
        return int(mb * 1e6)
    return int(bpw * table.total_weights() / 8)


@dataclass(frozen=True)
class Solution:
    """One candidate per layer, with the predicted (summed) score, bytes and, where the
    table has times, seconds; ``budget`` in bytes or seconds as ``kind`` says."""

    choice: dict[str, str]
    score: float
    nbytes: int
    budget: float
    seconds: float | None = None
    kind: str = BYTES


def _units(table: ScoreTable, budget: int) -> int:
    """Bytes per DP unit: the GCD of every option's bytes (exact), or coarser if the table
    would exceed MAX_DP_STATES (then bytes are rounded up: the answer stays in budget)."""
    g = 0
    for layer in table.layers:
        for c in table.options(layer):
            g = math.gcd(g, table.nbytes[layer][c])
    g = max(1, g)
    return max(g, math.ceil(budget / MAX_DP_STATES))


def solve(table: ScoreTable, budget: float, kind: str = BYTES) -> Solution | None:
    """The choice minimising the summed score with summed cost <= ``budget``; None when
    nothing fits. Bytes: dynamic programming in units of the bytes' GCD (exact when that
    gives at most MAX_DP_STATES units). Seconds: an exact MILP (scipy's HiGHS) when scipy
    is installed, else the same DP over TIME_BINS bins of the budget with each time rounded
    up to a bin (never over budget; optimal over the rounded times)."""
    for layer in table.layers:
        if not table.options(layer):
            raise ConfigError(f"layer {layer} has no measured candidate")
    if kind == SECONDS:
        if not table.seconds:
            raise ConfigError("a time budget needs the layers' measured times")
        sol = _solve_milp(table, float(budget))
        if sol is not _UNSOLVED:
            return sol
        unit, cap = budget / TIME_BINS, TIME_BINS
    else:
        unit = _units(table, int(budget))
        cap = int(budget) // unit
    return _solve_dp(table, budget, kind, unit, cap)


def _weights(table: ScoreTable, kind: str, unit: float) -> dict[str, dict[str, int]]:
    """Each option's cost in DP units, rounded up (an exact integer for bytes over GCD)."""
    out = {}
    for layer in table.layers:
        row = {}
        for c in table.options(layer):
            cost = table.cost(kind, layer, c)
            row[c] = -(-cost // unit) if kind == BYTES else math.ceil(cost / unit - 1e-9)
        out[layer] = {c: int(w) for c, w in row.items()}
    return out


def _solve_dp(table: ScoreTable, budget: float, kind: str, unit: float, cap: int):
    """Multiple-choice knapsack over ``cap`` units of ``unit`` (cost rounded up)."""
    weights = _weights(table, kind, unit)
    best = np.full(cap + 1, math.inf)
    best[0] = 0.0
    picks = []  # per layer: (cap+1) index of the option chosen at each used-units value
    for layer in table.layers:
        opts = table.options(layer)
        new = np.full(cap + 1, math.inf)
        arg = np.full(cap + 1, -1, dtype=np.int64)
        for k, c in enumerate(opts):
            w = weights[layer][c]
            if w > cap:
                continue
            cand = np.full(cap + 1, math.inf)
            cand[w:] = best[: cap + 1 - w] + table.score[layer][c]
            better = cand < new
            new[better], arg[better] = cand[better], k
        best = new
        picks.append((opts, arg))
    if not np.isfinite(best).any():
        return None
    used = int(np.argmin(best))
    choice: dict[str, str] = {}
    for layer, (opts, arg) in zip(reversed(table.layers), reversed(picks), strict=True):
        choice[layer] = opts[int(arg[used])]
        used -= weights[layer][choice[layer]]
    return _solution(table, choice, budget, kind)


def _solution(table: ScoreTable, choice: Mapping[str, str], budget: float, kind: str):
    choice = {layer: choice[layer] for layer in table.layers}
    nbytes = sum(table.nbytes[layer][c] for layer, c in choice.items())
    total = sum(table.score[layer][c] for layer, c in choice.items())
    secs = sum(table.seconds[la][c] for la, c in choice.items()) if table.seconds else None
    return Solution(choice, total, nbytes, budget, secs, kind)


_UNSOLVED = object()  # the MILP could not answer (no scipy, solver failure): use the DP


def _solve_milp(table: ScoreTable, budget: float) -> Any:
    """Exact time-budget choice by scipy.optimize.milp: x[l, c] in {0, 1}, one per layer,
    sum(seconds * x) <= budget. Scores are shifted per layer (the layer's least) and scaled
    to at most 1 so HiGHS's absolute tolerances do not hide differences; None if nothing
    fits; _UNSOLVED if scipy is missing or the answer does not check out."""
    try:
        from scipy.optimize import Bounds, LinearConstraint, milp
    except ImportError:
        return _UNSOLVED
    pairs = [(la, c) for la in table.layers for c in table.options(la)]
    low = {la: min(table.score[la][c] for c in table.options(la)) for la in table.layers}
    obj = np.array([table.score[la][c] - low[la] for la, c in pairs])
    obj = obj / max(float(obj.max(initial=0.0)), 1e-300)
    one = np.array([[1.0 if la == layer else 0.0 for la, _ in pairs] for layer in table.layers])
    t = np.array([[table.seconds[la][c] / budget for la, c in pairs]])
    res = milp(
        obj,
        constraints=[LinearConstraint(one, 1, 1), LinearConstraint(t, -np.inf, 1)],
        integrality=np.ones(len(pairs)),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0},
    )
    if res.status == 2:  # infeasible
        return None
    if not res.success or res.x is None:
        return _UNSOLVED
    choice = {la: c for (la, c), x in zip(pairs, res.x, strict=True) if x > 0.5}
    if set(choice) != set(table.layers):
        return _UNSOLVED
    sol = _solution(table, choice, budget, SECONDS)
    return sol if sol.seconds is not None and sol.seconds <= budget else _UNSOLVED


def predicted_front(
    table: ScoreTable, budgets: Sequence[float], kind: str = BYTES
) -> list[dict[str, Any]]:
    """One row per budget: budget, predicted score and bytes, bits per weight (and the
    predicted linear ms where the table has times), the choice counts (budgets nothing
    fits are left out)."""
    if len(budgets) > MAX_BUDGETS:
        raise ConfigError(f"at most {MAX_BUDGETS} budgets in one front")
    rows = []
    for b in budgets:
        sol = solve(table, b if kind == SECONDS else int(b), kind)
        if sol is not None:
            rows.append(front_row(table, sol))
    return rows


def front_row(table: ScoreTable, sol: Solution) -> dict[str, Any]:
    """A solution as a row of the front (budget, predictions, choice counts)."""
    counts: dict[str, int] = {}
    for c in sol.choice.values():
        counts[c] = counts.get(c, 0) + 1
    row: dict[str, Any] = (
        {"budget_ms": 1e3 * sol.budget} if sol.kind == SECONDS else {"budget_bytes": sol.budget}
    )
    row |= {
        cat.PREDICTED_KL.key: sol.score,
        cat.PREDICTED_BYTES.key: sol.nbytes,
        cat.BITS_PER_WEIGHT.key: 8 * sol.nbytes / max(1, table.total_weights()),
    }
    if sol.seconds is not None:
        row[cat.PREDICTED_LINEAR_MS.key] = 1e3 * sol.seconds
    return row | {"choice": counts}


def mixed_recipe(choice: Mapping[str, str], candidates: Sequence[Candidate]) -> list[dict]:
    """The ordinary recipe of a choice: each candidate's steps (in the candidates' order)
    with targets = the layers that chose it; validated, every parameter spelled out."""
    steps = []
    for cand in candidates:
        layers = [layer for layer, c in choice.items() if c == cand.name]
        if not layers:
            continue
        for s in cand.steps:
            steps.append({**copy.deepcopy(s), "targets": layers, "ignore": []})
    if not steps:
        raise ConfigError("the choice compresses no layer")
    return recipe_from_steps(steps).to_list()


def scores_from_records(
    records: Sequence[dict[str, Any]], candidates: Sequence[Candidate], layers: Sequence[str]
) -> ScoreTable:
    """A ScoreTable from finished scoring jobs. A record has ``recipe`` (step dicts),
    ``metrics`` (the result) and ``layers`` (its layer rows); a job scores the candidate
    whose steps it ran, on the one layer all its steps target. Unknown jobs are skipped."""
    table = ScoreTable(list(layers), [c.name for c in candidates])
    for r in records:
        hit = _scored_pair(r.get("recipe") or [], candidates)
        kl = as_float((r.get("metrics") or {}).get(cat.KL_TO_BASELINE.key), finite=True)
        if hit is None or hit[0] not in table.layers or not math.isfinite(kl):
            continue
        layer, cand = hit
        row = next((x for x in r.get("layers") or [] if x.get("name") == layer), None)
        if row is None or row.get(cat.WEIGHT_BYTES.key) is None:
            continue
        table.set(layer, cand, kl, int(row[cat.WEIGHT_BYTES.key]), int(row.get("n_weights") or 0))
    return table


def _scored_pair(recipe: Sequence[dict[str, Any]], candidates: Sequence[Candidate]):
    """(layer, candidate name) a scoring recipe measures, or None."""
    targets = {tuple(s.get("targets") or ()) for s in recipe}
    if len(targets) != 1:
        return None
    (t,) = targets
    if len(t) != 1:
        return None
    for cand in candidates:
        try:
            if scoring_recipe(cand, t[0]) == [dict(s) for s in recipe]:
                return t[0], cand.name
        except ConfigError:
            continue
    return None


# --- jobs: what the Search page and ``python -m workers search`` queue -------------


def same_setting(spec: JobSpec, template: JobSpec) -> bool:
    """Whether a stored job ran with the template's model, data and settings (its recipe
    and prediction aside): only such jobs' numbers can be compared."""
    return dataclasses.replace(spec, recipe=template.recipe, recipe_name="", prediction={}) == (
        dataclasses.replace(template, recipe_name="", prediction={})
    )


def scoring_jobs(
    template: JobSpec, candidates: Sequence[Candidate], missing: Sequence[tuple[str, str]]
) -> dict[str, list[tuple[str, str]]]:
    """Per candidate, the (label, spec JSON) of each missing scoring job (one layer each)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for cand in candidates:
        for layer, c in missing:
            if c == cand.name:
                spec = dataclasses.replace(template, recipe=scoring_recipe(cand, layer))
                label = f"search score {cand.name} only {layer}"
                out.setdefault(cand.name, []).append((label, spec.to_json()))
    return out


def prediction(sol: Solution) -> dict[str, float]:
    """What a verification run carries (copied into its result beside the measurement)."""
    out = {PREDICTED_KL: sol.score, PREDICTED_BYTES: sol.nbytes}
    if sol.seconds is not None:
        out[cat.PREDICTED_LINEAR_MS.key] = 1e3 * sol.seconds
    return out


def verification_jobs(
    template: JobSpec, candidates: Sequence[Candidate], sols: Sequence[tuple[str, Solution]]
) -> list[tuple[str, str]]:
    """(label, spec JSON) of one ordinary run per (budget label, solution): the mixed
    recipe, with the prediction it is checked against."""
    jobs = []
    for name, sol in sols:
        spec = dataclasses.replace(
            template,
            recipe=mixed_recipe(sol.choice, candidates),
            recipe_name="",
            prediction=prediction(sol),
        )
        jobs.append((f"search {name}", spec.to_json()))
    return jobs


def verification_points(records: Sequence[dict[str, Any]], table: ScoreTable) -> list[dict]:
    """Predicted vs measured of finished verification runs (records: ``id``, ``metrics``,
    ``layers``): KL both ways, bytes of the searched layers both ways, bits per weight."""
    rows = []
    n_weights, searched_names = table.total_weights(), set(table.layers)
    for r in records:
        m = r.get("metrics") or {}
        pk = as_float(m.get(PREDICTED_KL), finite=True)
        if not math.isfinite(pk):
            continue
        searched = sum(
            int(x.get(cat.WEIGHT_BYTES.key) or 0)
            for x in r.get("layers") or []
            if x.get("name") in searched_names
        )
        rows.append(
            {
                "id": r.get("id"),
                PREDICTED_KL: pk,
                cat.KL_TO_BASELINE.key: as_float(m.get(cat.KL_TO_BASELINE.key)),
                PREDICTED_BYTES: m.get(PREDICTED_BYTES),
                "measured_bytes": searched,
                cat.BITS_PER_WEIGHT.key: 8 * searched / max(1, n_weights),
                cat.PREDICTED_LINEAR_MS.key: m.get(cat.PREDICTED_LINEAR_MS.key),
                **_measured_latency(m),
            }
        )
    return rows


def _measured_latency(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The run's own whole-model latency (decode ms per token at batch 1, prefill ms at
    its prompt length), to set beside a latency search's predicted linear time."""
    tok_s = as_float(metrics.get(cat.DECODE_TOK_S.key), finite=True)
    return {
        "decode_ms": 1e3 / tok_s if math.isfinite(tok_s) and tok_s > 0 else None,
        cat.PREFILL_MS.key: metrics.get(cat.PREFILL_MS.key),
    }


def budget_grid(table: ScoreTable, n: int = 24, kind: str = BYTES) -> list[float]:
    """``n`` budgets from the least to the most costly choice (for the front): bytes, or
    seconds of the summed layer times."""
    lo = sum(min(table.cost(kind, la, c) for c in table.options(la)) for la in table.layers)
    hi = sum(max(table.cost(kind, la, c) for c in table.options(la)) for la in table.layers)
    if kind == SECONDS:
        return sorted({lo + (hi - lo) * i / max(1, n - 1) for i in range(n)})
    return sorted({int(lo + (hi - lo) * i / max(1, n - 1)) for i in range(n)})
