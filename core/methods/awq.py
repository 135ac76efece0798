"""AWQ: activation-aware scales folded into the preceding norms / linears, then group-wise RTN."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from core.fold import fold_scales
from core.mappings import ATTENTION_SCORE_LINEARS, NORM_GROUPS, SCALE_PAIRS, norm_groups
from core.methods.quant_config import GroupedQuantConfig
from core.quant.awq import awq_search_clip, awq_search_scale, clamp_groups
from core.quant.hessian import HessianStats, init_hessian, update_hessian
from core.quant.rtn import QuantizedTensor, quantize
from core.registry import MethodCard, MethodContext, ModelMethod, param, register
from core.storage import AffineLinear
from core.walk import (
    BlockInputs,
    collect_inputs,
    get_submodule,
    iter_blocks,
    local_names,
    replace_module,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AWQConfig(GroupedQuantConfig):
    bits: int = param(4, "weight bits", min=2, max=8)
    group_size: int | None = param(
        128, "input columns per scale; null = one per row", min=32, max=256, power_of_two=True
    )
    symmetric: bool = param(False, "absmax if true; zero-point (AWQ's default) if false")
    n_grid: int = param(20, "grid points for the exponent alpha in [0, 1)", min=1, max=100)
    duo_scaling: bool = param(
        False, "s = mean|x|^alpha / mean|w|^(1-alpha) (the AutoAWQ code) instead of mean|x|^alpha"
    )
    scale_pairs: bool = param(
        True, "also scale linear -> linear pairs (v_proj -> o_proj, up_proj -> down_proj)"
    )
    clip: bool = param(True, "search a clipping bound per group minimising the output error")
    clip_grid: int = param(20, "clip search: shrink step is 1 / clip_grid", min=2, max=200)
    clip_max_shrink: float = param(
        0.5, "clip search: smallest bound tried is (1 - this) x max|w|", min=0.0, max=0.95
    )


@dataclass
class _InputStats:
    """Running statistics of one input that one or more linears read."""

    gram: HessianStats  # 2/n X^T X
    abs_sum: torch.Tensor  # (in,) sum over rows of |x|
    rows: int = 0

    def fold(self, x: torch.Tensor) -> None:
        update_hessian(self.gram, x)
        x = x.reshape(-1, x.shape[-1]).float()
        self.abs_sum += x.abs().sum(0)
        self.rows += x.shape[0]

    @property
    def absmean(self) -> torch.Tensor:
        return self.abs_sum / max(1, self.rows)


@dataclass
class _Site:
    """Linears reading one input, and the module whose output channels feed them."""

    linears: list[str]  # names relative to the block
    source: str | None = None  # a norm or a linear (relative name) to fold 1/s into
    source_is_norm: bool = False
    scale: torch.Tensor | None = None  # the scale applied to the linears' input channels
    stats: _InputStats | None = field(default=None, repr=False)


def _sites(block: nn.Module, model_type: str, local: set[str], pairs: bool) -> list[_Site]:
    """The inputs to calibrate: each norm group, each usable linear pair, and every other
    targeted linear on its own (clipping only)."""
    sites: list[_Site] = []

    def plain(names: tuple[str, ...]) -> bool:
        return all(isinstance(get_submodule(block, n), nn.Linear) for n in names)

    for g in NORM_GROUPS[model_type]:
        if local & set(g.linears) and plain(g.linears):
            sites.append(_Site(list(g.linears), g.norm, source_is_norm=True))
    for p in SCALE_PAIRS.get(model_type, ()) if pairs else ():
        prev, nxt = get_submodule(block, p.prev), get_submodule(block, p.next)
        if p.next in local and plain((p.prev, p.next)) and prev.out_features == nxt.in_features:
            sites.append(_Site([p.next], p.prev))
    covered = {n for s in sites for n in s.linears}
    sites.extend(_Site([n]) for n in sorted(local - covered))
    return sites


@register(
    "awq",
    kind="quant",
    config=AWQConfig,
    card=MethodCard(
        idea="Protect the weights that matter: input channels with large activations carry "
        "the most signal, so scale their weight columns up by s = mean|x|^alpha before "
        "rounding (their relative rounding error shrinks) and divide the inputs by s, folded "
        "into the preceding norm or linear, so the float model is unchanged. alpha is "
        "searched per group of linears to minimise the quantized output error; a clipping "
        "bound per weight group is searched the same way. Then group-wise round-to-nearest.",
        calibration=True,
        static_or_dynamic="static (scales and weights fixed from calibration statistics)",
        scope="weights only (activations are only measured, to choose the scales)",
        parameters="searched on data: alpha per group of linears and clipping bounds per "
        "weight group minimise the output error on the calibration set",
        hardware="no special hardware needed; AWQ int4 GPU kernels exist (vLLM, TensorRT-LLM) "
        "but not here: weights are unpacked to float before the matmul",
        memory="about 32/bits x smaller than FP32 weights, plus an fp16 scale and an int8 "
        "zero point per group",
        speed="no speed-up here: dequantizing on the fly adds work",
        reference="Lin et al. 2023, AWQ: Activation-aware Weight Quantization for LLM "
        "Compression and Acceleration (arXiv:2306.00978)",
    ),
)
class AWQ(ModelMethod):
    needs_calibration = True

    @torch.no_grad()
    def apply_model(
        self,
        model: nn.Module,
        cfg: AWQConfig,
        targets: dict[str, nn.Linear],
        ctx: MethodContext,
    ) -> None:
        model_type, _ = norm_groups(model, "awq")
        for prefix, block, inputs in iter_blocks(model, ctx, "awq"):
            local = local_names(targets, prefix)
            if not local:
                continue
            sites = _sites(block, model_type, local, cfg.scale_pairs)
            _calibrate(block, inputs, sites)
            for site in sites:
                _scale_site(block, site, cfg)
            for site in sites:
                _fold_site(block, site)
            for site in sites:
                for rel in site.linears:
                    if rel in local:
                        _quantize_linear(model, block, prefix, rel, site, model_type, cfg)

    def apply_outside(self, layer: nn.Linear, cfg: AWQConfig) -> nn.Module:
        """No preceding norm to fold a scale into: plain round-to-nearest."""
        return _stored(quantize(layer.weight, cfg.spec()), layer)


def _calibrate(block: nn.Module, inputs: BlockInputs, sites: list[_Site]) -> None:
    """One pass over the block: Gram matrix and mean |x| of each site's input."""
    first = {}
    for site in sites:
        mod = get_submodule(block, site.linears[0])
        site.stats = _InputStats(
            init_hessian(mod.in_features, mod.weight.device),
            torch.zeros(mod.in_features, device=mod.weight.device),
        )
        first[site.linears[0]] = mod
    by_name = {s.linears[0]: s for s in sites}
    collect_inputs(block, inputs, first, lambda n, x: by_name[n].stats.fold(x))


def _scale_site(block: nn.Module, site: _Site, cfg: AWQConfig) -> None:
    """Search the scale of a site that has a source to fold it into."""
    if site.source is None or site.stats is None or site.stats.rows == 0:
        return
    W = torch.cat([get_submodule(block, n).weight for n in site.linears], dim=0)
    res = awq_search_scale(
        W, site.stats.gram.H, site.stats.absmean, cfg.spec(), cfg.n_grid, cfg.duo_scaling
    )
    log.debug(
        "awq %s: alpha=%.2f loss %.4g (rtn %.4g)", site.linears, res.alpha, res.loss, res.loss_plain
    )
    site.scale = res.scale


def _fold_site(block: nn.Module, site: _Site) -> None:
    """W[:, j] *= s_j for the site's linears; the source's output channel j /= s_j."""
    if site.scale is None or site.source is None:
        return
    readers = [get_submodule(block, n) for n in site.linears]
    fold_scales(get_submodule(block, site.source), readers, site.scale)


def _quantize_linear(
    model: nn.Module,
    block: nn.Module,
    prefix: str,
    rel: str,
    site: _Site,
    model_type: str,
    cfg: AWQConfig,
) -> None:
    """Clip (searched) and quantize one scaled linear. The scaled float linear stays as it
    is: the walker measures the layer error against it."""
    lin = get_submodule(block, rel)
    W = lin.weight.detach().float()
    assert site.stats is not None
    G = site.stats.gram.H
    if site.scale is not None:  # the linear now reads x / s
        G = G / torch.outer(site.scale, site.scale)
    spec = cfg.spec()
    Wc = W
    if cfg.clip and rel not in ATTENTION_SCORE_LINEARS.get(model_type, ()):
        bound = awq_search_clip(W, G, spec, cfg.clip_grid, cfg.clip_max_shrink)
        Wc = clamp_groups(W, bound, spec)
    replace_module(model, f"{prefix}.{rel}", _stored(quantize(Wc, spec), lin))


def _stored(qt: QuantizedTensor, lin: nn.Linear) -> nn.Module:
    """The stored module of quantized weights ``qt`` replacing ``lin``."""
    return AffineLinear.build(qt, lin.bias)
