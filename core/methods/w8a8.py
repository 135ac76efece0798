"""W8A8: int8 weights and int8 activations, run as a real integer matmul."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.registry import LayerMethod, MethodCard, MethodConfig, param, register
from core.storage import W8A8Linear


@dataclass(frozen=True)
class W8A8Config(MethodConfig):
    act_mode: str = param(
        "dynamic",
        "dynamic: one activation scale per token, computed at run time; static: one scale "
        "per tensor, fixed from the calibration set's max|x|",
        choices=("dynamic", "static"),
    )


@register(
    "w8a8",
    kind="quant",
    config=W8A8Config,
    card=MethodCard(
        idea="Quantize the weights (int8, one absmax scale per output row) and the "
        "activations (int8, per token at run time or one calibrated scale per tensor), so "
        "the matmul itself runs on integers: int8 x int8 products summed exactly in int32, "
        "then scaled back to float once per output. Activation outliers stretch the "
        "activation scale; SmoothQuant before it moves them into the weights.",
        calibration=False,
        static_or_dynamic="dynamic (per-token scales at run time) or static (per-tensor "
        "scale from calibration: act_mode='static' needs the calibration set)",
        scope="weights and activations (integer matmul)",
        parameters="heuristic: absmax scales (weights per row; activations per token, or the "
        "calibration max per tensor)",
        hardware="CPU: int8 dot-product instructions (AVX-512 VNNI, AMX) make it fast; on an "
        "AVX2-only CPU our kernel widens int8 to int16 (vpmaddwd), at most about 2x the "
        "fp32 multiply rate. GPU: int8 tensor cores (Triton kernel here)",
        memory="about 4x smaller than FP32 weights (1 byte each + a float32 scale per row)",
        speed="measured per run (the kernel path is recorded with it). bench/int8_gemm.py, "
        "K=N=4096: on an AVX-512 VNNI CPU 4.6-8.5x fp32 at every batch size (our VNNI "
        "kernel up to 16 rows, oneDNN's int8 matmul above); on an AVX2-only CPU about 2x "
        "fp32 for decode-sized batches (fewer weight bytes), 1.3x at 128-512 rows, none at "
        "2048 rows",
        reference="Xiao et al. 2022 (SmoothQuant, W8A8 baselines); Dettmers et al. 2022 "
        "(vector-wise quantization)",
    ),
)
class W8A8(LayerMethod):
    needs_calibration = False  # only act_mode="static" does; apply() says so

    def init_stats(self, layer: nn.Linear, cfg: W8A8Config) -> Any:
        return torch.zeros((), dtype=torch.float32) if cfg.act_mode == "static" else None

    def update_stats(self, stats: Any, x: torch.Tensor) -> Any:
        if stats is None:
            return None
        return torch.maximum(stats, x.detach().abs().max().float().cpu())

    def apply(self, layer: nn.Linear, stats: Any, cfg: W8A8Config) -> nn.Module:
        if cfg.act_mode == "static" and stats is None:
            raise ValueError("w8a8 with act_mode='static' needs a calibration set")
        return W8A8Linear.build(layer.weight, layer.bias, act_mode=cfg.act_mode, act_absmax=stats)
