"""Round-to-nearest integer quantization (absmax or zero-point) with real packed storage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from core.methods.quant_config import GroupedQuantConfig
from core.quant.rtn import quantize
from core.registry import ConfigError, LayerMethod, MethodCard, param, register
from core.storage import AffineLinear


@dataclass(frozen=True)
class RTNConfig(GroupedQuantConfig):
    bits: int = param(8, "weight bits", min=2, max=8)
    symmetric: bool = param(True, "absmax (symmetric) if true, zero-point (asymmetric) if false")
    granularity: str = param(
        "channel",
        "one scale per tensor, per output channel, or per group",
        choices=("tensor", "channel", "group"),
    )
    group_size: int = param(
        128,
        "input columns per scale when granularity is group",
        min=32,
        max=256,
        power_of_two=True,
    )
    clip_percentile: float = param(
        100.0,
        "clip |w| to this percentile of each scale's values before rounding",
        min=50.0,
        max=100.0,
    )
    clip_search: str = param(
        "none",
        "mse: per scale, search the clipping range (shrink factor of the full range) "
        "that minimises the weights' squared rounding error",
        choices=("none", "mse"),
    )
    clip_grid: int = param(20, "MSE clip search: shrink step is 1 / clip_grid", min=2, max=1000)
    clip_max_shrink: float = param(
        0.8,
        "MSE clip search: smallest range tried is (1 - this) x the full range",
        min=0.0,
        max=0.95,
    )

    def validate(self) -> None:
        super().validate()
        if self.clip_search == "mse" and self.clip_percentile < 100.0:
            raise ConfigError(
                "clip_search='mse' and clip_percentile < 100 both clip: use one of them "
                "(clip_percentile=100 with the search, or clip_search='none')"
            )

    def spec_options(self) -> dict[str, Any]:
        return {
            "granularity": self.granularity,
            "clip_percentile": self.clip_percentile,
            "clip_search": self.clip_search,
            "clip_grid": self.clip_grid,
            "clip_max_shrink": self.clip_max_shrink,
        }


@register(
    "rtn",
    kind="quant",
    config=RTNConfig,
    card=MethodCard(
        idea="Round each weight to the nearest of 2^bits evenly spaced levels. Absmax maps "
        "[-max|w|, max|w|] symmetrically; zero-point maps [min, max] and shifts by a zero point, "
        "using every level for skewed values. One outlier stretches the scale for everything "
        "sharing it: finer granularity (groups of 32..256 weights) and clipping are the "
        "remedies; clip_search='mse' tries shrunken ranges per scale and keeps the one with "
        "the least squared rounding error.",
        calibration=False,
        static_or_dynamic="static (weights quantized once)",
        scope="weights only (dequantized to float for the matmul)",
        parameters="heuristic: scales from the weights' own range (searched on the weights "
        "alone with clip_search='mse'; no data)",
        hardware="no special hardware: integer weights are unpacked to float before the matmul",
        memory="about 32/bits x smaller than FP32 weights, plus one fp16 scale per group",
        speed="no speed-up here: dequantizing on the fly adds work; a saving in space only",
        reference="Dettmers et al. 2022 (absmax / zero-point), Nagel et al. 2021 (white paper)",
    ),
)
class RTN(LayerMethod):
    needs_calibration = False

    def apply(self, layer: nn.Linear, stats: Any, cfg: RTNConfig) -> nn.Module:
        qt = quantize(layer.weight, cfg.spec())
        return AffineLinear.build(qt, layer.bias)
