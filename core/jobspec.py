"""The job specification the UI submits and a worker runs, stored as JSON with the job."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from core.calib import CalibSettings
from core.metrics import EvalSettings
from core.recipe import Recipe, recipe_from_steps


@dataclass(frozen=True)
class JobSpec:
    """Everything a job needs; stored as JSON with the job."""

    model: str  # "demo", a local folder, or a hub id
    recipe: list[dict[str, Any]]  # recipe steps (validated when parsed)
    recipe_name: str = ""  # the named recipe it came from, if any
    calib: str = "stdlib-code"  # calibration text set
    eval_set: str = "stdlib-heldout"  # evaluation text set
    eval: EvalSettings = field(default_factory=EvalSettings)
    calib_settings: CalibSettings = field(default_factory=CalibSettings)
    save_model: bool = False  # keep the compressed model (safetensors + config) for download

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        d = json.loads(text)
        d["eval"] = EvalSettings(**d.get("eval", {}))
        d["calib_settings"] = CalibSettings(**d.get("calib_settings", {}))
        return cls(**d)

    def parsed_recipe(self) -> Recipe:
        return recipe_from_steps(self.recipe, name=self.recipe_name)
