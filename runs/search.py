"""Budget-driven recipe search: one candidate per linear layer, the least summed loss
under a byte budget, and the recipe that realises the choice.

Everything here is pure (names, step dicts, numbers in; recipes and rows out):

- a :class:`Candidate` is what one layer may become (a list of steps without targets);
- a :class:`ScoreTable` holds, per layer and candidate, the *score* (the increase in KL
  to the baseline when only that layer is compressed so) and the layer's stored bytes;
  it is filled from finished sensitivity-style jobs (:func:`scores_from_records`) or by
  a measurement in one process (``workers/search.py``);
- :func:`solve` is an exact multiple-choice knapsack (dynamic programming over bytes in
  units of their greatest common divisor), :func:`predicted_front` sweeps budgets;
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
        """The candidates measured for ``layer``."""
        return [c for c in self.candidates if math.isfinite(self.score[layer].get(c, math.nan))]

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "layer": layer,
                "candidate": c,
                "score": self.score[layer][c],
                "bytes": self.nbytes[layer][c],
                cat.BITS_PER_WEIGHT.key: 8 * self.nbytes[layer][c] / max(1, self.n_weights[layer]),
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
    """One candidate per layer, with the predicted (summed) score and bytes."""

    choice: dict[str, str]
    score: float
    nbytes: int
    budget: int


def _units(table: ScoreTable, budget: int) -> int:
    """Bytes per DP unit: the GCD of every option's bytes (exact), or coarser if the table
    would exceed MAX_DP_STATES (then bytes are rounded up: the answer stays in budget)."""
    g = 0
    for layer in table.layers:
        for c in table.options(layer):
            g = math.gcd(g, table.nbytes[layer][c])
    g = max(1, g)
    return max(g, math.ceil(budget / MAX_DP_STATES))


def solve(table: ScoreTable, budget: int) -> Solution | None:
    """The choice minimising the summed score with summed bytes <= ``budget`` (exact when
    the bytes' GCD gives at most MAX_DP_STATES units); None when nothing fits."""
    for layer in table.layers:
        if not table.options(layer):
            raise ConfigError(f"layer {layer} has no measured candidate")
    unit = _units(table, budget)
    cap = budget // unit
    inf = math.inf
    best = np.full(cap + 1, inf)
    best[0] = 0.0
    picks = []  # per layer: (cap+1) index of the option chosen at each used-units value
    for layer in table.layers:
        opts = table.options(layer)
        new = np.full(cap + 1, inf)
        arg = np.full(cap + 1, -1, dtype=np.int64)
        for k, c in enumerate(opts):
            w = math.ceil(table.nbytes[layer][c] / unit)
            if w > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[w:] = best[: cap + 1 - w] + table.score[layer][c]
            better = cand < new
            new[better], arg[better] = cand[better], k
        best = new
        picks.append((opts, arg))
    if not np.isfinite(best).any():
        return None
    used = int(np.argmin(best))
    return _trace(table, picks, used, unit, budget, float(best[used]))


def _trace(table: ScoreTable, picks: list, used: int, unit: int, budget: int, score: float):
    choice: dict[str, str] = {}
    for layer, (opts, arg) in zip(reversed(table.layers), reversed(picks), strict=True):
        c = opts[int(arg[used])]
        choice[layer] = c
        used -= math.ceil(table.nbytes[layer][c] / unit)
    choice = {layer: choice[layer] for layer in table.layers}
    nbytes = sum(table.nbytes[layer][c] for layer, c in choice.items())
    total = sum(table.score[layer][c] for layer, c in choice.items())
    assert math.isclose(total, score, rel_tol=1e-9, abs_tol=1e-12)
    return Solution(choice, total, nbytes, budget)


def predicted_front(table: ScoreTable, budgets: Sequence[int]) -> list[dict[str, Any]]:
    """One row per budget: budget, predicted score and bytes, bits per weight, the choice
    counts (budgets nothing fits are left out)."""
    if len(budgets) > MAX_BUDGETS:
        raise ConfigError(f"at most {MAX_BUDGETS} budgets in one front")
    rows = []
    n = max(1, table.total_weights())
    for b in budgets:
        sol = solve(table, int(b))
        if sol is None:
            continue
        counts: dict[str, int] = {}
        for c in sol.choice.values():
            counts[c] = counts.get(c, 0) + 1
        rows.append(
            {
                "budget_bytes": int(b),
                cat.PREDICTED_KL.key: sol.score,
                cat.PREDICTED_BYTES.key: sol.nbytes,
                cat.BITS_PER_WEIGHT.key: 8 * sol.nbytes / n,
                "choice": counts,
            }
        )
    return rows


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
            prediction={PREDICTED_KL: sol.score, PREDICTED_BYTES: sol.nbytes},
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
            }
        )
    return rows


def budget_grid(table: ScoreTable, n: int = 24) -> list[int]:
    """``n`` budgets from the smallest to the largest choice's bytes (for the front)."""
    lo = sum(min(table.nbytes[la][c] for c in table.options(la)) for la in table.layers)
    hi = sum(max(table.nbytes[la][c] for c in table.options(la)) for la in table.layers)
    return sorted({int(lo + (hi - lo) * i / max(1, n - 1)) for i in range(n)})
