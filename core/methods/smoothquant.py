"""SmoothQuant: migrate activation outliers into the weights through the norm -> linears map."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from core.fold import fold_scales
from core.mappings import NormGroup, norm_groups
from core.quant.smoothquant import smoothing_scales, update_absmax
from core.registry import (
    LayerReport,
    MethodCard,
    MethodConfig,
    MethodContext,
    ModelMethod,
    param,
    register,
)
from core.walk import BlockInputs, collect_inputs, get_submodule, iter_blocks, local_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmoothQuantConfig(MethodConfig):
    alpha: float = param(
        0.5,
        "migration strength: 1 moves the activations' whole range into the weights, 0 "
        "moves the weights' into the activations; 0.5 gives both the same channel maxima",
        min=0.0,
        max=1.0,
    )


def _groups(block: nn.Module, groups: tuple[NormGroup, ...], local: set[str]) -> list[NormGroup]:
    """The block's norm groups with a targeted linear, all of whose linears are still float
    (a group is smoothed whole: the norm feeds every linear in it)."""
    out = []
    for g in groups:
        mods = [get_submodule(block, n) for n in g.linears]
        if local & set(g.linears) and all(isinstance(m, nn.Linear) for m in mods):
            out.append(g)
    return out


@register(
    "smoothquant",
    kind="transform",
    config=SmoothQuantConfig,
    card=MethodCard(
        idea="Activations have a few channels with huge values, weights do not: divide each "
        "input channel j by s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (folded into the "
        "preceding norm) and multiply the weights' column j by s_j. The float model is "
        "unchanged, but activations become easier to quantize. Chain it before w8a8.",
        calibration=True,
        static_or_dynamic="static (scales fixed from calibration maxima)",
        scope="prepares weights and activations for W8A8; quantizes nothing itself",
        parameters="heuristic: per-channel maxima from calibration data; alpha set by hand",
        hardware="none needed: scales are folded into existing weights (no runtime cost)",
        memory="no change by itself",
        speed="no change by itself; the w8a8 step after it decides the speed",
        reference="Xiao et al. 2022, SmoothQuant (arXiv:2211.10438), eq. 4",
    ),
)
class SmoothQuant(ModelMethod):
    needs_calibration = True

    @torch.no_grad()
    def apply_model(
        self,
        model: nn.Module,
        cfg: SmoothQuantConfig,
        targets: dict[str, nn.Linear],
        ctx: MethodContext,
    ) -> None:
        _, norm_map = norm_groups(model, "smoothquant")
        for prefix, block, inputs in iter_blocks(model, ctx, "smoothquant"):
            local = local_names(targets, prefix)
            groups = _groups(block, norm_map, local)
            if not groups:
                continue
            absmax = _channel_absmax(block, inputs, groups)
            for g in groups:
                a = absmax[g.linears[0]]
                if a is None:  # the forward never reached this group
                    continue
                readers = [get_submodule(block, n) for n in g.linears]
                W = torch.cat([m.weight for m in readers], dim=0)
                s = smoothing_scales(a.to(W.device), W, cfg.alpha)
                fold_scales(get_submodule(block, g.norm), readers, s)
                note = f"smoothed from {g.norm}: s in [{s.min():.3g}, {s.max():.3g}]"
                for n in g.linears:
                    ctx.reports.append(LayerReport(name=f"{prefix}.{n}", note=note))


def _channel_absmax(
    block: nn.Module, inputs: BlockInputs, groups: list[NormGroup]
) -> dict[str, torch.Tensor | None]:
    """max|x_j| per input channel of each group's (shared) input, over every calibration
    token, keyed by the group's first linear (one pass over the block)."""
    first = {g.linears[0]: get_submodule(block, g.linears[0]) for g in groups}
    absmax: dict[str, torch.Tensor | None] = dict.fromkeys(first)

    def fold(name: str, x: torch.Tensor) -> None:
        absmax[name] = update_absmax(absmax[name], x)

    collect_inputs(block, inputs, first, fold)
    return absmax
