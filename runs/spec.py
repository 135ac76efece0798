"""The job spec, and the ONE builder that makes it for New run, Sensitivity, sweeps and
the CLI: the same recipe gives the same spec JSON and the same label from every door,
after the same validation (recipe, settings, text sets, uploads).

Pure of the database: whether an uploaded text is stored is asked through a callable
``text_exists(name) -> bool`` that the caller (a page, the CLI) provides.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from core.calib import DEFAULT_PROTOCOL, CalibSettings, check_protocol
from core.data import DataError, list_text_sets
from core.errors import ModelLoadError
from core.generate import check_prompts
from core.metrics import EvalSettings
from core.models import model_source
from core.recipe import NO_STEPS, Recipe, loads_json, recipe_from_steps
from core.registry import ConfigError
from core.tasks import check_tasks
from runs.calib_check import check_size_at_submit

TextExists = Callable[[str], bool]  # is this uploaded text ("upload:...") stored?
UPLOAD_PREFIX = "upload:"
DEFAULT_CALIB = "stdlib-code"
DEFAULT_EVAL = "stdlib-heldout"
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """Everything a job needs; stored as JSON with the job."""

    model: str  # "demo", a local folder, or a hub id
    recipe: list[dict[str, Any]]  # recipe steps (validated when parsed)
    recipe_name: str = ""  # the named recipe it came from, if any
    calib: str = DEFAULT_CALIB  # calibration text set
    eval_set: str = DEFAULT_EVAL  # evaluation text set
    eval: EvalSettings = field(default_factory=EvalSettings)
    calib_settings: CalibSettings = field(default_factory=CalibSettings)
    save_model: bool = False  # keep the compressed model (safetensors + config) for download
    # How calibration and evaluation windows are drawn (core.calib.PROTOCOLS; definitions
    # in runs.catalogue.PROTOCOLS): "default", or "reference" as gptq/wanda draw them.
    protocol: str = DEFAULT_PROTOCOL
    tasks: list[str] = field(default_factory=list)  # lm-eval tasks (core.tasks), run and baseline
    task_limit: int | None = None  # examples per task (None: all)
    prompts: list[str] = field(default_factory=list)  # continued greedily; []: the model's defaults
    # What a budget search predicted for this recipe (runs/search.py), by catalogue key;
    # copied into the result beside the measured numbers. {} for every other run.
    prediction: dict[str, float] = field(default_factory=dict)
    # Device memory this job may use ("6GiB", "512MiB"; "": the worker's own budget, if
    # any): a model whose estimated peak does not fit runs onloaded (core/modes.py).
    max_device_memory: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """The spec in ``text``. Keys this version does not know (a newer worker or app
        wrote them) are ignored and logged; ``unknown_keys`` names them."""
        d = json.loads(text)
        if ignored := unknown_keys(text):
            log.warning("job spec keys this version does not know are ignored: %s", ignored)
        d["eval"] = _known(EvalSettings, d.get("eval", {}))
        d["calib_settings"] = _known(CalibSettings, d.get("calib_settings", {}))
        return _known(cls, d)

    def parsed_recipe(self) -> Recipe:
        return recipe_from_steps(self.recipe, name=self.recipe_name)


def _known(cls: type[T], d: dict[str, Any]) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in d.items() if k in names})


def unknown_keys(text: str) -> str:
    """The keys of a spec's JSON that this version's JobSpec does not know ("eval.x" for
    nested ones), comma separated; "" if none."""
    d = json.loads(text)
    out = [k for k in d if k not in {f.name for f in fields(JobSpec)}]
    for key, cls in (("eval", EvalSettings), ("calib_settings", CalibSettings)):
        nested = d.get(key)
        if isinstance(nested, dict):
            out += [f"{key}.{k}" for k in nested if k not in {f.name for f in fields(cls)}]
    return ", ".join(out)


def steps_from_json(text: str) -> list[dict[str, Any]]:
    """Recipe steps typed as JSON (a list of steps, or one step); ConfigError if not JSON,
    too large or too deep, or empty (the baseline is the named recipe "baseline")."""
    data = loads_json(text)
    if isinstance(data, dict):
        data = data.get("steps", [data]) if "method" not in data else [data]
    if not isinstance(data, list):
        raise ConfigError('a recipe must be a list of steps such as [{"method": "rtn", "bits": 8}]')
    if not data:
        raise ConfigError(NO_STEPS)
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


def check_text_set(name: str, role: str, text_exists: TextExists) -> None:
    """Refuse a text set no worker could resolve (a typo, or an upload that was not stored)."""
    if name.startswith(UPLOAD_PREFIX):
        if not text_exists(name):
            raise DataError(f"{role} set {name!r} is not in the database: upload it again")
        return
    known = sorted(t["name"] for t in list_text_sets())
    if name not in known:
        raise DataError(f"unknown {role} set {name!r}; available: {', '.join(known)}")


def _settings(cls: type, value: Any, what: str) -> Any:
    if isinstance(value, cls):
        return value
    try:
        return cls(**(value or {}))
    except TypeError as e:
        raise ConfigError(f"bad {what}: {e}") from None


def _recipe(recipe: Recipe | Sequence[dict[str, Any]], name: str) -> Recipe:
    """Validated through the same parser whether steps or a parsed recipe came in."""
    if isinstance(recipe, Recipe):
        return recipe_from_steps(recipe.to_list(), name=name or recipe.name)
    return recipe_from_steps(list(recipe), name=name)  # ConfigError says what is allowed


def _check_model_source(model: str) -> None:
    """Refuse at submission what no worker may load (a missing folder, one outside the
    model roots in a team mode), without touching the network."""
    try:
        model_source(model)
    except ModelLoadError as e:
        raise ConfigError(str(e)) from None


def check_outputs(
    tasks: Sequence[str], task_limit: int | None, prompts: Sequence[str]
) -> dict[str, Any]:
    """The JobSpec fields of the task scores and generations, validated (ConfigError)."""
    names = list(check_tasks(tasks, task_limit))
    return {
        "tasks": names,
        "task_limit": task_limit if names else None,
        "prompts": check_prompts(prompts),
    }


def build_spec(
    model: str,
    recipe: Recipe | Sequence[dict[str, Any]],
    *,
    text_exists: TextExists,
    text_bytes: Callable[[str], int | None] | None = None,
    recipe_name: str = "",
    calib: str = DEFAULT_CALIB,
    eval_set: str = DEFAULT_EVAL,
    eval_settings: EvalSettings | dict[str, Any] | None = None,
    calib_settings: CalibSettings | dict[str, Any] | None = None,
    save_model: bool = False,
    protocol: str = DEFAULT_PROTOCOL,
    tasks: Sequence[str] = (),
    task_limit: int | None = None,
    prompts: Sequence[str] = (),
) -> tuple[JobSpec, str]:
    """A validated JobSpec and its recipe label; ValueError (ConfigError, DataError) if bad.

    Both text sets are checked, the calibration set even for the uncompressed baseline
    (a typo is a typo)."""
    model = (model or "").strip()
    if not model:
        raise ConfigError("choose a model: the demo model, a Hugging Face id, or a local folder")
    _check_model_source(model)
    parsed = _recipe(recipe, recipe_name)
    ev = _settings(EvalSettings, eval_settings, "evaluation settings")
    cs = _settings(CalibSettings, calib_settings, "calibration settings")
    try:
        check_protocol(protocol)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_text_set(eval_set, "evaluation", text_exists)
    check_text_set(calib, "calibration", text_exists)
    if parsed.steps and text_bytes is not None:  # a set shorter than one window: refused
        check_size_at_submit(parsed, calib, text_bytes(calib), cs)
    outputs = check_outputs(tasks, task_limit, prompts)
    spec = JobSpec(
        model=model,
        recipe=parsed.to_list(),
        recipe_name=parsed.name,
        calib=calib,
        eval_set=eval_set,
        eval=ev,
        calib_settings=cs,
        save_model=bool(save_model),
        protocol=protocol,
        **outputs,
    )
    return spec, recipe_label(parsed)
