"""Pruned linears: dense until the recipe is done, then packed into a sparse format.

A pruning step returns a :class:`PrunedLinear`: an ``nn.Linear`` holding zeros where
weights were pruned, carrying its sparsity ``pattern`` ("2:4", "4:8" or
"unstructured"). It stays an ``nn.Linear`` on purpose, so that a later quantization
step in the same recipe can still target it (and quantize the zeros exactly). Once
every step has run, the walker calls the pruning method's ``finalize_model``, which
calls :func:`pack_pruned_linears`: each linear still pruned but not otherwise
compressed moves into its sparse format (N:M, bitmask or CSR), or stays dense where
that is the smallest honest form.
"""

from __future__ import annotations

import torch
from torch import nn

from core.prune.masks import parse_pattern
from core.storage.affine import AffineLinear
from core.storage.nm_sparse import NMSparseLinear
from core.storage.sparse_affine import pack_sparse_affine
from core.storage.unstructured import (
    BitmaskSparseLinear,
    CSRSparseLinear,
    choose_unstructured_layout,
)

UNSTRUCTURED = "unstructured"


class PrunedLinear(nn.Linear):
    """A pruned, not yet packed ``nn.Linear``; ``pattern`` is "N:M" or "unstructured"."""

    pattern: str

    @classmethod
    def build(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        keep: torch.Tensor,
        pattern: str,
        dtype: torch.dtype | None = None,
    ) -> PrunedLinear:
        """``weight`` zeroed where ``keep`` is False, cast to ``dtype`` (the pruned layer's:
        SparseGPT returns its updated weights in float32), on ``weight``'s device."""
        weight = weight.detach() if dtype is None else weight.detach().to(dtype)
        out_f, in_f = weight.shape
        mod = torch.nn.utils.skip_init(
            cls, in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype
        )
        w = weight.masked_fill(~keep.to(weight.device), 0.0)
        mod.weight = nn.Parameter(w, requires_grad=False)
        if bias is not None:
            mod.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        mod.pattern = pattern
        return mod

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pattern={self.pattern}"


def pack_linear(layer: PrunedLinear) -> nn.Module:
    """The sparse format for a pruned linear; a plain ``nn.Linear`` where dense is the
    smallest honest form."""
    w = layer.weight.detach()
    if layer.pattern != UNSTRUCTURED:
        n, m = parse_pattern(layer.pattern)
        return NMSparseLinear.build(w, layer.bias, n=n, m=m)
    nnz = int((w != 0).sum())
    layout = choose_unstructured_layout(w.shape[0], w.shape[1], nnz, w.element_size())
    if layout == "bitmask":
        return BitmaskSparseLinear.build(w, layer.bias)
    if layout == "csr":
        return CSRSparseLinear.build(w, layer.bias)
    dense = torch.nn.utils.skip_init(
        nn.Linear,
        w.shape[1],
        w.shape[0],
        bias=layer.bias is not None,
        device=w.device,
        dtype=w.dtype,
    )
    dense.weight, dense.bias = layer.weight, layer.bias
    return dense


def pack_pruned_linears(model: nn.Module) -> list[str]:
    """Move every :class:`PrunedLinear` of ``model`` into its sparse format.

    A pruned linear a later step quantized into the affine integer format (Wanda, then
    RTN 4-bit) holds its pruned weights as zero codes: it moves into the sparse affine
    format (mask + packed non-zero codes) where that is smaller, so both savings stay.
    Returns the names of the linears whose storage changed (a pruned linear that stays
    dense becomes a plain ``nn.Linear`` and is not listed).
    """
    changed = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, AffineLinear):
            new = pack_sparse_affine(mod)
            if new is not mod:
                _replace(model, name, new)
                changed.append(name)
            continue
        if not isinstance(mod, PrunedLinear):
            continue
        new = pack_linear(mod)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        if type(new) is not nn.Linear:
            changed.append(name)
    return changed


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
