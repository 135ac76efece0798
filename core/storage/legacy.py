"""Modules saved by the layout before ``core.storage`` (save format version 1).

Version 1 folders name their classes in ``core.layers``, ``core.layers_int8`` and
``core.sparse``. Formats whose buffers did not change are only renamed; the three
affine layouts of that time (``QuantLinear``, ``Int4WeightOnlyLinear``,
``Int8WeightOnlyLinear``) are decoded to their integers and rebuilt as one
:class:`~core.storage.affine.AffineLinear`, which gives the same weights exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from core.quant.pack import unpack_bits
from core.quant.rtn import QuantizedTensor, qrange
from core.storage.affine import AffineLinear, code_offset
from core.storage.base import CompressedLinear
from core.storage.bnb import Bnb4bitLinear, BnbInt8Linear
from core.storage.cast import CastLinear
from core.storage.fp8 import FP8Linear
from core.storage.int8_rows import LLMInt8Linear, W8A8Linear
from core.storage.nm_sparse import NMSparseLinear
from core.storage.unstructured import BitmaskSparseLinear, CSRSparseLinear

LEGACY_VERSION = 1

# Same buffers under a new class: only the class path changed.
RENAMED: dict[str, type[CompressedLinear]] = {
    "core.layers.CastLinear": CastLinear,
    "core.layers.FP8Linear": FP8Linear,
    "core.layers.BnbInt8Linear": BnbInt8Linear,
    "core.layers.Bnb4bitLinear": Bnb4bitLinear,
    "core.layers_int8.W8A8Linear": W8A8Linear,
    "core.layers_int8.LLMInt8Linear": LLMInt8Linear,
    "core.sparse.NMSparseLinear": NMSparseLinear,
    "core.sparse.BitmaskSparseLinear": BitmaskSparseLinear,
    "core.sparse.CSRSparseLinear": CSRSparseLinear,
}

_DROPPED_ATTRS = ("out_dtype",)  # recorded by version 1, never read


class LegacyLayoutError(ValueError):
    """A version 1 module this code cannot convert."""


def _quant_linear(attrs: dict[str, Any], t: dict[str, torch.Tensor]) -> QuantizedTensor:
    """``core.layers.QuantLinear``: flat packed ``q - qmin`` codes, int8 zero points."""
    bits, sym = attrs["bits"], attrs["symmetric"]
    n = attrs["out_features"] * attrs["in_features"]
    q = unpack_bits(t["qweight"], bits, n).to(torch.int16) + qrange(bits, sym)[0]
    zero = t.get("zero")
    return QuantizedTensor(
        q=q.reshape(attrs["out_features"], attrs["in_features"]),
        scale=t["scale"].float(),
        zero=None if zero is None else zero.float(),
        bits=bits,
        group_cols=attrs["group_cols"],
    )


def _int4_weight_only(attrs: dict[str, Any], t: dict[str, torch.Tensor]) -> QuantizedTensor:
    """``core.layers_int8.Int4WeightOnlyLinear``: (N, KP/2) codes, uint8 zero codes."""
    n, half = t["w_packed"].shape
    codes = unpack_bits(t["w_packed"].reshape(-1), 4, n * half * 2).reshape(n, half * 2)
    off = code_offset(4)
    return QuantizedTensor(
        q=codes[:, : attrs["in_features"]].to(torch.int16) - off,
        scale=t["scale"].float(),
        zero=t["zero"].float() - off,
        bits=4,
        group_cols=attrs["group_size"],
    )


def _int8_weight_only(attrs: dict[str, Any], t: dict[str, torch.Tensor]) -> QuantizedTensor:
    """``core.layers_int8.Int8WeightOnlyLinear``: int8 rows, float32 scale per row."""
    return QuantizedTensor(
        q=t["w_int8"].to(torch.int16),
        scale=t["w_scale"].float().reshape(-1, 1),
        zero=None,
        bits=8,
        group_cols=attrs["in_features"],
    )


# Layouts that changed: decode to the quantizer's output, and the scale dtype they kept.
AFFINE: dict[str, tuple[Callable[..., QuantizedTensor], torch.dtype]] = {
    "core.layers.QuantLinear": (_quant_linear, torch.float16),
    "core.layers_int8.Int4WeightOnlyLinear": (_int4_weight_only, torch.float16),
    "core.layers_int8.Int8WeightOnlyLinear": (_int8_weight_only, torch.float32),
}


def convert_legacy(entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> CompressedLinear:
    """The current module for a version 1 JSON ``entry`` and its saved ``tensors`` (the
    module's own state, names without the module prefix); filled, ready to run."""
    path, attrs = entry["class"], entry["attrs"]
    if path in AFFINE:
        decode, scale_dtype = AFFINE[path]
        return AffineLinear.build(
            decode(attrs, tensors), tensors.get("bias"), scale_dtype=scale_dtype
        )
    if path in RENAMED:
        kept = {k: v for k, v in attrs.items() if k not in _DROPPED_ATTRS}
        mod = RENAMED[path].from_storage_config({**entry, "attrs": kept})
        mod.load_state_dict(tensors, strict=True)
        return mod
    raise LegacyLayoutError(f"{path!r} is not a storage class this version can convert")
