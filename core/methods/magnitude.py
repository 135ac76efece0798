"""Magnitude pruning (per layer or global) and the config shared by the pruning methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from core.prune.magnitude import magnitude_mask, magnitude_scores
from core.prune.masks import PATTERNS, global_counts
from core.registry import ConfigError, LayerMethod, MethodCard, MethodConfig, param, register
from core.storage import UNSTRUCTURED, PrunedLinear, pack_pruned_linears


@dataclass(frozen=True)
class SparsityConfig(MethodConfig):
    """How much to prune: an unstructured fraction or an N:M pattern, exactly one of them."""

    sparsity: float | None = param(
        0.5,
        "fraction of the weights set to zero, in (0, 1); leave empty when pattern is set",
        min=0.0,
        max=1.0,
    )
    pattern: str | None = param(
        None,
        "semi-structured N:M: keep N non-zeros in every M consecutive inputs of a row "
        "(replaces sparsity; 2:4 is what GPU sparse tensor cores accelerate)",
        choices=PATTERNS,
    )

    def validate(self) -> None:
        if (self.sparsity is None) == (self.pattern is None):
            raise ConfigError(
                f"{type(self).__name__}: set exactly one of sparsity (a fraction in (0, 1)) "
                f"or pattern (one of {', '.join(PATTERNS)}), got sparsity={self.sparsity!r} "
                f"and pattern={self.pattern!r}"
            )
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise ConfigError(
                f"{type(self).__name__}.sparsity={self.sparsity!r} is out of range: "
                "a fraction strictly between 0 and 1"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        # A recipe step naming only a pattern means "no unstructured fraction".
        if data.get("pattern") is not None and "sparsity" not in data:
            data = {**data, "sparsity": None}
        return super().from_dict(data)

    @property
    def label(self) -> str:
        """The storage tag of the layers it prunes: the pattern or "unstructured"."""
        return self.pattern or UNSTRUCTURED


class PruningMethod(LayerMethod):
    """Pruning steps leave a tagged ``nn.Linear`` (a later quantization step can still
    target it); once the recipe is done the walker calls ``finalize_model`` and the
    untouched ones move into sparse storage."""

    def finalize_model(self, model: nn.Module) -> None:
        pack_pruned_linears(model)


@dataclass(frozen=True)
class MagnitudeConfig(SparsityConfig):
    scope: str = param(
        "layer",
        "compare |w| within each layer, or across every targeted layer (global threshold; "
        "layers then end with different sparsities)",
        choices=("layer", "global"),
    )
    ties: str = param(
        "exact",
        "who goes at the cut (unstructured, scope layer): exact = exactly round(sparsity x n) "
        "weights of each layer, ties broken by position; threshold = every |w| <= the "
        "floor(sparsity x n)-th smallest, as locuslab/wanda (one weight more per layer, "
        "plus any ties at the cut)",
        choices=("exact", "threshold"),
    )

    def validate(self) -> None:
        super().validate()
        if self.ties == "threshold" and (self.pattern is not None or self.scope == "global"):
            raise ConfigError(
                'MagnitudeConfig: ties="threshold" applies to unstructured per-layer pruning '
                '(sparsity set, scope "layer"); N:M and global scope count exactly'
            )
        if self.pattern is not None and self.scope == "global":
            raise ConfigError(
                "MagnitudeConfig: an N:M pattern is chosen inside each group of M inputs, so "
                'scope must be "layer" with a pattern'
            )


@register(
    "magnitude",
    kind="prune",
    config=MagnitudeConfig,
    card=MethodCard(
        idea="Zero the weights with the smallest absolute values, within each layer or under "
        "one threshold across all targeted layers; or keep the largest N of every M inputs.",
        calibration=False,
        static_or_dynamic="static (mask fixed once)",
        scope="weights only",
        parameters="heuristic: |w| is the importance; no data, no weight update. Ties: by "
        "default exactly round(sparsity x n) weights per layer go (ties at the cut broken by "
        "position, so the sparsity is exact); ties=threshold drops every |w| <= the "
        "floor(sparsity x n)-th smallest, as locuslab/wanda does (one weight more per layer)",
        hardware="CPU: none (weights are decompressed for the matmul). GPU: 2:4 runs on "
        "sparse tensor cores through torch's semi-structured tensors",
        memory="N:M: kept values + 2-3 index bits each (2:4 fp32: ~0.53x dense); unstructured "
        "50%: bitmask + values (~0.53x), stored compressed only where smaller than dense",
        speed="slower on the CPU (dense weight rebuilt each forward); 2:4 can be faster on an "
        "Ampere+ GPU for large matrices; measure it",
        reference="Han et al. 2015, Learning both Weights and Connections for Efficient Neural "
        "Networks",
    ),
)
class Magnitude(PruningMethod):
    needs_calibration = False

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}  # id(layer) -> weights to prune (global scope)

    def prepare(self, targets: dict[str, nn.Linear], cfg: MagnitudeConfig) -> None:
        """A global threshold needs every target's |w| before any layer is pruned."""
        if cfg.scope != "global":
            return
        assert cfg.sparsity is not None
        layers = list(targets.values())
        counts = global_counts([magnitude_scores(m.weight) for m in layers], cfg.sparsity)
        self._counts = {id(m): k for m, k in zip(layers, counts, strict=True)}

    def apply(self, layer: nn.Linear, stats: Any, cfg: MagnitudeConfig) -> nn.Module:
        if cfg.scope == "global":
            if id(layer) not in self._counts:
                raise RuntimeError("global magnitude pruning needs prepare() over all targets")
            keep = magnitude_mask(layer.weight, prune=self._counts[id(layer)])
        else:
            keep = magnitude_mask(
                layer.weight, sparsity=cfg.sparsity, pattern=cfg.pattern, ties=cfg.ties
            )
        return PrunedLinear.build(layer.weight, layer.bias, keep=keep, pattern=cfg.label)
