"""``python -m workers export RUN_ID --format compressed-tensors --out DIR``.

Exports the model a run kept (its ``saved_model`` folder, written by core.save) as a
compressed-tensors checkpoint that vLLM, SGLang and transformers load. A run that kept
no model, or whose layers have no compressed-tensors equivalent, is refused with one
``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

FORMATS = ("compressed-tensors",)


class ExportRefused(Exception):
    """Bad input or an unexportable run: one ``error:`` line, exit status 2."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``export`` on the CLI's subparsers."""
    p = subparsers.add_parser("export", help="export a run's kept model (compressed-tensors)")
    p.add_argument("run_id", type=int, metavar="RUN_ID")
    p.add_argument("--format", choices=FORMATS, default="compressed-tensors")
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--db", default=None, help="database URL (default: DATABASE_URL)")
    p.set_defaults(func=run_export)


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The run's numbers (what the README lists): every plain number of the result."""
    return {
        k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _job(db_url: str | None, run_id: int) -> Any:
    from db.queue import get_job
    from db.session import default_url, session_factory

    job = get_job(session_factory(db_url or default_url()), run_id)
    if job is None:
        raise ExportRefused(f"no run {run_id}")
    return job


def _saved_folder(job: Any) -> Path:
    from runs.catalogue import SAVED_MODEL

    saved = job.result.get(SAVED_MODEL.key)
    if not saved:
        raise ExportRefused(
            f"run {job.id} kept no model (queue it with its model kept to export it)"
        )
    folder = Path(saved)
    if not folder.is_dir():
        raise ExportRefused(f"run {job.id}'s saved model {folder} is gone")
    return folder


def export_run(db_url: str | None, run_id: int, out: Path) -> Path:
    """Export run ``run_id``'s kept model to ``out``; :class:`ExportRefused` if it cannot."""
    from core.export import ExportError, export_compressed_tensors
    from core.save import SaveError, load_compressed
    from runs.records import recipe_steps

    job = _job(db_url, run_id)
    folder = _saved_folder(job)
    try:
        loaded = load_compressed(folder)
        return export_compressed_tensors(
            loaded.model,
            out,
            tokenizer=loaded.tokenizer,
            recipe=recipe_steps(job.fingerprint, job.spec),
            metrics=_metrics(job.result),
            fingerprint=job.fingerprint,
        )
    except (ExportError, SaveError) as e:
        raise ExportRefused(f"run {run_id}: {e}") from None


def run_export(args: argparse.Namespace) -> int:
    """The handler: prints the folder written; a refusal exits 2 with ``error:``."""
    try:
        out = export_run(args.db, args.run_id, args.out)
    except ExportRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported run {args.run_id} ({args.format}) to {out}")
    return 0
