"""Activation statistics of every linear's input over the calibration set.

What LLM.int8() and SmoothQuant exist for: a few input channels (hidden dimensions)
carry values far larger than the rest. Per linear we keep the per-input-channel
max |x| over every calibration token, and how many values exceed LLM.int8()'s outlier
threshold (6.0). The statistics are folded on the fly (nothing is kept per token) and
summarised into a small JSON-able dict stored with the run's layer rows.

:func:`collect_activation_stats` is the one place they are gathered: forward
pre-hooks on every linear (``core.walk.find_linears``) during plain forward passes
of the uncompressed model over the calibration batches. No walking loop of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.errors import Cancelled
from core.quant.smoothquant import smoothing_scales, update_absmax
from core.walk import find_linears

OUTLIER_THRESHOLD = 6.0  # LLM.int8()'s default: |x| above this is an outlier feature value
TOP_CHANNELS = 8  # channels listed by name in the summary (largest max |x| first)
SIG_DIGITS = 4  # stored per-channel maxima are rounded to this many significant digits


@dataclass
class ActStats:
    """Running statistics of one linear's input ``x`` (..., in)."""

    channel_absmax: torch.Tensor | None = None  # (in,) max over tokens of |x_j|
    n_values: int = 0  # every element seen
    n_tokens: int = 0  # rows seen (tokens)
    n_above: int = 0  # elements with |x| > threshold
    sum_sq: float = 0.0  # for the RMS of all values


def update_act_stats(
    stats: ActStats, x: torch.Tensor, threshold: float = OUTLIER_THRESHOLD
) -> ActStats:
    """Fold one input batch ``x`` (..., in) into ``stats`` (returned, also updated in place)."""
    rows = x.detach().reshape(-1, x.shape[-1]).float()
    stats.channel_absmax = update_absmax(stats.channel_absmax, rows)
    stats.n_values += rows.numel()
    stats.n_tokens += rows.shape[0]
    stats.n_above += int((rows.abs() > threshold).sum().item())
    stats.sum_sq += float(rows.pow(2).sum().item())
    return stats


def _round_sig(v: float, digits: int = SIG_DIGITS) -> float:
    if v == 0 or not math.isfinite(v):
        return float(v)
    return round(v, digits - 1 - int(math.floor(math.log10(abs(v)))))


def summarize(stats: ActStats, threshold: float = OUTLIER_THRESHOLD) -> dict[str, Any]:
    """A compact JSON-able summary: per-channel maxima (rounded) plus a few numbers."""
    if stats.channel_absmax is None:
        return {}
    cm = stats.channel_absmax.cpu()
    top = torch.argsort(cm, descending=True)[:TOP_CHANNELS]
    median = float(cm.median().item())
    return {
        "threshold": threshold,
        "n_tokens": stats.n_tokens,
        "n_values": stats.n_values,
        "n_above": stats.n_above,
        "frac_above": stats.n_above / stats.n_values if stats.n_values else 0.0,
        "absmax": _round_sig(float(cm.max().item())),
        "rms": _round_sig(math.sqrt(stats.sum_sq / stats.n_values)) if stats.n_values else 0.0,
        "median_channel_absmax": _round_sig(median),
        # How far the largest channel sticks out of the typical one: the SmoothQuant problem.
        "max_over_median": _round_sig(float(cm.max().item()) / median) if median > 0 else None,
        "channels_above": int((cm > threshold).sum().item()),
        "top_channels": [int(i) for i in top.tolist()],
        "channel_absmax": [_round_sig(v) for v in cm.tolist()],
    }


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def collect_activation_stats(
    model: nn.Module,
    batches: list[torch.Tensor],
    *,
    threshold: float = OUTLIER_THRESHOLD,
    should_cancel: Callable[[], bool] = lambda: False,
    on_progress: Callable[[float, str], None] = lambda f, m: None,
) -> dict[str, dict[str, Any]]:
    """Summaries (see :func:`summarize`) of every linear's input over ``batches``, by name.

    Runs the model as it is (call it before compressing to see the original activations),
    one batch at a time; checks ``should_cancel`` between batches (raises Cancelled).
    """
    linears = find_linears(model)
    stats = {name: ActStats() for name in linears}

    def hook(name: str) -> Callable[[nn.Module, tuple], None]:
        def fold(_m: nn.Module, args: tuple) -> None:  # returns None: the input is unchanged
            update_act_stats(stats[name], args[0], threshold)

        return fold

    handles = [mod.register_forward_pre_hook(hook(name)) for name, mod in linears.items()]
    device = _device_of(model)
    try:
        for i, ids in enumerate(batches):
            if should_cancel():
                raise Cancelled
            model(ids.to(device), use_cache=False)
            on_progress((i + 1) / len(batches), f"activation statistics: batch {i + 1}")
    finally:
        for h in handles:
            h.remove()
    return {name: summarize(s, threshold) for name, s in stats.items() if s.n_values}


@dataclass(frozen=True)
class Smoothed:
    """Per-channel ranges before and after SmoothQuant's migration, all (in,)."""

    scale: torch.Tensor  # s_j
    act_before: torch.Tensor  # max |X_j|
    act_after: torch.Tensor  # max |X_j| / s_j
    weight_before: torch.Tensor  # max |W_j| (over output rows)
    weight_after: torch.Tensor  # max |W_j| * s_j


def smoothed_ranges(
    act_absmax: list[float] | torch.Tensor, weight_absmax: list[float] | torch.Tensor, alpha: float
) -> Smoothed:
    """How SmoothQuant's alpha reshapes stored per-channel maxima (one linear on its own).

    ``weight_absmax`` is max |W_j| per input channel (core.stats' ``channel_absmax``);
    the scales come from :func:`core.quant.smoothquant.smoothing_scales`, which only looks
    at the column maxima of W, so a one-row matrix of those maxima gives the same s.
    """
    a = torch.as_tensor(act_absmax, dtype=torch.float32)
    w = torch.as_tensor(weight_absmax, dtype=torch.float32)
    if a.shape != w.shape:
        raise ValueError(f"{a.shape[0]} activation channels but {w.shape[0]} weight columns")
    s = smoothing_scales(a, w.unsqueeze(0), alpha)
    return Smoothed(scale=s, act_before=a, act_after=a / s, weight_before=w, weight_after=w * s)


def difficulty(values: torch.Tensor) -> float:
    """max / median of per-channel maxima: how much one scale for all channels wastes."""
    med = float(values.median().item())
    return float(values.max().item()) / med if med > 0 else float("inf")
