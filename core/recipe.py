"""Recipes: an ordered list of steps ``{method, params, targets, ignore}``.

A recipe is given as a registered name (``rtn-int8``), a path to a JSON or YAML
file, or inline JSON. A step is flat: ``{"method": "rtn", "bits": 8, "targets":
["*"], "ignore": ["lm_head"]}``; every key other than method / targets / ignore is a
parameter of the method's config.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.registry import ConfigError, MethodConfig, get_method

DEFAULT_TARGETS: tuple[str, ...] = ("*",)
DEFAULT_IGNORE: tuple[str, ...] = ("lm_head",)
_RESERVED = {"method", "targets", "ignore"}


@dataclass(frozen=True)
class Step:
    method: str  # registered method name
    config: MethodConfig  # validated parameters
    targets: tuple[str, ...] = DEFAULT_TARGETS  # glob patterns (or "re:<regex>") of linear names
    ignore: tuple[str, ...] = DEFAULT_IGNORE  # patterns excluded from targets

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            **self.config.to_dict(),
            "targets": list(self.targets),
            "ignore": list(self.ignore),
        }

    def selects(self, name: str) -> bool:
        return _matches_any(name, self.targets) and not _matches_any(name, self.ignore)


@dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...] = field(default_factory=tuple)
    name: str = ""  # the registered name it came from, if any

    def to_list(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]

    def to_json(self) -> str:
        return json.dumps(self.to_list(), sort_keys=True)

    @property
    def label(self) -> str:
        return self.name or " + ".join(s.method for s in self.steps) or "baseline"

    @property
    def needs_calibration(self) -> bool:
        return any(get_method(s.method).needs_calibration for s in self.steps)


def _matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.search(p[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], p):
            return True
    return False


# Named recipes: short names users type. Each is a list of step dicts.
NAMED_RECIPES: dict[str, list[dict[str, Any]]] = {
    "baseline": [],
    "fp16": [{"method": "cast", "dtype": "float16"}],
    "bf16": [{"method": "cast", "dtype": "bfloat16"}],
    "rtn-int8": [{"method": "rtn", "bits": 8, "symmetric": True, "granularity": "channel"}],
    "rtn-int8-zp": [{"method": "rtn", "bits": 8, "symmetric": False, "granularity": "channel"}],
    "rtn-int8-tensor": [{"method": "rtn", "bits": 8, "symmetric": True, "granularity": "tensor"}],
    # Pruning (unstructured 50% or 2:4); the chain keeps its zeros through 4-bit RTN.
    "magnitude-50": [{"method": "magnitude", "sparsity": 0.5}],
    "magnitude-2:4": [{"method": "magnitude", "pattern": "2:4"}],
    "wanda-50": [{"method": "wanda", "sparsity": 0.5}],
    "wanda-2:4": [{"method": "wanda", "pattern": "2:4"}],
    "sparsegpt-50": [{"method": "sparsegpt", "sparsity": 0.5}],
    "sparsegpt-2:4": [{"method": "sparsegpt", "pattern": "2:4"}],
    "wanda-2:4+rtn-int4": [
        {"method": "wanda", "pattern": "2:4"},
        {"method": "rtn", "bits": 4, "granularity": "group", "group_size": 128},
    ],
    # Activation quantization and integer kernels (core/kernels): real int8 matmuls.
    "w8a8": [{"method": "w8a8", "act_mode": "dynamic"}],
    "w8a8-static": [{"method": "w8a8", "act_mode": "static"}],
    "smoothquant-w8a8": [
        {"method": "smoothquant", "alpha": 0.5},
        {"method": "w8a8", "act_mode": "static"},
    ],
    "smoothquant-w8a8-dynamic": [
        {"method": "smoothquant", "alpha": 0.5},
        {"method": "w8a8", "act_mode": "dynamic"},
    ],
    "llm-int8": [{"method": "llm-int8", "threshold": 6.0}],
    "int8-weight-only": [{"method": "int8-weight-only"}],
    "int4-weight-only": [{"method": "int4-weight-only", "group_size": 128}],
    # Weight-only quantization with real packed / bitsandbytes / float8 storage.
    "rtn-4bit-g128": [{"method": "rtn", "bits": 4, "granularity": "group", "group_size": 128}],
    "rtn-3bit-g128": [{"method": "rtn", "bits": 3, "granularity": "group", "group_size": 128}],
    "rtn-4bit-g128-mse": [
        {
            "method": "rtn",
            "bits": 4,
            "granularity": "group",
            "group_size": 128,
            "clip_search": "mse",
        }
    ],
    "gptq-4bit-g128": [{"method": "gptq", "bits": 4, "group_size": 128}],
    "gptq-3bit-g128": [{"method": "gptq", "bits": 3, "group_size": 128}],
    "gptq-2bit-g128": [{"method": "gptq", "bits": 2, "group_size": 128, "symmetric": False}],
    "awq-4bit-g128": [{"method": "awq", "bits": 4, "group_size": 128}],
    "nf4": [{"method": "bnb-4bit", "quant_type": "nf4", "double_quant": True}],
    "fp4": [{"method": "bnb-4bit", "quant_type": "fp4", "double_quant": True}],
    "llm-int8-bnb": [{"method": "bnb-int8", "threshold": 6.0}],
    "fp8-e4m3": [{"method": "fp8", "format": "e4m3", "granularity": "channel"}],
    "fp8-e5m2": [{"method": "fp8", "format": "e5m2", "granularity": "channel"}],
    "attn8-mlp4-g128": [
        {"method": "rtn", "bits": 8, "targets": ["re:self_attn"]},
        {"method": "gptq", "bits": 4, "group_size": 128, "targets": ["re:mlp"]},
    ],
}


def _patterns(value: Any, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key} must be a list of name patterns, got {value!r}")


def parse_step(raw: Any) -> Step:
    if not isinstance(raw, dict) or "method" not in raw:
        raise ConfigError(f'each recipe step must be an object with a "method" key, got {raw!r}')
    cls = get_method(str(raw["method"]))
    params = {k: v for k, v in raw.items() if k not in _RESERVED}
    try:
        cfg = cls.config_cls.from_dict(params)
    except TypeError as e:  # wrong constructor arguments
        raise ConfigError(f"bad parameters for {cls.name}: {e}") from None
    return Step(
        method=cls.name,
        config=cfg,
        targets=_patterns(raw.get("targets"), "targets", DEFAULT_TARGETS),
        ignore=_patterns(raw.get("ignore"), "ignore", DEFAULT_IGNORE),
    )


def recipe_from_steps(raw_steps: Any, name: str = "") -> Recipe:
    if isinstance(raw_steps, dict):
        raw_steps = (
            raw_steps.get("steps", [raw_steps]) if "method" not in raw_steps else [raw_steps]
        )
    if not isinstance(raw_steps, list):
        raise ConfigError("a recipe must be a list of steps")
    return Recipe(steps=tuple(parse_step(s) for s in raw_steps), name=name)


def parse_recipe(text: str) -> Recipe:
    """A registered name, a path to a .json / .yaml file, or inline JSON."""
    text = text.strip()
    if text in NAMED_RECIPES:
        return recipe_from_steps(NAMED_RECIPES[text], name=text)
    if text.startswith(("[", "{")):
        try:
            return recipe_from_steps(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"recipe is not valid JSON: {e}") from None
    path = Path(text)
    if path.suffix.lower() in {".json", ".yaml", ".yml"}:
        if not path.is_file():
            raise ConfigError(f"recipe file {text!r} not found")
        body = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(body)
        else:
            import yaml

            data = yaml.safe_load(body)
        return recipe_from_steps(data, name=path.stem)
    raise ConfigError(
        f"unknown recipe {text!r}: use a named recipe ({', '.join(NAMED_RECIPES)}), "
        "a .json/.yaml file, or inline JSON such as "
        '\'[{"method": "rtn", "bits": 8}]\''
    )
