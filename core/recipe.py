"""Recipes: an ordered list of steps ``{method, params, targets, ignore}``.

A recipe is given as a registered name (``rtn-int8``), a path to a JSON or YAML
file, or inline JSON. A step is flat: ``{"method": "rtn", "bits": 8, "targets":
["*"], "ignore": ["lm_head"]}``; every key other than method / targets / ignore is a
parameter of the method's config.

Target and ignore patterns are globs (``*.q_proj``) or ``re:<regex>`` in RE2 syntax
(no look-around, no back-references): they are compiled when the recipe is parsed, at
most ``MAX_PATTERN_CHARS`` characters each, and matched by Google's RE2, whose time is
linear in the name, so no pattern can hang the app or a worker.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2

from core.registry import ConfigError, MethodConfig, get_method

DEFAULT_TARGETS: tuple[str, ...] = ("*",)
DEFAULT_IGNORE: tuple[str, ...] = ("lm_head",)
_RESERVED = {"method", "targets", "ignore"}
MAX_PATTERN_CHARS = 200  # one target / ignore pattern
MAX_PATTERNS = 1024  # patterns per list (a mixed-precision recipe ignores every sensitive layer)
MAX_STEPS = 32  # steps in one recipe
MAX_RECIPE_CHARS = 256 * 1024  # inline JSON, or a recipe file
REGEX_PREFIX = "re:"


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


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re2._Regexp:
    """The RE2 program of a ``re:`` pattern's regex; ConfigError (one line) if refused."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ConfigError(
            f"target pattern {pattern[:40]!r}... is {len(pattern)} characters; "
            f"at most {MAX_PATTERN_CHARS} are allowed"
        )
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 8 << 20  # a pattern whose program needs more is refused
    try:
        return re2.compile(pattern, options)
    except re2.error as e:
        why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else e
        raise ConfigError(
            f"target pattern 're:{pattern}' is not a valid regex ({why}); patterns use RE2 "
            "syntax: groups, alternation, classes and repetition, no look-around or "
            "back-references"
        ) from None


def check_pattern(pattern: str, key: str) -> str:
    """``pattern`` if allowed: a glob or ``re:<RE2 regex>``, at most MAX_PATTERN_CHARS."""
    if not pattern or len(pattern) > MAX_PATTERN_CHARS:
        raise ConfigError(
            f"{key} pattern {pattern[:40]!r} must be 1..{MAX_PATTERN_CHARS} characters"
        )
    if pattern.startswith(REGEX_PREFIX):
        compile_pattern(pattern[len(REGEX_PREFIX) :])
    return pattern


def _matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    for p in patterns:
        if p.startswith(REGEX_PREFIX):
            if compile_pattern(p[len(REGEX_PREFIX) :]).search(name):
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
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of name patterns, got {_short(value)}")
    if len(value) > MAX_PATTERNS:
        raise ConfigError(f"{key} has {len(value)} patterns; at most {MAX_PATTERNS} are allowed")
    return tuple(check_pattern(v, key) for v in value)


def _short(value: Any, n: int = 80) -> str:
    """``repr(value)`` cut to ``n`` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def parse_step(raw: Any) -> Step:
    if not isinstance(raw, dict) or "method" not in raw:
        raise ConfigError(
            f'each recipe step must be an object with a "method" key, got {_short(raw)}'
        )
    if not isinstance(raw["method"], str):
        raise ConfigError(f"a step's method must be a name, got {_short(raw['method'])}")
    cls = get_method(raw["method"])
    params = {k: v for k, v in raw.items() if k not in _RESERVED}
    try:
        cfg = cls.config_cls.from_dict(params)
    except ConfigError as e:  # in the method's words: "rtn: group_size=7 is ..."
        raise ConfigError(f"{cls.name}: {e}") from None
    except (TypeError, ValueError, ArithmeticError) as e:  # wrong arguments or value types
        raise ConfigError(f"bad parameters for {cls.name}: {_short(str(e), 200)}") from None
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
    if len(raw_steps) > MAX_STEPS:
        raise ConfigError(f"a recipe has at most {MAX_STEPS} steps, this one {len(raw_steps)}")
    return Recipe(steps=tuple(parse_step(s) for s in raw_steps), name=name)


NO_STEPS = (
    "a recipe needs at least one step; to measure the uncompressed model use the named "
    "recipe 'baseline'"
)


def typed_steps(data: Any) -> Recipe:
    """The recipe in a value a user typed (inline JSON, a file): at least one step, since
    an empty list is more likely a mistake than a wish for the baseline."""
    recipe = recipe_from_steps(data)
    if not recipe.steps:
        raise ConfigError(NO_STEPS)
    return recipe


def loads_json(text: str, what: str = "recipe") -> Any:
    """JSON of a typed recipe, capped in size and nesting; ConfigError (one line) if bad."""
    if len(text) > MAX_RECIPE_CHARS:
        raise ConfigError(f"{what} is {len(text)} characters; at most {MAX_RECIPE_CHARS}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply") from None


def _load_file(path: Path) -> Any:
    """The data of a .json / .yaml recipe file; ConfigError (one line) if unreadable."""
    import yaml

    try:
        if path.stat().st_size > MAX_RECIPE_CHARS:
            raise ConfigError(f"recipe file {str(path)!r} is over {MAX_RECIPE_CHARS} bytes")
        body = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe file {str(path)!r} cannot be read: {e}") from None
    if path.suffix.lower() == ".json":
        return loads_json(body, f"recipe file {str(path)!r}")
    try:
        return yaml.safe_load(body)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(
            f"recipe file {str(path)!r} is not valid YAML{where}: {problem}"
        ) from None
    except RecursionError:
        raise ConfigError(f"recipe file {str(path)!r} is nested too deeply") from None


def parse_recipe(text: str) -> Recipe:
    """A registered name, a path to a .json / .yaml file, or inline JSON."""
    text = text.strip()
    if text in NAMED_RECIPES:
        return recipe_from_steps(NAMED_RECIPES[text], name=text)
    if text.startswith(("[", "{")):
        return typed_steps(loads_json(text))
    path = Path(text)
    if path.suffix.lower() in {".json", ".yaml", ".yml"}:
        if not path.is_file():
            raise ConfigError(f"recipe file {text!r} not found")
        recipe = typed_steps(_load_file(path))
        return Recipe(steps=recipe.steps, name=path.stem)
    raise ConfigError(
        f"unknown recipe {_short(text)}: use a named recipe ({', '.join(NAMED_RECIPES)}), "
        "a .json/.yaml file, or inline JSON such as "
        '\'[{"method": "rtn", "bits": 8}]\''
    )
