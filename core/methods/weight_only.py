"""int8 and int4 weight-only quantization, run by the decode kernels (weights streamed packed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.quant.rtn import QuantSpec, quantize
from core.registry import LayerMethod, MethodCard, MethodConfig, param, register
from core.storage import AffineLinear
from core.storage.int8_rows import PER_ROW_INT8


@dataclass(frozen=True)
class Int8WeightOnlyConfig(MethodConfig):
    pass


@register(
    "int8-weight-only",
    kind="quant",
    config=Int8WeightOnlyConfig,
    card=MethodCard(
        idea="int8 weights (absmax per output row), float activations: the kernel reads one "
        "byte per weight and widens it in registers, so a memory-bound decode step streams "
        "4x fewer bytes than with fp32 weights.",
        calibration=False,
        static_or_dynamic="static (weights quantized once)",
        scope="weights only (the matmul accumulates in float)",
        parameters="heuristic: absmax scale per output row",
        hardware="any CPU with AVX2 (our kernel); no integer dot products needed. For large "
        "batches the weights are dequantized and fp32 BLAS runs",
        memory="about 4x smaller than FP32 weights",
        speed="decode (batch 1) approaches the weight-bytes ratio where memory bandwidth is "
        "the limit; prefill is no faster than fp32 (measured per run)",
        reference="e.g. torchao int8_weight_only; Dettmers et al. 2022 (absmax)",
    ),
)
class Int8WeightOnly(LayerMethod):
    needs_calibration = False

    def apply(self, layer: nn.Linear, stats: Any, cfg: Int8WeightOnlyConfig) -> nn.Module:
        # float32 per-row scales: this method's numbers since it was added
        return AffineLinear.build(
            quantize(layer.weight, PER_ROW_INT8), layer.bias, scale_dtype=torch.float32
        )


@dataclass(frozen=True)
class Int4WeightOnlyConfig(MethodConfig):
    group_size: int = param(
        128, "input columns per float16 scale and zero point", choices=(32, 64, 128, 256)
    )


@register(
    "int4-weight-only",
    kind="quant",
    config=Int4WeightOnlyConfig,
    card=MethodCard(
        idea="4-bit weights, asymmetric per group of input columns (float16 scale + zero "
        "point each), two codes per byte; the kernel unpacks nibbles in registers and "
        "multiplies with float activations, applying scale and zero once per group.",
        calibration=False,
        static_or_dynamic="static (weights quantized once)",
        scope="weights only (the matmul accumulates in float)",
        parameters="heuristic: min/max range per group",
        hardware="any CPU with AVX2 (our kernel); GPUs have dedicated int4 kernels (Marlin, "
        "tinygemm) not used here",
        memory="about 7x smaller than FP32 weights at group 128 (0.5 byte per weight + "
        "3 bytes per group)",
        speed="decode: fewest bytes streamed, but unpacking costs instructions, so on this "
        "CPU it is about as fast as int8 weight-only; prefill is no faster than fp32",
        reference="e.g. torchao int4_weight_only, GPTQ/AWQ storage formats",
    ),
)
class Int4WeightOnly(LayerMethod):
    needs_calibration = False

    def apply(self, layer: nn.Linear, stats: Any, cfg: Int4WeightOnlyConfig) -> nn.Module:
        spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=cfg.group_size)
        return AffineLinear.build(quantize(layer.weight, spec), layer.bias)
