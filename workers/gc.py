"""``python -m workers gc [--older-than DAYS] [--dry-run] [--db URL]``: free the data folder.

What goes (planned by :func:`plan`, a pure function, then removed by :func:`remove`):

- kept models (``models/run-<id>`` and its ``run-<id>.zip``) whose run is gone from the
  database, and with ``--older-than`` those not written for that many days;
- with ``--older-than``, baseline caches (``baselines/<key>.f16`` with its ``.json`` and
  ``.lock``) not used for that many days (the later of access and modification time);
- temporary files and folders (``*.tmp``) left by a killed save or baseline: untouched
  for an hour and not written by a process still running here (its id is in the name).

Every worker start removes the stale temporary files too (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DAY_S = 86400.0
TEMP_AGE_S = 3600.0  # a temporary file older than this is abandoned whoever wrote it
_TEMP = re.compile(r"\.(\d+)\.[0-9a-f]{8}(?:\.[\w]+)?\.tmp$")
_MODEL = re.compile(r"^run-(\d+)(?:\.zip)?$")


@dataclass(frozen=True)
class Entry:
    """One thing in the data folder, as :func:`scan` saw it."""

    kind: str  # "baseline" | "model" | "temp"
    paths: tuple[Path, ...]
    last_used: float  # seconds since the epoch
    size: int
    run_id: int | None = None  # a kept model's run
    writer_alive: bool = False  # a temporary file whose writer process still runs


@dataclass(frozen=True)
class Removal:
    entry: Entry
    reason: str


def plan(
    entries: Iterable[Entry],
    run_ids: set[int],
    now: float,
    older_than_days: float | None = None,
    temp_age_s: float = TEMP_AGE_S,
) -> list[Removal]:
    """What to remove, and why; touches nothing."""
    old = None if older_than_days is None else now - older_than_days * DAY_S
    out = []
    for e in entries:
        reason = _reason(e, run_ids, now, old, temp_age_s)
        if reason:
            out.append(Removal(e, reason))
    return out


def _reason(
    e: Entry, run_ids: set[int], now: float, old: float | None, temp_age_s: float
) -> str | None:
    age_days = (now - e.last_used) / DAY_S
    if e.kind == "temp":
        if e.writer_alive or now - e.last_used <= temp_age_s:
            return None
        return f"abandoned temporary file, untouched for {(now - e.last_used) / 3600:.1f} h"
    if e.kind == "model" and e.run_id not in run_ids:
        return f"kept model of run {e.run_id}, which is not in the database"
    if old is not None and e.last_used < old:
        return f"{e.kind} not used for {age_days:.1f} days"
    return None


def remove(removals: Iterable[Removal]) -> int:
    """Delete what :func:`plan` chose; the bytes freed. A path already gone is skipped."""
    freed = 0
    for r in removals:
        for p in r.entry.paths:
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except FileNotFoundError:
                continue
        freed += r.entry.size
        log.info("removed %s (%s)", ", ".join(str(p) for p in r.entry.paths), r.reason)
    return freed


# --- looking at the disk -------------------------------------------------------------


def _size(p: Path) -> int:
    if p.is_dir() and not p.is_symlink():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def _last_used(p: Path) -> float:
    st = p.stat()
    return max(st.st_atime, st.st_mtime)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: assume it is writing
    return True


def _temp_entry(p: Path) -> Entry:
    m = _TEMP.search(p.name)
    alive = bool(m) and _pid_alive(int(m.group(1)))  # type: ignore[union-attr]
    return Entry("temp", (p,), p.stat().st_mtime, _size(p), writer_alive=alive)


def _is_temp(p: Path) -> bool:
    return p.name.endswith(".tmp")


def scan_baselines(folder: Path) -> list[Entry]:
    """The baseline caches (grouped by key) and temporary files of ``folder``."""
    if not folder.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    out = []
    for p in sorted(folder.iterdir()):
        if _is_temp(p):
            out.append(_temp_entry(p))
        elif p.is_file():
            groups.setdefault(p.name.split(".", 1)[0], []).append(p)
    for paths in groups.values():
        used = max(_last_used(p) for p in paths)
        out.append(Entry("baseline", tuple(paths), used, sum(_size(p) for p in paths)))
    return out


def scan_models(folder: Path) -> list[Entry]:
    """The kept models (folder and zip, by run) and temporary files of ``folder``."""
    if not folder.is_dir():
        return []
    runs: dict[int, list[Path]] = {}
    out = []
    for p in sorted(folder.iterdir()):
        if _is_temp(p):
            out.append(_temp_entry(p))
        elif m := _MODEL.match(p.name):
            runs.setdefault(int(m.group(1)), []).append(p)
    for run_id, paths in runs.items():
        used = max(p.stat().st_mtime for p in paths)
        size = sum(_size(p) for p in paths)
        out.append(Entry("model", tuple(paths), used, size, run_id=run_id))
    return out


def scan_temps(folder: Path) -> list[Entry]:
    """The temporary files and folders of ``folder``."""
    if not folder.is_dir():
        return []
    return [_temp_entry(p) for p in sorted(folder.iterdir()) if _is_temp(p)]


def remove_stale_temps(folders: Iterable[Path], now: float | None = None) -> int:
    """Remove the abandoned temporary files of ``folders`` (a worker's start); bytes freed."""
    try:
        entries = [e for f in folders for e in scan_temps(f)]
        stale = plan(entries, set(), time.time() if now is None else now)
        if stale:
            log.info("removing %d abandoned temporary files", len(stale))
        return remove(stale)
    except OSError as e:  # never stops a worker from starting
        log.warning("could not remove abandoned temporary files: %s", e)
        return 0


# --- the command ---------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``gc`` on the ``python -m workers`` subcommands."""
    p = subparsers.add_parser(
        "gc", help="remove unused baseline caches, kept models and temporary files"
    )
    p.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="also remove caches not used, and kept models not written, for DAYS days",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would go; remove nothing")
    p.add_argument("--db", help="database URL (default: DATABASE_URL or the app's SQLite file)")
    p.set_defaults(func=run_gc)


def _run_ids(db_url: str | None) -> set[int]:
    from sqlalchemy import select

    from db.models import Job
    from db.session import session_factory

    with session_factory(db_url)() as s:
        return set(s.scalars(select(Job.id)))


def run_gc(args: argparse.Namespace) -> int:
    """The ``gc`` command: plan, print each removal, remove unless ``--dry-run``."""
    from core.data import human_bytes
    from db.session import data_dir

    if args.older_than is not None and not args.older_than >= 0:
        print("error: --older-than must be 0 or more days", file=sys.stderr)
        return 2
    root = data_dir()
    entries = scan_baselines(root / "baselines") + scan_models(root / "models")
    removals = plan(entries, _run_ids(args.db), time.time(), args.older_than)
    for r in removals:
        print(f"{'would remove' if args.dry_run else 'remove'} {r.entry.paths[0]}: {r.reason}")
    total = sum(r.entry.size for r in removals)
    if args.dry_run:
        print(f"{len(removals)} to remove, {human_bytes(total)} (dry run: nothing removed)")
    else:
        print(f"removed {len(removals)}, freed {human_bytes(remove(removals))}")
    return 0
