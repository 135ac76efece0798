"""Method registry: typed, validated configs and explicit ``@register`` of methods.

A method is a frozen dataclass config (a subclass of :class:`MethodConfig`) plus a
class registered by name. Parameters are declared with :func:`param`, which records
the range or the choices the UI turns into widgets and the validator enforces.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

Kind = Literal["baseline", "cast", "quant", "prune", "transform", "kv"]


class ConfigError(ValueError):
    """A recipe value that is not allowed; the message says what is."""


def param(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    power_of_two: bool = False,
) -> Any:
    """A config field with its help text and its allowed range or choices (an integer
    field may also have to be a power of two)."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "pow2": power_of_two}
    return field(default=default, metadata=meta)


def allowed_text(meta: Any) -> str:
    """What a field with this metadata (``param``'s) allows, in words: the widgets' help
    and every refusal say it the same way."""
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("min"), meta.get("max")
    what = "a power of two" if meta.get("pow2") else "a value"
    if lo is not None and hi is not None:
        return f"{what} in [{lo}, {hi}]"
    if lo is not None:
        return f"{what} >= {lo}"
    if hi is not None:
        return f"{what} <= {hi}"
    return what if meta.get("pow2") else "a value of the declared type"


def _allowed(f: dataclasses.Field) -> str:
    return allowed_text(f.metadata)


def _base_types(annotation: Any) -> tuple[type, ...]:
    """The concrete types an annotation admits (``int | None`` -> (int, NoneType))."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out: list[type] = []
        for a in typing.get_args(annotation):
            out.extend(_base_types(a))
        return tuple(out)
    if origin is not None:
        return (origin,)
    return (annotation,) if isinstance(annotation, type) else (object,)


def check_value(f: dataclasses.Field, annotation: Any, value: Any) -> Any:
    """``value`` for the config field ``f`` (an int where a float is meant becomes a
    float), or ConfigError naming the parameter and what it allows."""
    allowed = _base_types(annotation)
    where = f.name  # the parameter as a recipe names it (parse_step adds the method)
    if value is None:
        if type(None) not in allowed:
            raise ConfigError(f"{where} must be set: {_allowed(f)}")
        return None
    # bool is an int in Python; refuse it where a number is meant and vice versa.
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{where}={value!r} is not allowed: {_allowed(f)}")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tuple(t for t in allowed if t is not object) or object):
        names = "/".join(t.__name__ for t in allowed)
        raise ConfigError(f"{where}={value!r} has the wrong type: expected {names}")
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        raise ConfigError(f"{where}={value!r} is not allowed: {_allowed(f)}")
    lo, hi = m.get("min"), m.get("max")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{where}={value!r} is out of range: {_allowed(f)}")
    if m.get("pow2") and isinstance(value, int) and (value < 1 or value & (value - 1)):
        raise ConfigError(f"{where}={value!r} is not a power of two: {_allowed(f)}")
    return value


def field_problem(config_cls: type[MethodConfig], name: str, value: Any) -> str | None:
    """Why ``value`` is not allowed for the parameter ``name`` of ``config_cls`` (one
    line, the parameter's own words), or None if it is: the form checks each field
    with the rule the config enforces."""
    f = next(x for x in dataclasses.fields(config_cls) if x.name == name)
    try:
        check_value(f, typing.get_type_hints(config_cls)[name], value)
    except ConfigError as e:
        return str(e)
    return None


@dataclass(frozen=True)
class MethodConfig:
    """Base class of every method config: validated on construction, JSON round trip."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = check_value(f, hints[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; subclasses override and raise ConfigError."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)} for {cls.__name__}; "
                f"allowed: {', '.join(sorted(names)) or 'none'}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MethodCard:
    """What every method card answers (see shared/CONCEPTS.md, the six questions)."""

    idea: str  # one or two sentences: what the method does and why
    calibration: bool  # 1. needs a calibration data set?
    static_or_dynamic: str  # 2. static (fixed at compression) or dynamic (per input)
    scope: str  # 3. "weights only" or "weights and activations"
    parameters: str  # 4. learned from data, or chosen by a heuristic
    hardware: str  # 5. hardware support on a CPU / a GPU
    memory: str  # 6a. expected memory saving
    speed: str  # 6b. what it does to latency (space saving is not a speed-up)
    reference: str = ""  # paper or documentation


@dataclass
class LayerReport:
    """What a method did to one linear layer."""

    name: str
    rel_error: float | None = None  # ||WX - W'X|| / ||WX|| on calibration inputs
    note: str = ""


@dataclass
class MethodContext:
    """What the walker hands a method besides the model: progress, cancel, calibration."""

    on_progress: Callable[[float, str], None]
    should_cancel: Callable[[], bool]
    calib_batches: list[torch.Tensor] | None = None  # (1, T) token ids each
    device: torch.device = torch.device("cpu")
    reports: list[LayerReport] = field(default_factory=list)
    # Set by the walker for a model method: the targeted linears inside the decoder
    # blocks, whose layer error ``walk.iter_blocks`` measures block by block.
    error_targets: dict[str, nn.Module] = field(default_factory=dict)


class Method:
    """Base of every registered method. Subclasses set the ClassVars via @register.

    Every hook the walker calls is declared here or on the two subclasses below, with
    its default; a method overrides only what it needs.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Kind] = "quant"
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    card: ClassVar[MethodCard]
    needs_calibration: ClassVar[bool] = False

    def finalize_model(self, model: nn.Module) -> None:
        """Called once after the whole recipe ran (once per method, even if several steps
        use it), to move this method's outputs into their final storage: pruning packs
        the pruned linears no later step replaced. Default: nothing to do."""


class LayerMethod(Method):
    """A method that replaces each targeted ``nn.Linear`` on its own.

    The walker calls, per step: ``prepare`` once with every target; then, per decoder
    block (with calibration batches), ``init_stats`` per target, ``update_stats`` with
    every input the target receives, and ``apply``. It owns the hooks, the
    block-by-block propagation and the layer error (``||WX - W'X|| / ||WX||`` on sampled
    calibration rows), so ``apply`` only returns the new module.
    """

    def prepare(self, targets: dict[str, nn.Linear], cfg: MethodConfig) -> None:
        """Sees every target before any is changed (a global threshold across layers).
        Default: nothing to prepare."""

    def sequential(self, cfg: MethodConfig) -> bool:
        """True to calibrate inside a block group by group in forward order, each group on
        the outputs of the groups already compressed (GPTQ's "true sequential"), holding
        one group's statistics at a time. Default: False (the whole block at once)."""
        return False

    def init_stats(self, layer: nn.Linear, cfg: MethodConfig) -> Any:
        """Empty calibration statistics for ``layer``. Default: none (no calibration)."""
        return None

    def update_stats(self, stats: Any, x: torch.Tensor) -> Any:
        """Fold one input batch ``x`` (..., in_features) into ``stats``; returns them.
        Layers reading the same input may share one statistics object."""
        return stats

    def apply(self, layer: nn.Linear, stats: Any, cfg: MethodConfig) -> nn.Module:
        """The compressed replacement of ``layer`` (``stats`` is None without calibration).
        Must not modify ``layer`` or ``stats`` in place: the walker measures the error
        against ``layer`` and shares ``stats`` within an input group."""
        raise NotImplementedError

    def apply_group(
        self, layers: dict[str, nn.Linear], stats: Any, cfg: MethodConfig
    ) -> dict[str, nn.Module]:
        """The replacements of layers that read the same input and share ``stats`` (q/k/v,
        gate/up), by name. A method whose rows are independent given the statistics
        (GPTQ) may compress them in one stacked call. Default: ``apply`` on each."""
        return {name: self.apply(layer, stats, cfg) for name, layer in layers.items()}


class ModelMethod(Method):
    """A method that needs the whole model (for example scale migration across layers).

    ``apply_model`` gets the targeted linears inside the decoder blocks and walks them
    with ``walk.iter_blocks``, which measures every target's layer error: a method never
    computes its own. Targets outside the blocks go to ``apply_outside`` instead.
    """

    def apply_model(
        self,
        model: nn.Module,
        cfg: MethodConfig,
        targets: dict[str, nn.Linear],
        ctx: MethodContext,
    ) -> None:
        """Compress ``targets`` in place. A linear that is replaced must first be rewritten
        in place into the float layer its replacement approximates (a folded scale), so
        that the walker can compare the two; one that is rewritten without being
        replaced must keep the block's function (a folded scale)."""
        raise NotImplementedError

    def apply_outside(self, layer: nn.Linear, cfg: MethodConfig) -> nn.Module:
        """The replacement of a targeted linear outside the decoder blocks (an lm_head
        someone targeted), where no cross-layer machinery reaches. Default: unchanged."""
        return layer


_REGISTRY: dict[str, type[Method]] = {}


def register(
    name: str, *, kind: Kind, config: type[MethodConfig], card: MethodCard
) -> Callable[[type[Method]], type[Method]]:
    """Register a method class under ``name`` (the name used in recipes)."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise RuntimeError(f"method {name!r} is registered twice")
        cls.name, cls.kind, cls.config_cls, cls.card = name, kind, config, card
        _REGISTRY[name] = cls
        return cls

    return deco


def _ensure_loaded() -> None:
    import core.methods  # noqa: F401  (one import line per method lives there)


def get_method(name: str) -> type[Method]:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}"
        ) from None


def methods() -> Iterator[type[Method]]:
    _ensure_loaded()
    yield from (_REGISTRY[k] for k in sorted(_REGISTRY))


def describe_params(config_cls: type[MethodConfig]) -> list[dict[str, Any]]:
    """The parameters of a config as plain data (name, type, default, range, help)."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        types_ = [t.__name__ for t in _base_types(hints[f.name])]
        out.append(
            {
                "name": f.name,
                "type": "|".join(types_),
                "default": f.default,
                "min": f.metadata.get("min"),
                "max": f.metadata.get("max"),
                "choices": list(f.metadata["choices"]) if f.metadata.get("choices") else None,
                "power_of_two": bool(f.metadata.get("pow2")),
                "help": f.metadata.get("help", ""),
            }
        )
    return out


def describe_method(cls: type[Method]) -> dict[str, Any]:
    return {
        "name": cls.name,
        "kind": cls.kind,
        "needs_calibration": cls.needs_calibration,
        "params": describe_params(cls.config_cls),
        "card": dataclasses.asdict(cls.card),
    }
