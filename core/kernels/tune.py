"""Dispatch tables measured on the machine that runs them.

On first use of an op on a CPU (or by ``python -m workers tune-kernels``) every available
path of the op is timed briefly for each (M bucket, K bucket) cell, and the fastest is
stored in the data folder (``$COMPRESSLAB_DATA``, default the repository's ``data/``) under
``kernels/dispatch_<key>.json``. The key is a hash of what decides which path is
fastest: the CPU model, its feature flags, the core count, the torch version and the
build of our kernel library (its source, flags and compiler: new kernels are timed
again). A table whose stored key differs from this machine's is ignored; the committed
table (core/kernels/dispatch_cpu.json) and then a fixed heuristic are the fallbacks.

Tuning is bounded: each op gets ``budget_s`` seconds in all; large cells time fewer
output columns; a path far slower than the best at one M whose time extrapolated to
the next M is long is not timed again (paths scale differently with M, so fast-but-
fixed-cost paths stay); cells the budget does not reach are left out (the fallbacks
decide there). ``COMPRESSLAB_NO_AUTOTUNE=1`` turns
the automatic tuning off (tests set it); an explicit :func:`tune` still runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from core.kernels import cpu
from core.paths import data_dir, write_json_atomic

TUNE_M = (1, 16, 128, 512, 2048)  # the dispatch's M buckets
TUNE_K = (1024, 4096)  # K buckets: a cell serves every K up to its own
# Untimed rounds before a cell's timed ones: a path's first calls on a new shape run slow
# (torch._int_mm: several calls), which one warm-up left in the timings.
TUNE_WARMUP = 3
TUNE_N = 4096  # output width timed: weights of 4-16 MiB, as LLM layers (beyond L2)
MAX_MACS = 1 << 31  # big cells time fewer output columns (compute-bound there anyway)
BUDGET_S = 4.0  # per op
SLOW_FACTOR = 3.0  # a path this much slower than the best ...
SLOW_CALL_S = 0.05  # ... and predicted slower than this is not timed at larger M
NO_AUTOTUNE_ENV = "COMPRESSLAB_NO_AUTOTUNE"
TABLE_VERSION = 3  # bumped when what is timed changes: older tables are measured again
FLOAT_PATH = "dequant"  # every op's plain float path: always timed, never dropped
MIN_NOISE, MAX_NOISE = 0.05, 0.25  # bounds of the relative noise stored (see noise())


def autotune_enabled() -> bool:
    return os.environ.get(NO_AUTOTUNE_ENV, "").lower() not in {"1", "true", "yes"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> dict:
    """What a measured table is valid for."""
    return {
        "cpu": cpu_model(),
        "flags": sorted(cpu.cpu_flags()),
        "cores": os.cpu_count() or 1,
        "torch": torch.__version__,
        "kernels": cpu.build_id(),
    }


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def table_file(key: dict | None = None) -> Path:
    return data_dir() / "kernels" / f"dispatch_{key_hash(key or machine_key())}.json"


def load_tuned(path: Path | None = None, key: dict | None = None) -> dict | None:
    """The table measured on this machine, or None (missing, unreadable, other key)."""
    key = key or machine_key()
    path = path or table_file(key)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or "rules" not in data:
        return None
    if data.get("version") != TABLE_VERSION:
        return None
    return data


def save_tuned(table: dict, path: Path | None = None) -> Path:
    """Write atomically (a temporary name, then rename): readers never see half a file."""
    path = path or table_file(table["key"])
    write_json_atomic(path, table)
    return path


# ---------------------------------------------------------------- timing


def _op_args(op: str, m: int, k: int, n: int) -> tuple:
    """Representative arguments of ``op`` for an (m, k) cell, weights N x K."""
    g = torch.Generator().manual_seed(m * 31 + k)
    x = torch.randn(m, k, generator=g)
    w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    ws = torch.rand(n, generator=g) * 0.01 + 1e-3
    if op == "int8_linear":
        return (x, w8, ws, None, "dynamic", None)
    if op == "int8_weight_only_linear":
        return (x, w8, ws, None)
    group = min(128, k)  # whole groups: tests tune K = 64
    packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    scale = (torch.rand(n, k // group, generator=g) * 0.01).to(torch.float16)
    zero = torch.full((n, k // group), 8, dtype=torch.uint8)
    return (x, packed, scale, zero, group, None)


def time_paths(fns: dict[str, Callable[[], object]], deadline: float, repeats: int = 3) -> dict:
    """Best of up to ``repeats`` timed calls of each, in ms, after one warm-up each; the
    paths take turns within a round, so a burst of load from elsewhere slows them alike.
    Slow cells (a warm-up above SLOW_CALL_S) get one round; stops at the deadline."""
    return {p: min(v) * 1000 for p, v in time_paths_all(fns, deadline, repeats).items()}


def noise(times: dict[str, list[float]]) -> float:
    """The timing noise of a cell: the median over its paths of the relative spread of
    repeated calls (worst / best - 1), kept within [MIN_NOISE, MAX_NOISE] (one call tells
    nothing; a burst of load elsewhere must not license a path much slower than float)."""
    spreads = sorted(max(v) / min(v) - 1 for v in times.values() if len(v) > 1 and min(v) > 0)
    mid = spreads[len(spreads) // 2] if spreads else MIN_NOISE
    return round(min(MAX_NOISE, max(MIN_NOISE, mid)), 4)


def time_paths_all(
    fns: dict[str, Callable[[], object]], deadline: float, repeats: int = 3, warmup: int = 1
) -> dict[str, list[float]]:
    """Every timed call of each path, in seconds (see :func:`time_paths`), after
    ``warmup`` untimed rounds (fewer where one is slow)."""
    times: dict[str, list[float]] = {p: [] for p in fns}
    with torch.no_grad():
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            for fn in fns.values():
                fn()
            if time.perf_counter() - t0 > SLOW_CALL_S * len(fns):
                repeats = 1
                break
        for _ in range(repeats):
            for p, fn in fns.items():
                t1 = time.perf_counter()
                fn()
                times[p].append(time.perf_counter() - t1)
            if time.perf_counter() > deadline:
                break
    return times


def tune_op(
    op: str,
    paths: dict[str, Callable[..., torch.Tensor]],
    budget_s: float = BUDGET_S,
    ms: Iterable[int] | None = None,
    ks: Iterable[int] | None = None,
    n: int | None = None,
    prefer: Callable[[int, int], str] | None = None,
) -> list[dict]:
    """Rules ``{"m", "k", "path", "ms": {path: ms}, "noise"}`` for the cells reached in
    ``budget_s``; ``noise`` is the cell's relative timing noise (:func:`noise`). Where
    ``prefer(m, k)`` names a path within that noise of the fastest, the cell takes it: a
    near tie is decided by the prior (the heuristic), not by which path was luckier.

    ``paths`` maps a path name to a callable taking the op's arguments with x (M, K); the
    float path (FLOAT_PATH) is always among those timed, so a cell's choice is never
    one measured slower than it. A cell whose noise reaches MAX_NOISE (a machine too busy
    to time) is stored with ``"noisy": true`` and the dispatcher passes over it."""
    ms, ks, n = ms or TUNE_M, ks or TUNE_K, n or TUNE_N
    deadline = time.perf_counter() + budget_s
    rules: list[dict] = []
    for k in ks:
        last: dict[str, tuple[int, float]] = {}  # path -> (M x N, ms) at the previous M
        for m in ms:
            if time.perf_counter() > deadline:
                return rules
            size = m * cell_n(m, k, n)
            args = _op_args(op, m, k, cell_n(m, k, n))
            alive = {p: f for p, f in paths.items() if p == FLOAT_PATH or not _drop(last, p, size)}
            raw = time_paths_all(
                {p: (lambda f=f, a=args: f(*a)) for p, f in alive.items()},
                deadline,
                warmup=TUNE_WARMUP,
            )
            t = {p: min(v) * 1000 for p, v in raw.items()}
            best = min(t, key=t.__getitem__)
            cell_noise = noise(raw)
            prior = prefer(m, k) if prefer is not None else None
            if prior in t and t[prior] <= t[best] * (1 + cell_noise):
                best = prior
            rule = {"m": m, "k": k, "path": best, "ms": {p: round(v, 4) for p, v in t.items()}}
            rule["noise"] = cell_noise
            if rule["noise"] >= MAX_NOISE:  # timed on a machine too busy to tell: not used
                rule["noisy"] = True
            rules.append(rule)
            if not rule.get("noisy"):  # a noisy cell drops no path from the next one
                last = {p: (size, v if v > SLOW_FACTOR * t[best] else 0.0) for p, v in t.items()}
    return rules


def cell_n(m: int, k: int, n: int = TUNE_N) -> int:
    return max(64, min(n, MAX_MACS // (m * k)))


def _drop(last: dict[str, tuple[int, float]], path: str, size: int) -> bool:
    """Not timed at this M: far slower than the best at the previous M (its time was
    kept non-zero) and, extrapolated linearly in M x N, slower than SLOW_CALL_S."""
    if path not in last:
        return len(last) > 0
    prev_size, prev_ms = last[path]
    return prev_ms > 0 and prev_ms / 1000 * size / prev_size > SLOW_CALL_S


def load_now() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def busy(load: float, cores: int | None = None) -> bool:
    """More runnable tasks than cores: timings then measure the other work too."""
    return load > (cores or os.cpu_count() or 1)


def stale_ops(table: dict | None, names: Iterable[str]) -> list[str]:
    """Ops of ``names`` to time (again): not in the table, or timed while the machine was
    busy (the 1-minute load above the core count) when it is quiet now (load at most half
    the cores). A table tuned under load can prefer a path that was only unlucky."""
    if table is None:
        return list(names)
    loads = table.get("load", {})
    quiet = load_now() <= (os.cpu_count() or 1) / 2
    return [
        op
        for op in names
        if op not in table["rules"] or (quiet and busy(float(loads.get(op, 0.0))))
    ]


def new_table(key: dict | None = None) -> dict:
    return {
        "version": TABLE_VERSION,
        "key": key or machine_key(),
        "threads": torch.get_num_threads(),
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rules": {},
        "load": {},  # op -> the highest 1-minute load average seen while it was timed
    }


def summarize(table: dict) -> str:
    lines = [f"table for {table['key']['cpu']} ({table['key']['cores']} cores)"]
    for op, rules in sorted(table["rules"].items()):
        cells = ", ".join(f"M<={r['m']} K<={r['k']}: {r['path']}" for r in rules)
        lines.append(f"  {op}: {cells or 'none measured'}")
    return "\n".join(lines)
