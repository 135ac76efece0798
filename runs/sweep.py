"""Sweeps: one submission, many recipes that differ in one numeric parameter of one step.

``expand_sweep`` turns a base recipe into one validated recipe per value (a bad value
is refused with the message of the method's own config); ``swept_parameter`` and
``sweep_points`` recover, from the recipes a sweep stored, which parameter varied and
the (value, metrics) points the Compare page plots.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from core.recipe import recipe_from_steps
from core.registry import ConfigError, describe_params, get_method
from runs import catalogue as cat
from runs.spec import JobSpec

MAX_SWEEP_POINTS = 50  # one submission queues at most this many jobs


def numeric_params(method: str) -> list[str]:
    """The parameters of ``method`` that take an int or a float (booleans excluded)."""
    out = []
    for p in describe_params(get_method(method).config_cls):
        types = set(p["type"].split("|"))
        if types & {"int", "float"} and not p["choices"]:
            out.append(p["name"])
    return out


def sweep_values(start: float, stop: float, step: float) -> list[float]:
    """``start`` to ``stop`` inclusive by ``step``, rounded so 0.1 + 0.2 prints as 0.3."""
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise ConfigError("sweep start, stop and step must be finite numbers")
    if step == 0:
        raise ConfigError("the sweep step must be non-zero (start:stop:step, e.g. 0.1:0.5:0.1)")
    if step < 0:
        raise ConfigError(f"the sweep step must be positive, got {step}")
    if stop < start:
        raise ConfigError(f"sweep stop {stop} is below its start {start}")
    span = (stop - start) / step
    n = int(math.floor(span + 1e-9)) + 1 if math.isfinite(span) else math.inf
    if n > MAX_SWEEP_POINTS:
        raise ConfigError(f"a sweep has at most {MAX_SWEEP_POINTS} points, this one {n}")
    return [round(start + i * step, 10) for i in range(n)]


def _coerce(method: str, param: str, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"sweep value {value!r} for {method}.{param} is not a number")
    kind = next(
        p["type"] for p in describe_params(get_method(method).config_cls) if p["name"] == param
    )
    if "float" not in kind.split("|"):
        if float(value) != int(value):
            raise ConfigError(f"{method}.{param} takes whole numbers, got {value!r}")
        return int(value)
    return float(value)


def expand_sweep(
    base_steps: list[dict[str, Any]], step_index: int, param: str, values: Sequence[float]
) -> list[list[dict[str, Any]]]:
    """One recipe (list of step dicts) per value, ``base_steps[step_index][param] = value``.

    Every recipe is parsed and validated by the method's config; the returned steps are
    the normalised form (every parameter spelled out), ready for a JobSpec.
    """
    if not isinstance(base_steps, list) or not base_steps:
        raise ConfigError("a sweep needs a recipe with at least one step")
    if not 0 <= step_index < len(base_steps):
        raise ConfigError(f"step_index={step_index} is out of range: 0..{len(base_steps) - 1}")
    method = str(base_steps[step_index].get("method", ""))
    allowed = numeric_params(method)
    if param not in allowed:
        raise ConfigError(
            f"{param!r} cannot be swept for {method}: numeric parameters are "
            f"{', '.join(allowed) or 'none'}"
        )
    if not values:
        raise ConfigError("a sweep needs at least one value")
    if len(values) > MAX_SWEEP_POINTS:
        raise ConfigError(f"a sweep has at most {MAX_SWEEP_POINTS} points, got {len(values)}")
    coerced = [_coerce(method, param, v) for v in values]
    if len(set(coerced)) != len(coerced):
        raise ConfigError(f"sweep values repeat: {list(values)}")
    out = []
    for v in coerced:
        steps = copy.deepcopy(base_steps)
        steps[step_index][param] = v
        try:
            out.append(recipe_from_steps(steps).to_list())
        except ConfigError as e:
            raise ConfigError(f"sweep value {param}={v!r}: {e}") from None
    return out


def sweep_specs(
    spec: JobSpec, label: str, step_index: int, param: str, values: Sequence[float]
) -> list[tuple[str, JobSpec]]:
    """(label, job spec) per swept value of ``spec``'s recipe, each validated (ConfigError
    for a refused value, before anything is queued)."""
    recipes = expand_sweep(spec.recipe, step_index, param, values)
    return [
        (
            f"{label} {param}={r[step_index][param]}",
            dataclasses.replace(spec, recipe=r, recipe_name=""),
        )
        for r in recipes
    ]


def parse_sweep_arg(text: str) -> tuple[str, list[float]]:
    """``"sparsity=0.1:0.7:0.1"`` (start:stop:step) or ``"bits=2,3,4"`` -> (param, values)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ConfigError(f"sweep {text!r} must look like 'param=start:stop:step' or 'param=a,b,c'")
    parts = rest.split(":") if ":" in rest else rest.split(",")
    if ":" in rest and len(parts) != 3:
        raise ConfigError(f"sweep {text!r}: a range is start:stop:step, three numbers")
    if len(parts) > MAX_SWEEP_POINTS:
        raise ConfigError(f"a sweep has at most {MAX_SWEEP_POINTS} points, got {len(parts)}")
    try:
        numbers = [float(x) for x in parts]
    except ValueError:
        raise ConfigError(f"sweep {text!r}: values must be numbers") from None
    if not all(math.isfinite(v) for v in numbers):
        raise ConfigError(f"sweep {text!r}: values must be finite numbers")
    if ":" in rest:
        return name.strip(), sweep_values(*numbers)
    return name.strip(), numbers


def swept_parameter(recipes: list[list[dict[str, Any]]]) -> tuple[int, str] | None:
    """The (step index, parameter) whose value differs between the recipes of one sweep,
    or None when they do not differ in exactly one numeric parameter."""
    if len(recipes) < 2 or len({len(r) for r in recipes}) != 1:
        return None
    found = []
    for i in range(len(recipes[0])):
        keys = set().union(*(r[i].keys() for r in recipes))
        for k in sorted(keys):
            vals = [r[i].get(k) for r in recipes]
            if any(v != vals[0] for v in vals):
                found.append((i, k, vals))
    if len(found) != 1:
        return None
    i, k, vals = found[0]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)
    return (i, k) if numeric else None


def sweep_points(
    records: list[dict[str, Any]], metric: str = cat.PERPLEXITY.key
) -> list[dict[str, Any]]:
    """Plot rows from finished jobs: each record has ``sweep_id``, ``recipe`` (step
    dicts) and ``metrics``. One row per job: series (method of the swept step, plus the
    sweep id when a method was swept twice), param, value, and the metric."""
    by_sweep: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("sweep_id"):
            by_sweep.setdefault(str(r["sweep_id"]), []).append(r)
    rows: list[dict[str, Any]] = []
    methods_seen: dict[str, int] = {}
    for sid, recs in by_sweep.items():
        found = swept_parameter([r["recipe"] for r in recs])
        if found is None:
            continue
        i, param = found
        method = str(recs[0]["recipe"][i]["method"])
        methods_seen[method] = methods_seen.get(method, 0) + 1
        series = method if methods_seen[method] == 1 else f"{method} ({sid[:6]})"
        for r in recs:
            value = r["metrics"].get(metric)
            if value is None:
                continue
            rows.append(
                {
                    "sweep_id": sid,
                    "series": series,
                    "param": param,
                    "value": r["recipe"][i][param],
                    metric: value,
                }
            )
    return sorted(rows, key=lambda x: (x["series"], x["value"]))


# --- seed groups: one recipe repeated over calibration seeds -------------------------

MAX_SEEDS = 20  # one seed group queues at most this many runs


def seed_specs(spec: JobSpec, label: str, n_seeds: int) -> list[tuple[str, JobSpec]]:
    """(label, job spec) per calibration seed ``seed, seed + 1, ..., seed + n_seeds - 1``
    of ``spec`` (its own seed first): a seed group, queued as one sweep."""
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or not 2 <= n_seeds <= MAX_SEEDS:
        raise ConfigError(f"a seed group repeats a run over 2..{MAX_SEEDS} seeds, got {n_seeds!r}")
    first = spec.calib_settings.seed
    return [
        (
            f"{label} seed={first + i}",
            dataclasses.replace(
                spec, calib_settings=dataclasses.replace(spec.calib_settings, seed=first + i)
            ),
        )
        for i in range(n_seeds)
    ]


def _without_seed(spec: dict[str, Any]) -> str:
    """A stored spec as JSON text with its calibration seed left out."""
    import json

    calib = {k: v for k, v in (spec.get("calib_settings") or {}).items() if k != "seed"}
    return json.dumps({**spec, "calib_settings": calib}, sort_keys=True, default=str)


def _spread(values: list[float]) -> dict[str, float]:
    import statistics

    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def seed_group_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per seed group among ``records`` (each: ``sweep_id``, ``label``, ``spec``
    (the stored spec dict) and ``metrics``): the sweeps whose finished runs have the same
    spec but for distinct calibration seeds, at least two of them. A row holds sweep_id,
    label (the first run's, its seed suffix cut), n, seeds, and per metric of
    ``cat.SEED_GROUP`` its ``<key>_mean``, ``_std`` (sample), ``_min`` and ``_max``."""
    by_sweep: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("sweep_id") and r.get("spec"):
            by_sweep.setdefault(str(r["sweep_id"]), []).append(r)
    rows = []
    for sid, recs in by_sweep.items():
        seeds = [(r["spec"].get("calib_settings") or {}).get("seed") for r in recs]
        same = len({_without_seed(r["spec"]) for r in recs}) == 1
        if len(recs) < 2 or not same or len(set(seeds)) != len(seeds):
            continue
        row: dict[str, Any] = {
            "sweep_id": sid,
            "label": str(recs[0].get("label", "")).rsplit(" seed=", 1)[0],
            "n": len(recs),
            "seeds": sorted(seeds),
        }
        for m in cat.SEED_GROUP:
            vals = [float(r["metrics"][m.key]) for r in recs if r["metrics"].get(m.key) is not None]
            if len(vals) == len(recs):
                row.update({f"{m.key}_{k}": v for k, v in _spread(vals).items()})
        rows.append(row)
    return rows
