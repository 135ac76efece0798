"""Downcast linear weights to float16 or bfloat16 (the simplest memory saving)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.registry import LayerMethod, MethodCard, MethodConfig, param, register
from core.storage import CastLinear

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class CastConfig(MethodConfig):
    dtype: str = param("float16", "storage and compute dtype", choices=tuple(_DTYPES))


@register(
    "cast",
    kind="cast",
    config=CastConfig,
    card=MethodCard(
        idea="Store weights in a 16-bit float: FP16 keeps 10 fraction bits but a small range "
        "(max 65504); BF16 keeps FP32's range with only 7 fraction bits.",
        calibration=False,
        static_or_dynamic="static (weights cast once)",
        scope="weights only (matmul runs in the 16-bit dtype)",
        parameters="none: a fixed rule",
        hardware="GPU: native FP16/BF16 tensor cores. CPU: BF16 is fast with AVX-512 BF16/AMX, "
        "FP16 matmul is often emulated and slow",
        memory="2x smaller than FP32 weights",
        speed="faster only where the hardware has 16-bit matmul units; measure it",
    ),
)
class Cast(LayerMethod):
    needs_calibration = False

    def apply(self, layer: nn.Linear, stats: Any, cfg: CastConfig) -> nn.Module:
        return CastLinear.build(layer.weight, layer.bias, dtype=_DTYPES[cfg.dtype])
