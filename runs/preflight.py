"""Checks a job makes before any expensive work, so bad input fails in seconds with the
numbers, not after minutes of baseline evaluation or with a full disk.

- The text sets (uploads included) are resolved before the model loads.
- The baseline's log-prob cache (windows x ctx x vocab x 2 bytes, float16) must fit
  under a cap and in the free disk of the cache folder before it is computed. The cap
  is ``COMPRESSLAB_MAX_CACHE_BYTES`` (a whole number of bytes; default 4 GiB, see
  :data:`DEFAULT_MAX_CACHE_BYTES`); ``DISK_RESERVE_BYTES`` more must stay free.
- Kept models and baseline caches together stay under a quota on the data folder,
  ``COMPRESSLAB_MAX_DATA_BYTES`` (default 20 GiB, :data:`DEFAULT_MAX_DATA_BYTES`): a new
  cache that would pass it is refused, a model that would pass it is not kept (the run's
  notes say so). ``python -m workers gc`` frees room.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from core.data import human_bytes
from core.metrics import LogprobStore, baseline_cache_bytes
from core.registry import ConfigError

MAX_CACHE_ENV = "COMPRESSLAB_MAX_CACHE_BYTES"
DEFAULT_MAX_CACHE_BYTES = 4 * 2**30  # one baseline cache; a 1M-token demo one is 7.6 GiB
MAX_DATA_ENV = "COMPRESSLAB_MAX_DATA_BYTES"
DEFAULT_MAX_DATA_BYTES = 20 * 2**30  # kept models + baseline caches, all together
DISK_RESERVE_BYTES = 256 * 2**20  # left free on the cache's disk after the cache is written


def _bytes_setting(env: str, default: int) -> int:
    """A positive whole number of bytes from ``$env``, or ``default`` when unset."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{env}={raw!r} must be a positive whole number of bytes")
    return value


def max_cache_bytes() -> int:
    """The cap on one baseline cache: ``$COMPRESSLAB_MAX_CACHE_BYTES`` or the default."""
    return _bytes_setting(MAX_CACHE_ENV, DEFAULT_MAX_CACHE_BYTES)


def max_data_bytes() -> int:
    """The quota on kept models and caches: ``$COMPRESSLAB_MAX_DATA_BYTES`` or the default."""
    return _bytes_setting(MAX_DATA_ENV, DEFAULT_MAX_DATA_BYTES)


def data_bytes(folders: Iterable[Path]) -> int:
    """The bytes of every file under ``folders`` (the ones that exist; each counted once)."""
    seen: set[Path] = set()
    total = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for f in folder.rglob("*"):
            if f.is_file() and f not in seen:
                seen.add(f)
                total += f.stat().st_size
    return total


def quota_problem(folders: Iterable[Path], adding: int, what: str) -> str | None:
    """Why writing ``adding`` more bytes of ``what`` under ``folders`` would pass the
    data quota, with the numbers; None when it fits."""
    folders = list(folders)
    used, cap = data_bytes(folders), max_data_bytes()
    if used + adding <= cap:
        return None
    where = ", ".join(str(f) for f in folders)
    return (
        f"{what} would need {human_bytes(adding)} and {human_bytes(used)} is already used "
        f"in {where}; the quota is {human_bytes(cap)} ({MAX_DATA_ENV}): free room with "
        "python -m workers gc --older-than DAYS"
    )


def check_cache_quota(store: LogprobStore, folders: Iterable[Path]) -> None:
    """Refuse, with the numbers, a baseline cache not on disk yet that would pass the
    data quota."""
    if store.exists():
        return
    n_windows, positions, vocab = store.shape
    needed = baseline_cache_bytes(n_windows, positions + 1, vocab)
    if problem := quota_problem(folders, needed, "the baseline cache"):
        raise ConfigError(problem)


def check_cache_room(store: LogprobStore, cache_dir: Path) -> None:
    """Refuse, with the numbers (needed, cap, free), a baseline cache that is not on disk
    yet and would pass the cap or fill the disk."""
    if store.exists():
        return
    n_windows, positions, vocab = store.shape
    ctx = positions + 1
    needed = baseline_cache_bytes(n_windows, ctx, vocab)
    cap = max_cache_bytes()
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if needed <= cap and needed + DISK_RESERVE_BYTES <= free:
        return
    raise ConfigError(
        f"the baseline cache would need {human_bytes(needed)} ({n_windows} windows x "
        f"{positions} positions (ctx {ctx} - 1) x {vocab} vocab x 2 bytes); the cap is "
        f"{human_bytes(cap)} ({MAX_CACHE_ENV}) "
        f"and {human_bytes(free)} is free: lower eval_tokens or ctx"
    )
