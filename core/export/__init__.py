"""Exports of a compressed model to formats other tools load (serving engines)."""

from core.export.compressed_tensors import (
    SUPPORTED_FORMATS,
    ZP_LAYOUTS,
    ExportError,
    export_compressed_tensors,
    pack_int32,
)
from core.export.dense import DENSE_DTYPES, export_dense

__all__ = [
    "DENSE_DTYPES",
    "SUPPORTED_FORMATS",
    "ZP_LAYOUTS",
    "ExportError",
    "export_compressed_tensors",
    "export_dense",
    "pack_int32",
]
