"""bitsandbytes' LLM.int8() and 4-bit (NF4 / FP4) weight quantization, through its own modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.registry import LayerMethod, MethodCard, MethodConfig, param, register
from core.storage import Bnb4bitLinear, BnbInt8Linear

_COMPUTE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class BnbInt8Config(MethodConfig):
    threshold: float = param(
        6.0,
        "outlier threshold: input feature columns with a value above it are multiplied in "
        "float16, the rest in int8 (0 disables the decomposition)",
        min=0.0,
        max=100.0,
    )


@register(
    "bnb-int8",
    kind="quant",
    config=BnbInt8Config,
    card=MethodCard(
        idea="LLM.int8(): int8 weights with one absmax scale per output row; at run time "
        "each input row is quantized to int8 too, except the few feature dimensions holding "
        "a value above the threshold (the emergent outliers of large models), which stay in "
        "float16: a mixed-precision decomposition that keeps quality at 8 bits.",
        calibration=False,
        static_or_dynamic="dynamic (activation scales and outlier columns found per input)",
        scope="weights and activations (int8 matmul, float16 for outlier columns)",
        parameters="heuristic: absmax scales; the threshold (6.0) is set by hand",
        hardware="bitsandbytes runs it on the CPU (its own int8 kernels) and on CUDA GPUs",
        memory="about 4x smaller than FP32 weights (1 byte each) plus a float32 scale per row",
        speed="usually slower than the float matmul on a CPU: quantizing the inputs and the "
        "outlier decomposition cost more than the int8 matmul saves; see the run's latency",
        reference="Dettmers et al. 2022, LLM.int8(): 8-bit Matrix Multiplication for "
        "Transformers at Scale (arXiv:2208.07339); bitsandbytes Linear8bitLt",
    ),
)
class BnbInt8(LayerMethod):
    needs_calibration = False

    def apply(self, layer: nn.Linear, stats: Any, cfg: BnbInt8Config) -> nn.Module:
        return BnbInt8Linear.build(layer.weight, layer.bias, threshold=cfg.threshold)


@dataclass(frozen=True)
class Bnb4bitConfig(MethodConfig):
    quant_type: str = param(
        "nf4",
        "nf4: 16 levels at the quantiles of a normal distribution (suits normally distributed "
        "weights); fp4: a 4-bit float (1 sign, 2 exponent, 1 fraction bit)",
        choices=("nf4", "fp4"),
    )
    double_quant: bool = param(
        True, "also quantize the per-block absmax scales to 8 bits (saves ~0.37 bits/weight)"
    )
    compute_dtype: str = param(
        "float32", "dtype of the matmul after dequantization", choices=tuple(_COMPUTE)
    )
    blocksize: int = param(
        64, "weights per absmax scale", choices=(32, 64, 128, 256, 512, 1024, 2048, 4096)
    )


@register(
    "bnb-4bit",
    kind="quant",
    config=Bnb4bitConfig,
    card=MethodCard(
        idea="bitsandbytes' 4-bit weights (as in QLoRA): each block of 64 weights is scaled "
        "by its absmax and each value rounded to one of 16 levels: NF4 places the levels at "
        "the quantiles of a normal distribution, so that each is used equally often by "
        "normally distributed weights; FP4 is a tiny float. Double quantization stores the "
        "block scales themselves in 8 bits.",
        calibration=False,
        static_or_dynamic="static (weights quantized once)",
        scope="weights only (dequantized to the compute dtype for the matmul)",
        parameters="heuristic: absmax per block; the NF4 levels are fixed in advance",
        hardware="bitsandbytes runs it on the CPU and on CUDA GPUs",
        memory="about 8x smaller than FP32 weights: 4 bits each plus a scale per 64 weights "
        "(8 bits with double quantization, 32 without)",
        speed="no speed-up here: bitsandbytes dequantizes before the matmul, slower than "
        "float at every batch size on this CPU",
        reference="Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs "
        "(arXiv:2305.14314); bitsandbytes Linear4bit",
    ),
)
class Bnb4bit(LayerMethod):
    needs_calibration = False

    def apply(self, layer: nn.Linear, stats: Any, cfg: Bnb4bitConfig) -> nn.Module:
        return Bnb4bitLinear.build(
            layer.weight,
            layer.bias,
            quant_type=cfg.quant_type,
            double_quant=cfg.double_quant,
            compute_dtype=_COMPUTE[cfg.compute_dtype],
            blocksize=cfg.blocksize,
        )
