"""Exports of a compressed model to formats other tools load (serving engines)."""

from core.export.compressed_tensors import (
    SUPPORTED_FORMATS,
    ExportError,
    export_compressed_tensors,
    pack_int32,
)

__all__ = ["SUPPORTED_FORMATS", "ExportError", "export_compressed_tensors", "pack_int32"]
