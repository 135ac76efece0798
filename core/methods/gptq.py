"""GPTQ: calibrated integer weight quantization with second-order error compensation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.methods.quant_config import GroupedQuantConfig
from core.quant.gptq import gptq_quantize
from core.quant.hessian import HessianStats, init_hessian, update_hessian
from core.quant.rtn import QuantizedTensor, quantize
from core.registry import ConfigError, LayerMethod, MethodCard, param, register
from core.storage import AffineLinear

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPTQConfig(GroupedQuantConfig):
    bits: int = param(4, "weight bits", min=2, max=8)
    group_size: int | None = param(
        128,
        "input columns per scale; null = one scale per row",
        min=32,
        max=256,
        power_of_two=True,
    )
    symmetric: bool = param(True, "absmax (symmetric) if true, zero-point (asymmetric) if false")
    damp: float = param(
        0.01, "dampening: fraction of mean(diag H) added to the diagonal of H", min=0.0, max=1.0
    )
    block_size: int = param(128, "columns per lazy-batch block (speed only)", min=1, max=4096)
    act_order: bool = param(
        False, "quantize columns by decreasing activation size (diag H); needs static_groups"
    )
    static_groups: bool = param(
        False, "compute every group's scale from the original weights up front"
    )
    true_sequential: bool = param(
        True,
        "inside a block, quantize q/k/v, then o, then gate/up, then down, each calibrated "
        "on the outputs of the layers already quantized",
    )
    clip_search: str = param(
        "none",
        "mse: per scale, search the clipping range minimising the weights' squared error",
        choices=("none", "mse"),
    )

    def validate(self) -> None:
        super().validate()
        if self.act_order and self.group_size is not None and not self.static_groups:
            raise ConfigError(
                "act_order with group_size needs static_groups=true (groups keep their "
                "contiguous columns in storage); or set group_size to null"
            )

    def spec_options(self) -> dict[str, Any]:
        return {"clip_search": self.clip_search}


@register(
    "gptq",
    kind="quant",
    config=GPTQConfig,
    card=MethodCard(
        idea="Quantize a layer's weights one input column at a time and, after each, update "
        "the columns not yet quantized to cancel the error that column's rounding causes "
        "in the layer's output ||WX - W'X||^2, using the inverse Hessian 2XX^T of the "
        "calibration inputs (Optimal Brain Surgeon, made fast with a Cholesky factor and "
        "lazy block updates). Reaches 4 and 3 bits with a small loss.",
        calibration=True,
        static_or_dynamic="static (weights quantized once from calibration statistics)",
        scope="weights only (dequantized to float for the matmul)",
        parameters="learned from data: the rounding choices and compensating updates "
        "minimise the output error on the calibration set; scales follow the weights' range",
        hardware="no special hardware needed; dedicated int4/int3 GPU kernels exist "
        "(ExLlama, Marlin) but not here: weights are unpacked to float before the matmul",
        memory="about 32/bits x smaller than FP32 weights, plus an fp16 scale (and an int8 "
        "zero point if asymmetric) per group",
        speed="no speed-up here: dequantizing on the fly adds work; compression takes one "
        "Hessian and one column sweep per layer",
        reference="Frantar et al. 2022, GPTQ: Accurate Post-Training Quantization for "
        "Generative Pre-trained Transformers (arXiv:2210.17323)",
    ),
)
class GPTQ(LayerMethod):
    needs_calibration = True

    def sequential(self, cfg: GPTQConfig) -> bool:
        return cfg.true_sequential

    def init_stats(self, layer: nn.Linear, cfg: GPTQConfig) -> HessianStats:
        return init_hessian(layer.in_features, layer.weight.device)

    def update_stats(self, stats: HessianStats, x: torch.Tensor) -> HessianStats:
        return update_hessian(stats, x)

    def apply(self, layer: nn.Linear, stats: HessianStats | None, cfg: GPTQConfig) -> nn.Module:
        return self.apply_group({"": layer}, stats, cfg)[""]

    def apply_group(
        self, layers: dict[str, nn.Linear], stats: HessianStats | None, cfg: GPTQConfig
    ) -> dict[str, nn.Module]:
        """One GPTQ sweep over the layers' weights stacked by rows: every output row is
        quantized independently given H, so q/k/v (or gate/up) sharing one Hessian need
        one Cholesky factor and one column loop instead of three (or two)."""
        W = torch.cat([m.weight for m in layers.values()]) if len(layers) > 1 else None
        if W is None:
            W = next(iter(layers.values())).weight
        if stats is None or stats.n == 0:
            log.warning("gptq: no calibration inputs reached this layer; using RTN instead")
            qt = quantize(W, cfg.spec())
        else:
            qt = gptq_quantize(
                W,
                stats.H,
                cfg.spec(),
                block_size=cfg.block_size,
                damp=cfg.damp,
                act_order=cfg.act_order,
                static_groups=cfg.static_groups,
            )
        rows = split_rows(qt, [m.out_features for m in layers.values()])
        return {
            name: AffineLinear.build(part, m.bias)
            for (name, m), part in zip(layers.items(), rows, strict=True)
        }


def split_rows(qt: QuantizedTensor, sizes: list[int]) -> list[QuantizedTensor]:
    """``qt`` of stacked weights cut back into the layers' rows (scales are per row)."""
    if len(sizes) == 1:
        return [qt]
    if qt.scale.shape[0] == 1:  # one scale for the whole tensor: no stacking allowed
        raise ValueError("per-tensor scales cannot be split by rows")
    qs, ss = qt.q.split(sizes), qt.scale.split(sizes)
    zs = qt.zero.split(sizes) if qt.zero is not None else [None] * len(sizes)
    return [
        QuantizedTensor(
            q=q.contiguous(), scale=s.contiguous(), zero=z, bits=qt.bits, group_cols=qt.group_cols
        )
        for q, s, z in zip(qs, ss, zs, strict=True)
    ]
