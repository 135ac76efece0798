"""SparseGPT: OBS pruning with reconstruction of the remaining weights, block by block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.methods.magnitude import PruningMethod, SparsityConfig
from core.prune.sparsegpt import sparsegpt_prune
from core.quant.hessian import HessianStats, init_hessian, update_hessian
from core.registry import ConfigError, MethodCard, param, register
from core.storage import PrunedLinear


@dataclass(frozen=True)
class SparseGPTConfig(SparsityConfig):
    block_size: int = param(
        128, "columns whose mask is chosen together (lazy update batch)", min=8, max=1024
    )
    damp: float = param(
        0.01, "dampening added to the Hessian diagonal, as a fraction of its mean", min=0.0, max=1.0
    )
    true_sequential: bool = param(
        False,
        "false (default, as the reference): every layer of a block calibrated in one pass on "
        "the block's inputs, one Hessian per layer held at once; true: each input group "
        "(q/k/v, o, gate/up, down) calibrated on the outputs of the groups already pruned, "
        "one Hessian at a time (less memory, slower; on the demo model no better, see card)",
    )

    def validate(self) -> None:
        super().validate()
        if self.block_size % 8:
            raise ConfigError(
                f"SparseGPTConfig.block_size={self.block_size} must be a multiple of 8 "
                "(so N:M groups never straddle two blocks)"
            )


@register(
    "sparsegpt",
    kind="prune",
    config=SparseGPTConfig,
    card=MethodCard(
        idea="Prune column by column and update the remaining weights to compensate (Optimal "
        "Brain Surgeon with the layer Hessian of ||WX - W'X||^2, as in GPTQ); the mask of each "
        "block of columns is chosen from w^2 / [H^-1]_ii^2.",
        calibration=True,
        static_or_dynamic="static (mask and weights fixed once)",
        scope="weights only (activations only inform the Hessian)",
        parameters="learned from data: kept weights are re-solved to reconstruct the output. "
        "true_sequential=false (default, the reference's one pass): each layer's Hessian from "
        "the block's inputs as the previous, already pruned, blocks produce them; true: inside "
        "a block, each input group also sees the outputs of the groups pruned before it. On "
        "the demo model over 3 seeds false was slightly better (50%: 43.17 vs 43.22, 2:4: "
        "44.28 vs 44.34 perplexity) and about 1.5x faster",
        hardware="CPU: none (weights are decompressed for the matmul). GPU: 2:4 runs on "
        "sparse tensor cores through torch's semi-structured tensors",
        memory="as magnitude: 2:4 fp32 ~0.53x dense; unstructured 50% ~0.53x (bitmask); while "
        "compressing, one Hessian per layer of a block (true_sequential: per input group)",
        speed="compression is slower than Wanda (a Hessian inverse per layer); inference as "
        "for any sparse layer; measure it",
        reference="Frantar & Alistarh 2023, SparseGPT: Massive Language Models Can Be Accurately "
        "Pruned in One-Shot (arXiv:2301.00774)",
    ),
)
class SparseGPT(PruningMethod):
    needs_calibration = True

    def sequential(self, cfg: SparseGPTConfig) -> bool:
        return cfg.true_sequential

    def init_stats(self, layer: nn.Linear, cfg: SparseGPTConfig) -> HessianStats:
        return init_hessian(layer.in_features, device=layer.weight.device)

    def update_stats(self, stats: HessianStats, x: torch.Tensor) -> HessianStats:
        return update_hessian(stats, x)

    def apply(self, layer: nn.Linear, stats: Any, cfg: SparseGPTConfig) -> nn.Module:
        if stats is None or stats.n == 0:
            raise ValueError("sparsegpt needs calibration inputs for every targeted layer")
        res = sparsegpt_prune(
            layer.weight,
            stats.H,
            sparsity=cfg.sparsity,
            pattern=cfg.pattern,
            block_size=cfg.block_size,
            damp=cfg.damp,
        )
        return PrunedLinear.build(
            res.weight, layer.bias, keep=res.keep, pattern=cfg.label, dtype=layer.weight.dtype
        )
