"""Wanda: prune by |weight| x input-feature norm, compared within each output row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.methods.magnitude import PruningMethod, SparsityConfig
from core.prune.wanda import InputNormStats, init_input_norms, update_input_norms, wanda_mask
from core.registry import MethodCard, register
from core.storage import PrunedLinear


@dataclass(frozen=True)
class WandaConfig(SparsityConfig):
    pass


@register(
    "wanda",
    kind="prune",
    config=WandaConfig,
    card=MethodCard(
        idea="Score each weight by |w| times the L2 norm of its input feature over calibration "
        "tokens, and drop the lowest scores within each output row (or keep N of every M "
        "inputs). Inputs with large activations keep their weights even when those are small.",
        calibration=True,
        static_or_dynamic="static (mask fixed once from calibration activations)",
        scope="weights only (activations only inform the mask)",
        parameters="heuristic score from data statistics; no weight update",
        hardware="CPU: none (weights are decompressed for the matmul). GPU: 2:4 runs on "
        "sparse tensor cores through torch's semi-structured tensors",
        memory="as magnitude: 2:4 fp32 ~0.53x dense; unstructured 50% ~0.53x (bitmask)",
        speed="slower on the CPU (dense weight rebuilt each forward); 2:4 can be faster on an "
        "Ampere+ GPU; measure it",
        reference="Sun, Liu, Bair, Kolter 2023, A Simple and Effective Pruning Approach for "
        "Large Language Models (arXiv:2306.11695)",
    ),
)
class Wanda(PruningMethod):
    needs_calibration = True

    def init_stats(self, layer: nn.Linear, cfg: WandaConfig) -> InputNormStats:
        return init_input_norms(layer.in_features, device=layer.weight.device)

    def update_stats(self, stats: InputNormStats, x: torch.Tensor) -> InputNormStats:
        return update_input_norms(stats, x)

    def apply(self, layer: nn.Linear, stats: Any, cfg: WandaConfig) -> nn.Module:
        if stats is None or stats.n == 0:
            raise ValueError("wanda needs calibration inputs for every targeted layer")
        keep = wanda_mask(layer.weight, stats.sq_sum, sparsity=cfg.sparsity, pattern=cfg.pattern)
        return PrunedLinear.build(layer.weight, layer.bias, keep=keep, pattern=cfg.label)
