"""FP8 weights (E4M3 or E5M2) with per-tensor or per-channel scales."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from core.quant.fp8 import quantize_fp8
from core.registry import LayerMethod, MethodCard, MethodConfig, param, register
from core.storage import FP8Linear


@dataclass(frozen=True)
class FP8Config(MethodConfig):
    format: str = param(
        "e4m3",
        "e4m3: 4 exponent + 3 fraction bits, max 448 (more precision); "
        "e5m2: 5 exponent + 2 fraction bits, max 57344 (more range)",
        choices=("e4m3", "e5m2"),
    )
    granularity: str = param(
        "channel",
        "one float32 scale per tensor or per output channel mapping max|w| onto the format's "
        "max; none: cast the raw weights (shows the format's range alone)",
        choices=("tensor", "channel", "none"),
    )


@register(
    "fp8",
    kind="quant",
    config=FP8Config,
    card=MethodCard(
        idea="Store each weight as an 8-bit float instead of an 8-bit integer. Floats space "
        "their levels geometrically: relative precision is the same for small and large "
        "values. E4M3 spends 4 bits on the exponent and 3 on the fraction (range +-448, "
        "steps of 1/8 relative, no infinities); E5M2 spends 5 and 2 (range +-57344, steps "
        "of 1/4 relative): E5M2 buys range with precision, which a scale mapping max|w| "
        "onto the format's max makes unnecessary for weights, so E4M3 is usually more "
        "accurate; set granularity=none to see the formats' raw ranges at work.",
        calibration=False,
        static_or_dynamic="static (weights cast once)",
        scope="weights only (dequantized to float for the matmul)",
        parameters="heuristic: the scale comes from the weights' own max",
        hardware="GPU: native FP8 matmul on NVIDIA Hopper/Ada (H100, L4) and newer; this CPU "
        "has no FP8 units: weights are converted to float before the matmul",
        memory="4x smaller than FP32 weights (1 byte each) plus one float32 scale per "
        "channel or tensor",
        speed="no speed-up here (conversion adds work); FP8 tensor cores give one on "
        "Hopper-class GPUs",
        reference="Micikevicius et al. 2022, FP8 Formats for Deep Learning (arXiv:2209.05433)",
    ),
)
class FP8(LayerMethod):
    needs_calibration = False

    def apply(self, layer: nn.Linear, stats: Any, cfg: FP8Config) -> nn.Module:
        ft = quantize_fp8(layer.weight, cfg.format, cfg.granularity)  # type: ignore[arg-type]
        return FP8Linear.build(ft, layer.bias)
