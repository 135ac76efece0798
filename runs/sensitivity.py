"""Sensitivity sweeps: quantize one layer (or one block) at a time, rank the layers by the
perplexity each costs, and keep the most sensitive ones in higher precision.

Everything here is pure: names, step dicts and records in,
recipes (lists of step dicts, validated by the methods' configs) and rows out. A sweep
is stored as ordinary jobs sharing a ``sweep_id``; what makes it a sensitivity sweep is
that its recipes differ in nothing but ``targets`` (:func:`is_sensitivity_sweep`).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from core.recipe import DEFAULT_IGNORE, parse_step, recipe_from_steps
from core.registry import ConfigError
from runs import catalogue as cat
from runs.records import as_float

UnitKind = Literal["layer", "block"]
MAX_SENSITIVITY_JOBS = 64  # one submission queues at most this many jobs (one per unit)
# What the sensitive units keep: 8-bit round-to-nearest, one scale per output channel.
DEFAULT_HIGH_STEP: dict[str, Any] = {
    "method": "rtn",
    "bits": 8,
    "symmetric": True,
    "granularity": "channel",
}


@dataclass(frozen=True)
class Unit:
    """One thing a sweep job quantizes on its own."""

    label: str  # a linear's name, or a block's prefix
    pattern: str  # the recipe target that selects exactly it


def sweep_units(
    linear_names: Sequence[str],
    base_step: dict[str, Any],
    unit: UnitKind = "layer",
    block_path: str = "model.layers",
) -> list[Unit]:
    """The units a sweep visits: every linear ``base_step`` would compress (its targets and
    ignore apply), or every block holding at least one of them (``<block_path>.<i>.*``)."""
    step = parse_step(base_step)
    chosen = [n for n in linear_names if step.selects(n)]
    if unit == "layer":
        return [Unit(label=n, pattern=n) for n in chosen]
    if unit != "block":
        raise ConfigError(f"unit must be 'layer' or 'block', not {unit!r}")
    blocks: dict[int, None] = {}
    head = re.compile(re.escape(block_path) + r"\.(\d+)\.")
    for n in chosen:
        m = head.match(n)
        if m:
            blocks[int(m.group(1))] = None
    return [Unit(label=f"{block_path}.{i}", pattern=f"{block_path}.{i}.*") for i in sorted(blocks)]


def sensitivity_recipes(base_step: dict[str, Any], units: Sequence[Unit]) -> list[list[dict]]:
    """One single-step recipe per unit: ``base_step`` applied to that unit only (validated,
    every parameter spelled out)."""
    if not units:
        raise ConfigError("nothing to sweep: the step's targets select no linear layer")
    if len(units) > MAX_SENSITIVITY_JOBS:
        raise ConfigError(
            f"a sensitivity sweep queues at most {MAX_SENSITIVITY_JOBS} jobs, this one "
            f"{len(units)}: sweep whole blocks, or narrow the step's targets"
        )
    out = []
    for u in units:
        step = copy.deepcopy(base_step)
        step["targets"] = [u.pattern]
        step.setdefault("ignore", list(DEFAULT_IGNORE))
        out.append(recipe_from_steps([step]).to_list())
    return out


def is_sensitivity_sweep(recipes: Sequence[Sequence[dict[str, Any]]]) -> bool:
    """Whether recipes of one sweep differ only in which layers they target."""
    if len(recipes) < 2 or len({len(r) for r in recipes}) != 1 or not recipes[0]:
        return False

    def without_targets(r: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in s.items() if k != "targets"} for s in r]

    first = without_targets(recipes[0])
    same_rest = all(without_targets(r) == first for r in recipes[1:])
    targets = {tuple(tuple(s.get("targets") or ()) for s in r) for r in recipes}
    return same_rest and len(targets) == len(recipes)


def unit_of(recipe: Sequence[dict[str, Any]]) -> str:
    """The target pattern(s) of a sweep job's recipe, as one label."""
    return ", ".join(t for s in recipe for t in (s.get("targets") or []))


def sensitivity_points(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a finished (or partly finished) sensitivity sweep, most costly first.

    Each record has ``recipe`` (step dicts), ``metrics`` (a job result, maybe empty) and
    optionally ``id`` and ``status``. A row: unit, perplexity, baseline perplexity,
    delta (perplexity - baseline), relative cost (perplexity / baseline - 1), layer error.
    Units without a perplexity yet come last with NaN.
    """
    rows = []
    for r in records:
        m = r.get("metrics") or {}
        ppl = as_float(m.get(cat.PERPLEXITY.key), finite=True)
        base = as_float(m.get(cat.BASELINE_PERPLEXITY.key), finite=True)
        rows.append(
            {
                "id": r.get("id"),
                "status": r.get("status", ""),
                "unit": unit_of(r["recipe"]),
                cat.PERPLEXITY.key: ppl,
                cat.BASELINE_PERPLEXITY.key: base,
                "delta_ppl": ppl - base,
                "rel_cost": ppl / base - 1 if base > 0 else float("nan"),
                cat.LAYER_ERROR.key: as_float(m.get(cat.MEAN_LAYER_ERROR.key), finite=True),
            }
        )
    # NaN sorts last whichever way the finite values go.
    return sorted(rows, key=lambda x: (math.isnan(x["delta_ppl"]), -_finite(x["delta_ppl"])))


def _finite(v: float) -> float:
    return v if math.isfinite(v) else 0.0


def most_sensitive(points: Sequence[dict[str, Any]], n: int) -> list[str]:
    """The ``n`` units that cost the most perplexity (finished ones only)."""
    done = [p for p in points if math.isfinite(p["delta_ppl"])]
    done.sort(key=lambda p: -p["delta_ppl"])
    return [p["unit"] for p in done[: max(0, n)]]


def keep_sensitive_recipe(
    base_step: dict[str, Any],
    sensitive: Sequence[str],
    high_step: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """A mixed-precision recipe: ``base_step`` everywhere it normally applies except the
    ``sensitive`` units (added to its ignore), which ``high_step`` (default: rtn 8-bit per
    channel) compresses instead. Validated; every parameter spelled out."""
    low = copy.deepcopy(base_step)
    low["targets"] = [t for t in (low.get("targets") or ["*"]) if t not in sensitive] or ["*"]
    ignore = list(low.get("ignore") or DEFAULT_IGNORE)
    low["ignore"] = ignore + [s for s in sensitive if s not in ignore]
    steps = [low]
    if sensitive:
        high = copy.deepcopy(high_step or DEFAULT_HIGH_STEP)
        high["targets"] = list(sensitive)
        high["ignore"] = ignore
        steps.append(high)
    return recipe_from_steps(steps).to_list()
