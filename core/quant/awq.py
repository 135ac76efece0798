"""AWQ: activation-aware per-input-channel scales and clipping for weight quantization.

Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration" (arXiv:2306.00978), section 3.2. Scaling input channel j of W by s_j and
dividing the input x_j by s_j leaves W x unchanged, but the rounding error of the
channels with large activations shrinks relative to their contribution. The scale is
s = mean|x|^alpha, alpha searched on a grid to minimise the quantized output error.

Output errors are measured through the Gram matrix G = X^T X / n of the calibration
inputs (the layer Hessian up to a factor 2): for a weight error D (out, in), the mean
squared output error over all calibration rows is tr(D G D^T) / out, at a cost
independent of the number of rows. Shapes: W (out, in), G (in, in), x_absmean (in,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.quant.rtn import QuantSpec, _group_view, compute_scale_zero, fake_quantize, quantize_with


@dataclass(frozen=True)
class ScaleSearch:
    scale: torch.Tensor  # (in,) multiply W's columns, divide the inputs
    alpha: float  # the exponent chosen
    loss: float  # tr(D G D^T) at the chosen alpha
    loss_plain: float  # the same without scaling (alpha = 0, plain round-to-nearest)


def output_error(D: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """tr(D G D^T): summed squared output error of weight error D on inputs with Gram G."""
    return ((D @ G) * D).sum()


def awq_scale_candidates(
    x_absmean: torch.Tensor, alpha: float, w_mean: torch.Tensor | None = None
) -> torch.Tensor:
    """s = mean|x|^alpha (or, "duo scaling" of the AutoAWQ code, mean|x|^alpha /
    w_mean^(1-alpha)), normalised so that max(s) * min(s) = 1 (as in the reference code)."""
    s = x_absmean.clamp(min=1e-4).pow(alpha)
    if w_mean is not None:
        s = (s / (w_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def weight_group_mean(W: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per input channel, the mean over rows of |w| / max|w| of its group (in,), the weight
    statistic of duo scaling."""
    g, _ = _group_view(W.float().abs(), spec)
    rel = g / (g.amax(-1, keepdim=True) + 1e-6)
    return rel.reshape(W.shape[0], -1)[:, : W.shape[1]].mean(0)


def awq_search_scale(
    W: torch.Tensor,
    G: torch.Tensor,
    x_absmean: torch.Tensor,
    spec: QuantSpec,
    n_grid: int = 20,
    duo: bool = False,
) -> ScaleSearch:
    """Grid search of alpha in {0, 1/n_grid, ..., (n_grid-1)/n_grid} minimising
    tr(D G D^T) with D = W - Q(W diag(s)) diag(s)^-1. ``W`` stacks the output rows of
    every linear that reads the same input (q, k and v for example). alpha = 0 is plain
    round-to-nearest, so the result is never worse than RTN on this objective. ``duo``
    divides by the weights' relative magnitude to the power 1 - alpha as well."""
    W, G = W.float(), G.float()
    w_mean = weight_group_mean(W, spec) if duo else None
    best: ScaleSearch | None = None
    plain = float("nan")
    for k in range(n_grid):
        alpha = k / n_grid
        s = awq_scale_candidates(x_absmean.float(), alpha, w_mean)
        D = W - fake_quantize(W * s, spec) / s
        loss = output_error(D, G).item()
        if k == 0:
            plain = loss
        if best is None or loss < best.loss:
            best = ScaleSearch(scale=s, alpha=alpha, loss=loss, loss_plain=plain)
    assert best is not None
    return ScaleSearch(best.scale, best.alpha, best.loss, plain)


def _gram_blocks(G: torch.Tensor, cols: int, n_groups: int) -> torch.Tensor:
    """The (n_groups, cols, cols) diagonal blocks of G (zero-padded like the last group)."""
    pad = n_groups * cols - G.shape[0]
    Gp = F.pad(G, (0, pad, 0, pad)) if pad else G
    idx = torch.arange(n_groups, device=G.device)
    return Gp.reshape(n_groups, cols, n_groups, cols)[idx, :, idx, :]


def awq_search_clip(
    W: torch.Tensor,
    G: torch.Tensor,
    spec: QuantSpec,
    n_grid: int = 20,
    max_shrink: float = 0.5,
) -> torch.Tensor:
    """Per (row, group), the clipping bound max|w| x (1 - i/n_grid), i < max_shrink x n_grid,
    whose quantized group gives the least output error: the group's contribution
    d^T G_gg d to the output, with G_gg the group's diagonal block of G. Returns the
    bounds (out, n_groups); clamp W to [-bound, bound] before quantizing."""
    W, G = W.float(), G.float()
    g, cols = _group_view(W, spec)  # (out, n_groups, cols)
    Gb = _gram_blocks(G, cols, g.shape[1])  # (n_groups, cols, cols)
    amax = g.abs().amax(-1)  # (out, n_groups)
    best_err = torch.full_like(amax, float("inf"))
    best = amax.clone()
    for i in range(max(1, int(max_shrink * n_grid))):
        bound = amax * (1 - i / n_grid)
        cw = torch.maximum(torch.minimum(g, bound.unsqueeze(-1)), -bound.unsqueeze(-1))
        scale, zero = compute_scale_zero(cw, spec)
        q = quantize_with(cw, scale, zero, spec.bits).float()
        z = 0.0 if zero is None else zero.unsqueeze(-1)
        d = g - (q - z) * scale.unsqueeze(-1)  # error against the unclipped weights
        err = torch.einsum("okc,kcd,okd->ok", d, Gb, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, bound, best)
    return best


def clamp_groups(W: torch.Tensor, bound: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """W (out, in) clamped per (row, group) to [-bound, bound]."""
    out_f, in_f = W.shape
    g, cols = _group_view(W.float(), spec)
    b = bound.unsqueeze(-1)
    return torch.maximum(torch.minimum(g, b), -b).reshape(out_f, -1)[:, :in_f].to(W.dtype)
