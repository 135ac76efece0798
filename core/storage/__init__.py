"""Stored formats: one module per way compressed weights are laid out in memory.

Methods produce formats, each through one constructor convention,
``Cls.build(weight, bias, **format_params)`` (``weight`` is the float weight or the
method's encoding of it, e.g. a :class:`~core.quant.rtn.QuantizedTensor`); kernels
serve formats; ``core.save`` saves and loads formats. :func:`storage_info` reads what
any linear really stores, for per-layer rows and weight memory.

=========================  ====================================  =====================
format                     module                                classes
=========================  ====================================  =====================
affine-int (2..8 bits)     :mod:`core.storage.affine`            AffineLinear
int8-rows (W8A8, int8())   :mod:`core.storage.int8_rows`         W8A8Linear, LLMInt8Linear
fp8                        :mod:`core.storage.fp8`               FP8Linear
bnb-int8 / bnb-4bit        :mod:`core.storage.bnb`               BnbInt8Linear, Bnb4bitLinear
nm-sparse                  :mod:`core.storage.nm_sparse`         NMSparseLinear
sparse-bitmask / -csr      :mod:`core.storage.unstructured`      BitmaskSparseLinear, CSRSparseLinear
cast (16-bit float)        :mod:`core.storage.cast`              CastLinear
sparse-affine-int          :mod:`core.storage.sparse_affine`     SparseAffineLinear
(pruned, not yet packed)   :mod:`core.storage.pruned`            PrunedLinear
=========================  ====================================  =====================
"""

from core.storage.affine import AffineLinear
from core.storage.base import (
    CompressedLinear,
    StorageInfo,
    module_storage_bytes,
    storage_info,
    tensor_bytes,
)
from core.storage.bnb import Bnb4bitLinear, BnbInt8Linear
from core.storage.cast import CastLinear
from core.storage.fp8 import FP8Linear
from core.storage.int8_rows import Int8RowsLinear, LLMInt8Linear, W8A8Linear
from core.storage.nm_sparse import NMSparseLinear
from core.storage.pruned import UNSTRUCTURED, PrunedLinear, pack_pruned_linears
from core.storage.sparse_affine import SparseAffineLinear
from core.storage.unstructured import BitmaskSparseLinear, CSRSparseLinear

__all__ = [
    "UNSTRUCTURED",
    "AffineLinear",
    "BitmaskSparseLinear",
    "Bnb4bitLinear",
    "BnbInt8Linear",
    "CSRSparseLinear",
    "CastLinear",
    "CompressedLinear",
    "FP8Linear",
    "Int8RowsLinear",
    "LLMInt8Linear",
    "NMSparseLinear",
    "PrunedLinear",
    "SparseAffineLinear",
    "StorageInfo",
    "W8A8Linear",
    "module_storage_bytes",
    "pack_pruned_linears",
    "storage_info",
    "tensor_bytes",
]
