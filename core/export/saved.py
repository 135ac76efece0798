"""Export a run's kept model (a folder written by :func:`core.save.save_compressed`): the
one entry the CLI (``python -m workers export``) and the Run page share, the bytes an
export will need (checked against the data quota before any work) and its zip."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

from core.export.compressed_tensors import (
    ZP_PACKED,
    ExportError,
    export_compressed_tensors,
)
from core.export.dense import DENSE_DTYPES, export_dense
from core.paths import temp_path

CT, DENSE = "compressed-tensors", "dense"
FORMATS = (CT, DENSE)


def numeric_metrics(result: dict[str, Any] | None) -> dict[str, Any]:
    """The run's numbers (what the README lists): every plain number of its result."""
    return {
        k: v
        for k, v in (result or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def export_saved(
    folder: str | Path,
    out: str | Path,
    fmt: str = CT,
    *,
    recipe: Any = None,
    metrics: dict[str, Any] | None = None,
    fingerprint: dict[str, Any] | None = None,
    dtype: str = "float16",
    zero_points: str = ZP_PACKED,
) -> Path:
    """Load the kept model in ``folder`` and write it to ``out`` in ``fmt``; raises
    :class:`ExportError` (unexportable layer, bad format) or ``core.save.SaveError``."""
    from core.save import load_compressed

    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if dtype not in DENSE_DTYPES:
        raise ExportError(f"dtype {dtype!r}: expected one of {', '.join(DENSE_DTYPES)}")
    loaded = load_compressed(folder)
    about = {
        "tokenizer": loaded.tokenizer,
        "recipe": recipe,
        "metrics": metrics,
        "fingerprint": fingerprint,
    }
    if fmt == DENSE:
        return export_dense(loaded.model, out, dtype=dtype, **about)
    return export_compressed_tensors(loaded.model, out, zero_points=zero_points, **about)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def export_bytes(folder: str | Path, fmt: str, uncompressed_bytes: int | None) -> int:
    """An upper bound on what the export folder takes: about the kept model for
    compressed-tensors; for a dense export the uncompressed model as the run loaded it
    (16-bit weights are no larger), or four times the kept model when that is unknown."""
    kept = folder_bytes(Path(folder))
    if fmt == DENSE:
        return int(uncompressed_bytes) if uncompressed_bytes else 4 * kept
    return kept + kept // 20  # shapes, packing to whole int32 words


def zip_folder(folder: Path, dest: Path) -> Path:
    """A zip of ``folder``'s files at its top level, written file by file to ``dest``."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            z.write(f, f.relative_to(folder).as_posix())
    return dest


def export_zip_bytes(folder: str | Path, fmt: str, name: str, **kwargs: Any) -> bytes:
    """The export of the kept model in ``folder`` as the bytes of a zip: written in a
    temporary folder beside it (named for this process, so ``workers gc`` removes what a
    killed export leaves) and removed before returning."""
    folder = Path(folder)
    tmp = temp_path(folder.with_name(name), ".export")
    tmp.mkdir(parents=True)
    try:
        out = export_saved(folder, tmp / "model", fmt, **kwargs)
        return zip_folder(out, tmp / "model.zip").read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = [
    "CT",
    "DENSE",
    "FORMATS",
    "export_bytes",
    "export_saved",
    "export_zip_bytes",
    "numeric_metrics",
]
