"""Validate a run the user composed and queue it (the New run page and the tests call this).

The spec is made by the one builder (runs.spec.build_spec) the CLI, sweeps and the
Sensitivity page use too; this module only adds the database: whether an uploaded
text is stored, and the queue.
"""

from __future__ import annotations

from typing import Any

from core.calib import CalibSettings
from core.metrics import EvalSettings
from db import queue
from db.models import LOCAL_OWNER
from runs import spec as run_spec
from runs.sensitivity import Unit, sensitivity_recipes
from runs.spec import JobSpec, recipe_label, steps_from_json
from runs.sweep import sweep_specs

__all__ = [
    "build_spec",
    "recipe_label",
    "steps_from_json",
    "submit_run",
    "submit_sensitivity_sweep",
    "submit_sweep_run",
]


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
    **outputs: Any,
) -> tuple[JobSpec, str]:
    """A validated JobSpec and its recipe label; ValueError (ConfigError, DataError) if bad.
    ``outputs``: tasks, task_limit, prompts (runs.spec.build_spec)."""
    return run_spec.build_spec(
        model,
        steps,
        text_exists=queue.text_exists(sf),
        text_bytes=queue.text_bytes(sf),
        recipe_name=recipe_name,
        calib=calib,
        eval_set=eval_set,
        eval_settings=eval_settings,
        calib_settings=calib_settings,
        save_model=save_model,
        **outputs,
    )


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
    *,
    owner: str = LOCAL_OWNER,
    **outputs: Any,
) -> int:
    """Validate and queue one run; returns the job id. Raises ValueError and queues nothing
    when anything is wrong (the message says what is allowed). ``outputs``: tasks,
    task_limit, prompts."""
    spec, label = build_spec(
        sf,
        model,
        steps,
        recipe_name,
        calib,
        eval_set,
        eval_settings,
        calib_settings,
        save_model,
        **outputs,
    )
    return queue.submit(
        sf, model=spec.model, recipe_label=label, spec_json=spec.to_json(), owner=owner
    )


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
    owner: str = LOCAL_OWNER,
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
    return queue.submit_sweep(sf, model=spec.model, jobs=jobs, owner=owner), len(jobs)


def submit_sensitivity_sweep(
    sf: queue.Factory,
    model: str,
    step: dict[str, Any],
    units: list[Unit],
    calib: str,
    eval_set: str,
    eval_settings: EvalSettings | dict[str, Any] | None,
    calib_settings: CalibSettings | dict[str, Any] | None,
    *,
    owner: str = LOCAL_OWNER,
) -> tuple[str, int]:
    """Queue one job per unit, each applying ``step`` to that unit only, under one sweep
    id; returns (sweep id, number of jobs). Nothing is queued if one spec is refused."""
    jobs = []
    for u, steps in zip(units, sensitivity_recipes(step, units), strict=True):
        spec, label = build_spec(
            sf, model, steps, "", calib, eval_set, eval_settings, calib_settings
        )
        jobs.append((f"{label} only {u.label}", spec.to_json()))
    return queue.submit_sweep(sf, model=model, jobs=jobs, owner=owner), len(jobs)
