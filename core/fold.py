"""Function-preserving scale folding: a per-channel scale moves from a source module's
output channels into the input columns of the linears that read them.

For the scale-migration methods (SmoothQuant, AWQ): the source is a norm (weight and
bias of shape (C,)) or a linear (weight (C, in), bias (C,)); each reader is a linear
with weight (out, C). Dividing the source's output channel j by s_j and multiplying
every reader's input column j by s_j leaves the readers' outputs unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_scales(source: nn.Module, readers: list[nn.Module], s: torch.Tensor) -> None:
    """Source output channel j /= s_j; every reader's input column j *= s_j (in place)."""
    w = source.weight
    w.div_(s.to(w.dtype) if w.dim() == 1 else s.to(w.dtype).unsqueeze(1))
    bias = getattr(source, "bias", None)
    if bias is not None:
        bias.div_(s.to(bias.dtype))
    for lin in readers:
        lin.weight.mul_(s.to(lin.weight.dtype))
