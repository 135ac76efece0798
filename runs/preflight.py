"""Checks a job makes before any expensive work, so bad input fails in seconds with the
numbers, not after minutes of baseline evaluation or with a full disk.

- The text sets (uploads included) are resolved before the model loads.
- The baseline's log-prob cache (windows x ctx x vocab x 2 bytes, float16) must fit
  under a cap and in the free disk of the cache folder before it is computed. The cap
  is ``COMPRESSLAB_MAX_CACHE_BYTES`` (a whole number of bytes; default 4 GiB, see
  :data:`DEFAULT_MAX_CACHE_BYTES`); ``DISK_RESERVE_BYTES`` more must stay free.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.data import human_bytes
from core.metrics import LogprobStore, baseline_cache_bytes
from core.registry import ConfigError

MAX_CACHE_ENV = "COMPRESSLAB_MAX_CACHE_BYTES"
DEFAULT_MAX_CACHE_BYTES = 4 * 2**30  # one baseline cache; a 1M-token demo one is 7.6 GiB
DISK_RESERVE_BYTES = 256 * 2**20  # left free on the cache's disk after the cache is written


def max_cache_bytes() -> int:
    """The cap on one baseline cache: ``$COMPRESSLAB_MAX_CACHE_BYTES`` or the default."""
    raw = os.environ.get(MAX_CACHE_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_CACHE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_CACHE_ENV}={raw!r} must be a positive whole number of bytes")
    return value


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
