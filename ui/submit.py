"""Validate a run the user composed and queue it (the New run page and the tests call this)."""

from __future__ import annotations

import json
from typing import Any

from core.calib import CalibSettings
from core.data import DataError, list_text_sets
from core.jobspec import JobSpec
from core.metrics import EvalSettings
from core.recipe import Recipe, recipe_from_steps
from core.registry import ConfigError
from core.sweep import sweep_specs
from db import queue


def _settings(cls: type, value: Any, what: str) -> Any:
    if isinstance(value, cls):
        return value
    try:
        return cls(**(value or {}))
    except TypeError as e:
        raise ConfigError(f"bad {what}: {e}") from None


def steps_from_json(text: str) -> list[dict[str, Any]]:
    """Recipe steps typed as JSON (a list of steps, or one step); ConfigError if not JSON."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"recipe is not valid JSON: {e}") from None
    if isinstance(data, dict):
        data = data.get("steps", [data]) if "method" not in data else [data]
    if not isinstance(data, list):
        raise ConfigError('a recipe must be a list of steps such as [{"method": "rtn", "bits": 8}]')
    return data


def recipe_label(recipe: Recipe) -> str:
    """A short label for tables and legends: the recipe's name, else each step's method
    with the parameters that differ from their defaults ("rtn(bits=4, granularity=group)")."""
    if recipe.name or not recipe.steps:
        return recipe.label
    parts = []
    for step in recipe.steps:
        try:
            defaults = type(step.config)().to_dict()
        except ValueError:  # a config without valid defaults: show every parameter
            defaults = {}
        changed = [f"{k}={v}" for k, v in step.config.to_dict().items() if defaults.get(k) != v]
        parts.append(f"{step.method}({', '.join(changed)})" if changed else step.method)
    return " + ".join(parts)


def check_text_set(sf: queue.Factory, name: str, role: str) -> None:
    """Refuse a text set no worker could resolve (a typo, or an upload that was not stored)."""
    if name.startswith("upload:"):
        if queue.get_text(sf, name) is None:
            raise DataError(f"{role} set {name!r} is not in the database: upload it again")
        return
    known = sorted(t["name"] for t in list_text_sets())
    if name not in known:
        raise DataError(f"unknown {role} set {name!r}; available: {', '.join(known)}")


def build_spec(
    sf: queue.Factory,
    model: str,
    steps: list[dict[str, Any]],
    recipe_name: str,
    calib: str,
    eval_set: str,
    eval_settings: EvalSettings | dict[str, Any] | None,
    calib_settings: CalibSettings | dict[str, Any] | None,
    save_model: bool = False,
) -> tuple[JobSpec, str]:
    """A validated JobSpec and its recipe label; ValueError (ConfigError, DataError) if bad."""
    model = (model or "").strip()
    if not model:
        raise ConfigError("choose a model: the demo model, a Hugging Face id, or a local folder")
    recipe = recipe_from_steps(steps, name=recipe_name)  # ConfigError says what is allowed
    ev = _settings(EvalSettings, eval_settings, "evaluation settings")
    cs = _settings(CalibSettings, calib_settings, "calibration settings")
    check_text_set(sf, eval_set, "evaluation")
    if recipe.steps:
        check_text_set(sf, calib, "calibration")
    spec = JobSpec(
        model=model,
        recipe=recipe.to_list(),
        recipe_name=recipe.name,
        calib=calib,
        eval_set=eval_set,
        eval=ev,
        calib_settings=cs,
        save_model=save_model,
    )
    return spec, recipe_label(recipe)


def submit_run(
    sf: queue.Factory,
    model: str,
    steps: list[dict[str, Any]],
    recipe_name: str,
    calib: str,
    eval_set: str,
    eval_settings: EvalSettings | dict[str, Any] | None,
    calib_settings: CalibSettings | dict[str, Any] | None,
    save_model: bool = False,
) -> int:
    """Validate and queue one run; returns the job id. Raises ValueError and queues nothing
    when anything is wrong (the message says what is allowed)."""
    spec, label = build_spec(
        sf, model, steps, recipe_name, calib, eval_set, eval_settings, calib_settings, save_model
    )
    return queue.submit(sf, model=spec.model, recipe_label=label, spec_json=spec.to_json())


def submit_sweep_run(
    sf: queue.Factory,
    model: str,
    steps: list[dict[str, Any]],
    recipe_name: str,
    calib: str,
    eval_set: str,
    eval_settings: EvalSettings | dict[str, Any] | None,
    calib_settings: CalibSettings | dict[str, Any] | None,
    *,
    step_index: int,
    param: str,
    values: list[float],
) -> tuple[str, int]:
    """Queue one run per value of ``steps[step_index][param]`` under one sweep id; returns
    (sweep id, number of runs). Every recipe is validated first: nothing is queued if one
    value is refused."""
    spec, label = build_spec(
        sf, model, steps, recipe_name, calib, eval_set, eval_settings, calib_settings
    )
    jobs = [
        (name, one.to_json()) for name, one in sweep_specs(spec, label, step_index, param, values)
    ]
    return queue.submit_sweep(sf, model=spec.model, jobs=jobs), len(jobs)
