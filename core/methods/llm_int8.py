"""Our LLM.int8()-style decomposition: outlier input columns in float, the rest in int8."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from core.registry import LayerMethod, MethodCard, MethodConfig, param, register
from core.storage import LLMInt8Linear


@dataclass(frozen=True)
class LLMInt8Config(MethodConfig):
    threshold: float = param(
        6.0,
        "input feature columns with some |x| above this go through a float matmul, the rest "
        "through the int8 kernel (0 disables the decomposition)",
        min=0.0,
        max=100.0,
    )


@register(
    "llm-int8",
    kind="quant",
    config=LLMInt8Config,
    card=MethodCard(
        idea="LLM.int8() with our own kernels: int8 weights (absmax per output row) and "
        "per-token int8 activations, except the few input feature dimensions where some "
        "activation exceeds the threshold (the emergent outliers of large models): those "
        "columns are multiplied in float with their dequantized weight columns and added. "
        "Compare with bnb-int8 (bitsandbytes' implementation of the same idea).",
        calibration=False,
        static_or_dynamic="dynamic (activation scales and outlier columns found per input)",
        scope="weights and activations (int8 matmul plus a float matmul for outlier columns)",
        parameters="heuristic: absmax scales; the threshold (6.0) is set by hand",
        hardware="the int8 part runs on our CPU kernel (AVX-512 VNNI where the CPU has it, "
        "else AVX2) or oneDNN's int8 matmul, or Triton on a GPU; the outlier part is a "
        "float matmul, summed inside the VNNI kernel's pass over the weight for "
        "decode-sized batches, else split off natively and added by BLAS",
        memory="about 4x smaller than FP32 weights (1 byte each + a float32 scale per row)",
        speed="the decomposition adds a column scan and the outlier columns' float "
        "product per call (one native call for decode-sized batches with VNNI; a native "
        "split and a second matmul otherwise): slower than plain w8a8, and no faster than "
        "fp32 where most columns are outliers (the demo model's MLP down projections: "
        "157-230 of 256 on real text, so its prefill is slower than fp32); compare the "
        "run's latency with bnb-int8 and fp32",
        reference="Dettmers et al. 2022, LLM.int8(): 8-bit Matrix Multiplication for "
        "Transformers at Scale (arXiv:2208.07339)",
    ),
)
class LLMInt8(LayerMethod):
    needs_calibration = False

    def apply(self, layer: nn.Linear, stats: Any, cfg: LLMInt8Config) -> nn.Module:
        return LLMInt8Linear.build(layer.weight, layer.bias, threshold=cfg.threshold)
