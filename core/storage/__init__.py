"""Stored formats: one module per way compressed weights are laid out in memory.

Methods produce formats (each through ``Cls.build(weight, bias, **format_params)``),
kernels serve formats, ``core.save`` saves and loads formats. :func:`storage_info`
reads what any linear really stores, for per-layer rows and weight memory.
"""

from core.storage.base import (
    CompressedLinear,
    StorageInfo,
    module_storage_bytes,
    storage_info,
    tensor_bytes,
)

__all__ = [
    "CompressedLinear",
    "StorageInfo",
    "module_storage_bytes",
    "storage_info",
    "tensor_bytes",
]
