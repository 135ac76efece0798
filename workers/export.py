"""``python -m workers export RUN_ID --format compressed-tensors|dense --out DIR``.

Exports the model a run kept (its ``saved_model`` folder, written by core.save) as a
compressed-tensors checkpoint that vLLM, SGLang and transformers load, or as a dense
float16 checkpoint (any stored format) for any engine. A run that kept no model, or
whose layers have no compressed-tensors equivalent, is refused with one ``error:`` line
and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

RERUN_HINT = (
    "queue its recipe again with the model kept (New run: 'Keep the compressed model for "
    "download'; CLI: python -m workers run ... --save), then export that run"
)


class ExportRefused(Exception):
    """Bad input or an unexportable run: one ``error:`` line, exit status 2."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``export`` on the CLI's subparsers."""
    from core.export import DENSE_DTYPES, ZP_LAYOUTS
    from core.export.saved import CT, FORMATS

    p = subparsers.add_parser(
        "export", help="export a run's kept model (compressed-tensors or dense float16)"
    )
    p.add_argument("run_id", type=int, metavar="RUN_ID")
    p.add_argument("--format", choices=FORMATS, default=CT)
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument(
        "--dtype", choices=list(DENSE_DTYPES), default="float16", help="dense: weights' dtype"
    )
    p.add_argument(
        "--zero-points",
        choices=ZP_LAYOUTS,
        default="packed",
        help="compressed-tensors, asymmetric int-N: packed (the library's layout, vLLM) or "
        "padded (loads in transformers 5.23)",
    )
    p.add_argument("--db", default=None, help="database URL (default: DATABASE_URL)")
    p.set_defaults(func=run_export)


def _job(db_url: str | None, run_id: int) -> Any:
    from db.queue import get_job
    from db.session import default_url, session_factory

    job = get_job(session_factory(db_url or default_url()), run_id)
    if job is None:
        raise ExportRefused(f"no run {run_id}")
    return job


def _saved_folder(job: Any) -> Path:
    from runs.catalogue import SAVED_MODEL

    saved = (job.result or {}).get(SAVED_MODEL.key)
    if not saved:
        raise ExportRefused(f"run {job.id} kept no model: {RERUN_HINT}")
    folder = Path(saved)
    if not folder.is_dir():
        raise ExportRefused(f"run {job.id}'s saved model {folder} is gone")
    return folder


def export_run(
    db_url: str | None,
    run_id: int,
    out: Path,
    fmt: str = "compressed-tensors",
    *,
    dtype: str = "float16",
    zero_points: str = "packed",
) -> Path:
    """Export run ``run_id``'s kept model to ``out`` in ``fmt``; :class:`ExportRefused` if
    it cannot."""
    job = _job(db_url, run_id)
    return export_job(job, out, fmt, dtype=dtype, zero_points=zero_points)


def export_job(
    job: Any,
    out: Path,
    fmt: str = "compressed-tensors",
    *,
    dtype: str = "float16",
    zero_points: str = "packed",
) -> Path:
    """Export ``job``'s (a db.models.Job) kept model to ``out`` in ``fmt``."""
    from core.export import ExportError
    from core.export.saved import FORMATS, export_saved, numeric_metrics
    from core.save import SaveError
    from runs.records import recipe_steps

    if fmt not in FORMATS:
        raise ExportRefused(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    folder = _saved_folder(job)
    try:
        return export_saved(
            folder,
            out,
            fmt,
            recipe=recipe_steps(job.fingerprint, job.spec),
            metrics=numeric_metrics(job.result),
            fingerprint=job.fingerprint,
            dtype=dtype,
            zero_points=zero_points,
        )
    except (ExportError, SaveError) as e:
        raise ExportRefused(f"run {job.id}: {e}") from None


def run_export(args: argparse.Namespace) -> int:
    """The handler: prints the folder written; a refusal exits 2 with ``error:``."""
    try:
        out = export_run(
            args.db,
            args.run_id,
            args.out,
            args.format,
            dtype=args.dtype,
            zero_points=args.zero_points,
        )
    except ExportRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported run {args.run_id} ({args.format}) to {out}")
    return 0
