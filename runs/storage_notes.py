"""What the Run page says about a pruned-then-quantized model's storage: where both
savings were kept (core/storage/sparse_affine.py), and, where they were not, plainly why
the bytes equal the dense quantized model's."""

from __future__ import annotations

from collections import Counter

from torch import nn

from core.recipe import Recipe
from core.registry import get_method
from core.storage import AffineLinear, CompressedLinear, SparseAffineLinear
from core.storage.sparse_affine import sparse_pays
from core.walk import find_linears

PRUNED_ZEROS = 0.25  # a quantized layer with at least this share of zero weights was pruned


def prunes_then_quantizes(recipe: Recipe) -> bool:
    kinds = [get_method(s.method).kind for s in recipe.steps]
    return "prune" in kinds and "quant" in kinds[kinds.index("prune") + 1 :]


def _why_dense(mod: CompressedLinear) -> str:
    if isinstance(mod, AffineLinear):
        _, sparse, dense = sparse_pays(mod)
        return (
            f"at {mod.bits} bits a bitmask plus the non-zero codes ({sparse:,} B) would not be "
            f"smaller than the dense codes ({dense:,} B) at this sparsity"
        )
    return (
        f"the {mod.format_name} format has no sparse layout here: the pruned zeros are stored "
        "as codes like any other weight"
    )


def sparse_quant_notes(model: nn.Module, recipe: Recipe) -> list[str]:
    """Notes for a recipe that prunes, then quantizes ([] for any other)."""
    if not prunes_then_quantizes(recipe):
        return []
    kept, dense = 0, Counter()
    for mod in find_linears(model).values():
        if isinstance(mod, SparseAffineLinear):
            kept += 1
        elif isinstance(mod, CompressedLinear):
            w = mod.dequantized_weight()
            if float((w == 0).float().mean()) >= PRUNED_ZEROS:
                dense[_why_dense(mod)] += 1
    notes = []
    if kept:
        notes.append(
            f"pruned then quantized: {kept} layer(s) store a bitmask plus the packed non-zero "
            "codes (sparse-affine-int), so the pruning's saving is kept beside the "
            "quantization's (the forward rebuilds the dense weight: smaller, not faster)"
        )
    for why, n in dense.items():
        notes.append(
            f"pruned then quantized: {n} layer(s) take the bytes of the dense quantized "
            f"model, because {why}"
        )
    return notes
