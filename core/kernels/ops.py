"""The ``compresslab::`` ops, registered with ``torch.library``, and the choice of path.

One op per kernel, each with a default (reference) implementation for every device and
per-device implementations that pick a path per shape:

- ``compresslab::int8_linear(x, w_int8, w_scale, bias, act_mode, x_scale)``: W8A8.
- ``compresslab::int8_weight_only_linear(x, w_int8, w_scale, bias)``: decode path.
- ``compresslab::int4_weight_only_linear(x, w_packed, scale, zero, group_size, bias)``.

Paths that compute the same function (see core/kernels/ref.py) and where they run:

- ``native``: our C++ (core/kernels/int8_cpu.cpp), integer GEMM / streamed weights; the
  W8A8 GEMM uses AVX-512 VNNI (vpdpbusd) where the CPU has it, AVX2 vpmaddwd elsewhere.
- ``int_mm``: W8A8 only: ``torch._int_mm`` (oneDNN; fast only with VNNI or AMX) between
  our one-pass native per-token quantization and one-pass dequantize + bias epilogue
  (written over the int32 sums); exact int32 sums, bit-identical epilogue.
- ``dequant``: float emulation: integers turned back into float32 (by our C++ in one
  pass where it runs, else by torch) and one BLAS call. Exact up to float32 rounding;
  no integer math runs. Best where the weights are reused by many rows.
- ``triton``: the CUDA kernel in core/kernels/triton_int8.py.
- ``ref``: the plain-torch reference (exact int accumulation in float64; slow).

The CPU choice is data, in this order: a table measured on this very machine (by
core/kernels/tune.py on first use of an op, or by ``python -m workers tune-kernels``,
kept in the data folder and keyed by CPU model, flags, cores and torch version); the
committed ``dispatch_cpu.json`` (written by ``bench/int8_gemm.py --write-dispatch``,
keyed by ISA name); then a fixed heuristic. Every call records the path it took and
which of those chose it (:func:`path_log`), so a run can say what really executed.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from core.kernels import cpu, ref, triton_int8, tune
from core.quant.actquant import quantize_per_tensor_static, quantize_per_token

log = logging.getLogger(__name__)

NAMESPACE = "compresslab"
DISPATCH_FILE = Path(__file__).with_name("dispatch_cpu.json")
M_BUCKETS = (1, 16, 128, 512, 2048)  # the batch sizes the benchmark measures

OPS = ("int8_linear", "int8_weight_only_linear", "int4_weight_only_linear")


# ---------------------------------------------------------------- path implementations
# Each takes the op's arguments with x flattened to (M, K) and returns float32 (M, N).


def _w8a8_ref(x2, w, ws, b, mode, xs=None):
    return ref.int8_linear(x2, w, ws, b, mode, xs).float()


def _w8a8_dequant(x2, w, ws, b, mode, xs=None):
    if mode == "static":
        q, s = quantize_per_tensor_static(x2, xs), xs.float().reshape(1, 1)
    else:
        q, s = quantize_per_token(x2)
    if cpu.native_available():  # w * w_scale in cache-sized tiles, then BLAS
        y = _tiled_linear(
            q,
            w.shape[0],
            lambda n0, n1, o: cpu.dequantize_int8_native(w[n0:n1], ws[n0:n1], o),
            None,
        )
        y = y * s
    else:
        y = torch.nn.functional.linear(q.float(), w.float()) * s * ws.float().reshape(1, -1)
    return y if b is None else y + b.float()


def _w8a8_native(x2, w, ws, b, mode, xs=None):
    return cpu.w8a8_linear_native(x2, w, ws, b, mode, xs)


def _w8a8_int_mm(x2, w, ws, b, mode, xs=None):
    return cpu.w8a8_linear_int_mm(x2, w, ws, b, mode, xs)


def _wo8_ref(x2, w, ws, b):
    return ref.int8_weight_only_linear(x2.float(), w, ws, b)


# 8 MiB of float32 weights per tile: few enough tiles that each BLAS call is big (every
# parallel region costs a barrier, dear on a busy machine), small enough to stay in L3.
DEQUANT_TILE_FLOATS = 1 << 21
_TILE_BUFFERS = threading.local()  # one reused tile buffer per thread: no page faults


def _tile_buffer(rows: int, k: int) -> torch.Tensor:
    buf = getattr(_TILE_BUFFERS, "buf", None)
    if buf is None or buf.numel() < rows * k:
        buf = _TILE_BUFFERS.buf = torch.empty(rows * k, dtype=torch.float32)
    return buf[: rows * k].view(rows, k)


def _tiled_linear(
    x2: torch.Tensor,
    n: int,
    dequant_rows: Callable[[int, int, torch.Tensor | None], torch.Tensor],
    b: torch.Tensor | None,
) -> torch.Tensor:
    """x2 @ W^T + b with W dequantized a tile of output rows at a time into one reused
    buffer: each float tile is still in cache when BLAS reads it, instead of a whole
    float32 weight (4 bytes per weight) going out to memory and back.
    ``dequant_rows(n0, n1, out)`` writes rows n0:n1 of W into ``out`` (or a new tensor)."""
    k = x2.shape[1]
    rows = max(16, DEQUANT_TILE_FLOATS // max(1, k))
    x2 = x2.float()
    if rows >= n:  # one tile; the reused buffer spares a fresh allocation's page faults
        out = x2 @ dequant_rows(0, n, _tile_buffer(n, k)).t()
    else:
        out = torch.empty((x2.shape[0], n), dtype=torch.float32)
        for n0 in range(0, n, rows):
            n1 = min(n, n0 + rows)
            tile = dequant_rows(n0, n1, _tile_buffer(n1 - n0, k))
            out[:, n0:n1] = x2 @ tile.t()
    return out if b is None else out.add_(b.float())


def _wo8_dequant(x2, w, ws, b):
    if not cpu.native_available():
        return _wo8_ref(x2, w, ws, b)
    return _tiled_linear(
        x2, w.shape[0], lambda n0, n1, o: cpu.dequantize_int8_native(w[n0:n1], ws[n0:n1], o), b
    )


def _wo4_ref(x2, w, s, z, g, b):
    return ref.int4_weight_only_linear(x2.float(), w, s, z, g, b)


def _wo4_dequant(x2, w, s, z, g, b):
    if not cpu.native_available():
        return _wo4_ref(x2, w, s, z, g, b)
    k = x2.shape[1]
    return _tiled_linear(
        x2,
        w.shape[0],
        lambda n0, n1, o: cpu.dequantize_int4_native(w[n0:n1], s[n0:n1], z[n0:n1], g, k, o),
        b,
    )


def _wo8_native(x2, w, ws, b):
    return cpu.int8_weight_only_native(x2, w, ws, b)


def _wo4_native(x2, w, s, z, g, b):
    return cpu.int4_weight_only_native(x2, w, s, z, g, b)


@dataclass(frozen=True)
class KernelPath:
    fn: Callable[..., torch.Tensor]
    available: Callable[[], bool]
    # Whether the path can take these arguments (x2 and the op's own); a path that
    # cannot serve a shape gives way to the op's always-correct "dequant" path.
    serves: Callable[..., bool] = lambda *args: True


_ALWAYS = lambda: True  # noqa: E731


def _native() -> bool:
    return cpu.native_available()


def _int4_native_serves(x2, w, s, z, g, b) -> bool:
    """The native int4 kernel walks each group 32 codes at a time, over whole groups."""
    return g % cpu.INT4_GROUP_MULTIPLE == 0 and (2 * w.shape[-1]) % g == 0


CPU_PATHS: dict[str, dict[str, KernelPath]] = {
    "int8_linear": {
        "native": KernelPath(_w8a8_native, _native),
        "int_mm": KernelPath(_w8a8_int_mm, _ALWAYS),
        "dequant": KernelPath(_w8a8_dequant, _ALWAYS),
        "ref": KernelPath(_w8a8_ref, _ALWAYS),
    },
    "int8_weight_only_linear": {
        "native": KernelPath(_wo8_native, _native),
        "dequant": KernelPath(_wo8_dequant, _ALWAYS),
        "ref": KernelPath(_wo8_ref, _ALWAYS),
    },
    "int4_weight_only_linear": {
        "native": KernelPath(_wo4_native, _native, _int4_native_serves),
        "dequant": KernelPath(_wo4_dequant, _ALWAYS),
        "ref": KernelPath(_wo4_ref, _ALWAYS),
    },
}


# ---------------------------------------------------------------- choosing a CPU path


def m_bucket(m: int) -> int:
    """The smallest measured batch size >= m (the last one for anything larger)."""
    for b in M_BUCKETS:
        if m <= b:
            return b
    return M_BUCKETS[-1]


FLOAT_PATH = tune.FLOAT_PATH  # integers back to float32 and one BLAS call: every op has it
DEFAULT_NOISE = 0.10  # relative timing noise assumed where a table stores none
INT_MM_HEURISTIC_MIN_M = 16  # below, our kernel's lower call overhead wins (measured)
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def int_mm_has_int8_dot() -> bool:
    """Whether oneDNN (torch._int_mm) has int8 dot-product instructions here."""
    return any(f in cpu.cpu_flags() for f in INT8_DOT_FLAGS)


def heuristic_path(op: str, m: int, k: int) -> str:
    """Used where no measured table describes this CPU: torch._int_mm for W8A8 batches on
    CPUs with int8 dot products (VNNI / AMX), integer kernels for the shapes where they
    stream fewer bytes, float BLAS where the weights are reused many times."""
    if op == "int8_linear" and m >= INT_MM_HEURISTIC_MIN_M and int_mm_has_int8_dot():
        return "int_mm"
    if not cpu.native_available():
        return "dequant"
    if op == "int8_linear":
        return "native"
    if op == "int8_weight_only_linear":
        return "native" if m <= 16 else "dequant"
    # int4: the AVX-512 kernel (table lookups) keeps up to M = 16, the AVX2 one to M = 4
    return "native" if m <= (16 if cpu.native_vector_bits() == 512 else 4) else "dequant"


def cpu_description() -> str:
    """What the dispatch table is keyed by: the vector ISA torch dispatches to here."""
    return torch.backends.cpu.get_cpu_capability()


def load_dispatch_table(path: Path = DISPATCH_FILE) -> dict | None:
    """The measured table for this CPU's ISA, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    entry = data.get(cpu_description())
    return entry if isinstance(entry, dict) and "rules" in entry else None


_TABLE: dict | None = None
_TABLE_LOADED = False


def _table() -> dict | None:
    global _TABLE, _TABLE_LOADED
    if not _TABLE_LOADED:
        _TABLE, _TABLE_LOADED = load_dispatch_table(), True
    return _TABLE


def table_rule(table: dict | None, op: str, m: int, k: int) -> dict | None:
    """The table's rule for the nearest (M, K) cell at or above (m, k), or None; cells
    timed while the machine was too busy to tell (``noisy``) are passed over."""
    if not table:
        return None
    rules = table.get("rules", {}).get(op, [])
    mb = m_bucket(m)
    cells = [r for r in rules if r["m"] == mb and not r.get("noisy")]
    if not cells:
        return None
    above = [r for r in cells if r["k"] >= k]
    return min(above, key=lambda r: r["k"]) if above else max(cells, key=lambda r: r["k"])


def table_path(table: dict | None, op: str, m: int, k: int) -> str | None:
    """The measured fastest path for the nearest (M, K) cell at or above (m, k); a rule
    whose own timings show its path slower than the float path by more than the cell's
    noise (a table edited or merged wrongly) gives the float path instead."""
    rule = table_rule(table, op, m, k)
    if rule is None:
        return None
    times, path = rule.get("ms") or {}, rule["path"]
    slow = times.get(path, 0.0) > times.get(FLOAT_PATH, float("inf")) * (1 + _noise(rule))
    return FLOAT_PATH if slow else path


def _noise(rule: dict | None) -> float:
    try:
        value = float((rule or {}).get("noise", DEFAULT_NOISE))
    except (TypeError, ValueError):
        value = DEFAULT_NOISE
    return min(tune.MAX_NOISE, max(tune.MIN_NOISE, value))


_forced = threading.local()


@contextmanager
def use_path(name: str | None) -> Iterator[None]:
    """Force one path for every op in this thread (tests and the benchmark)."""
    old = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = old


def choose_cpu_path(op: str, m: int, k: int) -> str:
    return choose_cpu_path_and_source(op, m, k)[0]


def choose_cpu_path_and_source(op: str, m: int, k: int) -> tuple[str, str]:
    """(path, source): source is "forced", "measured" (a table tuned on this machine),
    "committed" (dispatch_cpu.json) or "heuristic"."""
    paths = CPU_PATHS[op]
    forced = getattr(_forced, "name", None)
    if forced is not None:
        if forced not in paths or not paths[forced].available():
            raise RuntimeError(f"path {forced!r} is not available for {op} here")
        return forced, "forced"
    for source, table in (("measured", _tuned_table(op)), ("committed", _table())):
        chosen = table_path(table, op, m, k)
        if chosen in paths and paths[chosen].available():
            return chosen, source
    return heuristic_path(op, m, k), "heuristic"


# ---------------------------------------------------------------- the table tuned here

_TUNED: dict | None = None
_TUNED_LOADED = False
_TUNE_LOCK = threading.RLock()


def tuned_table() -> dict | None:
    """The table measured on this machine (from the data folder), or None."""
    global _TUNED, _TUNED_LOADED
    if not _TUNED_LOADED:
        with _TUNE_LOCK:
            if not _TUNED_LOADED:
                _TUNED, _TUNED_LOADED = tune.load_tuned(), True
    return _TUNED


def forget_tuned_table() -> None:
    """Read the tuned table from the data folder again at the next call (tests)."""
    global _TUNED, _TUNED_LOADED
    with _TUNE_LOCK:
        _TUNED, _TUNED_LOADED = None, False
    forget_choices()


def _tuned_table(op: str) -> dict | None:
    """The tuned table if it has ``op``; tunes ``op`` first where auto-tuning is on."""
    table = tuned_table()
    if (table is None or op not in table["rules"]) and tune.autotune_enabled():
        table = tune_ops([op])
    return table if table is not None and op in table["rules"] else None


def tuning_paths(op: str) -> dict[str, Callable[..., torch.Tensor]]:
    """The paths worth timing for ``op`` here (the float64 reference never wins)."""
    return {p: kp.fn for p, kp in CPU_PATHS[op].items() if p != "ref" and kp.available()}


def tune_ops(
    names: tuple[str, ...] | list[str] = OPS, budget_s: float = tune.BUDGET_S, force: bool = False
) -> dict:
    """Time the paths of each op (those not yet measured here, or all with ``force``),
    store the table in the data folder and use it from now on."""
    global _TUNED, _TUNED_LOADED
    with _TUNE_LOCK:
        table = tuned_table() or tune.new_table()
        for op in names:
            if force or op in tune.stale_ops(table, [op]):
                t0, load0 = time.perf_counter(), tune.load_now()
                table["rules"][op] = tune.tune_op(
                    op, tuning_paths(op), budget_s, prefer=functools.partial(heuristic_path, op)
                )
                table.setdefault("load", {})[op] = round(max(load0, tune.load_now()), 2)
                log.info("tuned %s in %.1fs", op, time.perf_counter() - t0)
        on_disk = tune.load_tuned()  # another process may have measured other ops
        for op, rules in (on_disk or {}).get("rules", {}).items():
            table["rules"].setdefault(op, rules)
        try:
            tune.save_tuned(table)
        except OSError as e:
            log.warning("could not store the tuned kernel table: %s", e)
        _TUNED, _TUNED_LOADED = table, True
    forget_choices()
    return table


def tune_in_background(names: tuple[str, ...] = OPS) -> threading.Thread | None:
    """Tune the ops not yet measured here, or measured while the machine was busy and it
    is quiet now (tune.stale_ops), in a daemon thread (a worker calls this at start so no
    job pays for tuning); None where there is nothing to do or auto-tuning
    is off. Ops used meanwhile wait for the table (one lock) instead of tuning twice."""
    global _BACKGROUND
    missing = tune.stale_ops(tuned_table(), names)
    if not missing or not tune.autotune_enabled():
        return None
    thread = threading.Thread(target=tune_ops, args=(missing,), name="tune-kernels", daemon=True)
    thread.start()
    _BACKGROUND = thread
    return thread


_BACKGROUND: threading.Thread | None = None  # the last background tuning thread


def tuning_in_progress() -> bool:
    """Whether a background tuning thread is timing kernels now."""
    return _BACKGROUND is not None and _BACKGROUND.is_alive()


def wait_for_tuning(timeout_s: float = 120.0) -> bool:
    """Wait for the background tuning thread, if one is running, for up to ``timeout_s``
    seconds; True once none runs. Latency timing calls this first: tuning times kernels
    on every core, and a job timed meanwhile would share the CPUs with it."""
    thread = _BACKGROUND
    if thread is None or thread is threading.current_thread():
        return True
    thread.join(timeout_s)
    return not thread.is_alive()


# ---------------------------------------------------------------- the float-path guard
# Whatever chose a path (a table measured here, the committed fallback, the heuristic),
# the first call of each (op, M bucket, K, N) cell on a non-float path also times the
# float path on the same arguments, in turns, and keeps the chosen path only if it is not
# slower than float by more than the noise. So a wrong, stale or foreign table costs a
# few extra calls once, never a slow path for good. The same check runs the other way
# when a table chose the float path where the heuristic would take an integer path (a
# table tuned on a busy machine): the integer path wins only if faster beyond the noise.
# On small cells (up to GUARD_ALL_MACS: decode, small models) every path that serves the
# arguments is timed, since the table's 4096-wide cells say little where per-call costs
# decide (a 256-wide layer at M = 1: native W8A8 23 us, torch._int_mm 51 us).

VERIFY_ROUNDS = 2  # timed calls of each path on first use
# Small cells get more: their calls cost microseconds, and a path's first calls on a new
# shape run slow (torch._int_mm on a 128 x 256 x 256 cell here: 75-130 us for its 2nd to
# 8th calls, 41 us from then on), which two rounds after one warm-up mistook for its speed.
VERIFY_WARMUP_SMALL, VERIFY_ROUNDS_SMALL = 8, 5
_VERDICTS: dict[tuple[str, int, int, int, str], str] = {}
_VERDICT_LOCK = threading.Lock()


def verify_enabled() -> bool:
    """First-use checks run where automatic tuning does (tests turn both off)."""
    return tune.autotune_enabled()


def forget_verdicts() -> None:
    with _VERDICT_LOCK:
        _VERDICTS.clear()
    forget_choices()


def verdicts() -> dict[tuple[str, int, int, int, str], str]:
    """(op, M bucket, K, N, chosen path) -> the path kept after the first-use check."""
    with _VERDICT_LOCK:
        return dict(_VERDICTS)


GUARD_ALL_MACS = 1 << 28  # up to this M x K x N a first use times every path, not two


def _challengers(op: str, path: str, x2: torch.Tensor, args: tuple) -> list[str]:
    """The paths a first-use check times against ``path``: the float path (for a float
    choice, the heuristic's integer path), and on small cells (decode, small layers) every
    other path that serves these arguments: a table measured at 4096-wide layers says
    little about a 256-wide one, where fixed per-call costs decide."""
    m, k, n = x2.shape[0], x2.shape[1], args[0].shape[0]
    names = [FLOAT_PATH] if path != FLOAT_PATH else [heuristic_path(op, m, k)]
    if m * k * n <= GUARD_ALL_MACS:
        names += list(CPU_PATHS[op])
    out: list[str] = []
    for name in names:
        kp = CPU_PATHS[op].get(name)
        if name in out or name in (path, "ref") or kp is None or not kp.available():
            continue
        if kp.serves(x2, *args):
            out.append(name)
    return out


def _guarded(op: str, path: str, x2: torch.Tensor, args: tuple) -> tuple[str, torch.Tensor | None]:
    """The path to run (``path`` or the fastest challenger) and, when the check ran now
    and kept ``path``, its output (so the first call is not computed twice). A challenger
    replaces ``path`` only if faster beyond the timing noise."""
    key = (op, m_bucket(x2.shape[0]), x2.shape[1], args[0].shape[0], path)
    with _VERDICT_LOCK:
        verdict = _VERDICTS.get(key)
    if verdict is not None or not verify_enabled():
        return verdict or path, None
    others = _challengers(op, path, x2, args)
    if not others:
        return path, None
    fns = {p: CPU_PATHS[op][p].fn for p in (path, *others)}
    small = x2.shape[0] * x2.shape[1] * args[0].shape[0] <= GUARD_ALL_MACS
    with torch.no_grad():
        y = fns[path](x2, *args)  # this call's result
        times = tune.time_paths_all(
            {p: (lambda f=f: f(x2, *args)) for p, f in fns.items()},
            deadline=float("inf"),
            repeats=VERIFY_ROUNDS_SMALL if small else VERIFY_ROUNDS,
            warmup=VERIFY_WARMUP_SMALL if small else 1,
        )
    best = {p: min(v) for p, v in times.items()}
    noise = min(tune.MAX_NOISE, max(DEFAULT_NOISE, tune.noise(times)))
    fastest = min(others, key=best.__getitem__)
    keep = best[fastest] * (1 + noise) >= best[path]
    verdict = path if keep else fastest
    if not keep:
        log.info(
            "%s %s: %s measured %.3g ms against %s %.3g ms: using %s",
            op, key[1:4], path, best[path] * 1e3, fastest, best[fastest] * 1e3, fastest,
        )  # fmt: skip
    with _VERDICT_LOCK:
        _VERDICTS[key] = verdict
    return verdict, y if keep else None


# ---------------------------------------------------------------- the path log

_LOG: Counter[tuple[str, str, str, int, str]] = Counter()
_LOG_LOCK = threading.Lock()


def _record(op: str, device: str, path: str, m: int, source: str = "fixed") -> None:
    _count((op, device, path, m_bucket(m), source))


def _count(entry: tuple[str, str, str, int, str]) -> None:
    with _LOG_LOCK:
        _LOG[entry] += 1


def reset_path_log() -> None:
    with _LOG_LOCK:
        _LOG.clear()


def path_log() -> list[dict]:
    """Which path each op took since the last reset: op, device, path, M bucket, calls,
    and ``table``: what chose the path ("measured" on this machine, "committed",
    "heuristic", "forced" by :func:`use_path`, or "fixed" off the CPU)."""
    with _LOG_LOCK:
        items = sorted(_LOG.items())
    return [
        {"op": op, "device": dev, "path": path, "m_le": m, "calls": n, "table": src}
        for (op, dev, path, m, src), n in items
    ]


# ---------------------------------------------------------------- registration


# Skipping no-op reshapes and casts matters: inside an op every tensor method call
# goes through the dispatcher again, and decode-sized calls are dominated by overhead.
def _flatten(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    if x.dim() == 2:
        return x, None
    return x.reshape(-1, x.shape[-1]), tuple(x.shape[:-1])


def _finish(y: torch.Tensor, lead: tuple[int, ...] | None, dtype: torch.dtype) -> torch.Tensor:
    if lead is not None:
        y = y.reshape(*lead, y.shape[-1])
    return y if y.dtype == dtype else y.to(dtype)


class Choice(NamedTuple):
    """A decided path: its name, what chose it, its function and its path-log entry."""

    path: str
    source: str
    fn: Callable[..., torch.Tensor]
    entry: tuple[str, str, str, int, str]


# (op, M, K, N, int4 group or W8A8 act mode) -> Choice once decided: decode calls every
# linear with the same shapes, and looking the tables up each time cost as much as a
# 256-wide layer's matmul. Cleared whenever a table or a verdict changes.
_CHOSEN: dict[tuple, Choice] = {}


def forget_choices() -> None:
    _CHOSEN.clear()


def _cpu_choice(op: str, x: torch.Tensor, args: tuple) -> tuple[Choice, torch.Tensor | None]:
    """The path ``op`` takes on ``x`` (..., K) (recorded in the path log) and, when a
    first-use check just ran it, its (M, N) output."""
    k = x.shape[-1]
    m = x.numel() // max(k, 1)
    key = (op, m, k, args[0].shape[0], args[3:4])
    choice = None if getattr(_forced, "name", None) else _CHOSEN.get(key)
    y = None
    if choice is None:
        x2 = x.reshape(m, k)
        path, source = choose_cpu_path_and_source(op, m, k)
        if not CPU_PATHS[op][path].serves(x2, *args):
            path = FLOAT_PATH
        if source != "forced":
            path, y = _guarded(op, path, x2, args)
        choice = Choice(
            path, source, CPU_PATHS[op][path].fn, (op, "cpu", path, m_bucket(m), source)
        )
        if source != "forced":
            _CHOSEN[key] = choice
    _count(choice.entry)
    return choice, y


def _cpu_impl(op: str) -> Callable[..., torch.Tensor]:
    def impl(x: torch.Tensor, *args):
        choice, y = _cpu_choice(op, x, args)
        if y is None and choice.path == "native" and x.is_contiguous():
            y = choice.fn(x, *args)  # the native calls take (..., K) as it is: no reshapes
        else:
            if y is None:
                y = choice.fn(x if x.dim() == 2 else x.reshape(-1, x.shape[-1]), *args)
            if x.dim() != 2:
                y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if y.dtype == x.dtype else y.to(x.dtype)

    return impl


def _default_impl(op: str) -> Callable[..., torch.Tensor]:
    fns = {
        "int8_linear": _w8a8_ref,
        "int8_weight_only_linear": _wo8_ref,
        "int4_weight_only_linear": _wo4_ref,
    }

    def impl(x: torch.Tensor, *args):
        x2, lead = _flatten(x)
        _record(op, x.device.type, "ref", x2.shape[0])
        return _finish(fns[op](x2, *args), lead, x.dtype)

    return impl


def _cuda_int8_linear(x, w, ws, b, mode, xs=None):
    x2, lead = _flatten(x)
    if triton_int8.available():
        path, y = "triton", triton_int8.int8_linear(x2, w, ws, b, mode, xs)
    else:
        path, y = "int_mm", cpu.w8a8_linear_int_mm(x2, w, ws, b, mode, xs)
    _record("int8_linear", "cuda", path, x2.shape[0])
    return _finish(y, lead, x.dtype)


def _meta_impl(op: str) -> Callable[..., torch.Tensor]:
    def impl(x: torch.Tensor, w: torch.Tensor, *args):
        return x.new_empty((*x.shape[:-1], w.shape[0]))

    return impl


SCHEMAS = {
    "int8_linear": "int8_linear(Tensor x, Tensor w_int8, Tensor w_scale, Tensor? bias, "
    "str act_mode, Tensor? x_scale=None) -> Tensor",
    "int8_weight_only_linear": "int8_weight_only_linear(Tensor x, Tensor w_int8, "
    "Tensor w_scale, Tensor? bias) -> Tensor",
    "int4_weight_only_linear": "int4_weight_only_linear(Tensor x, Tensor w_packed, "
    "Tensor scale, Tensor zero, int group_size, Tensor? bias) -> Tensor",
}

_CPU_IMPLS = {op: _cpu_impl(op) for op in OPS}
_LIB = torch.library.Library(NAMESPACE, "DEF")
for _op, _schema in SCHEMAS.items():
    _LIB.define(_schema)
    _LIB.impl(_op, _default_impl(_op), "CompositeExplicitAutograd")
    _LIB.impl(_op, _CPU_IMPLS[_op], "CPU")
    _LIB.impl(_op, _meta_impl(_op), "Meta")
_LIB.impl("int8_linear", _cuda_int8_linear, "CUDA")


def _direct(x: torch.Tensor) -> bool:
    """Eager CPU calls skip the dispatcher round trip (Python -> C++ -> Python costs about
    50 us a call, as much as a decode-sized matmul); the op stays the definition that
    tracing, torch.compile and other devices go through, and the same path is chosen."""
    return x.is_cpu and not torch.compiler.is_compiling()


def int8_linear(
    x: torch.Tensor,
    w_int8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    act_mode: str,
    x_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    if act_mode not in ref.ACT_MODES:
        raise ValueError(f"act_mode={act_mode!r}: expected one of {ref.ACT_MODES}")
    if _direct(x):
        return _CPU_IMPLS["int8_linear"](x, w_int8, w_scale, bias, act_mode, x_scale)
    return torch.ops.compresslab.int8_linear(x, w_int8, w_scale, bias, act_mode, x_scale)


def int8_weight_only_linear(
    x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if _direct(x):
        return _CPU_IMPLS["int8_weight_only_linear"](x, w_int8, w_scale, bias)
    return torch.ops.compresslab.int8_weight_only_linear(x, w_int8, w_scale, bias)


def int4_weight_only_linear(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    if _direct(x):
        return _CPU_IMPLS["int4_weight_only_linear"](x, w_packed, scale, zero, group_size, bias)
    return torch.ops.compresslab.int4_weight_only_linear(x, w_packed, scale, zero, group_size, bias)


# Up to this many rows LLM.int8() takes the fused VNNI kernel whatever W8A8's table says:
# on a 256-wide layer at M = 1, 23 us against 43-52 us for the torch decomposition (at
# M = 128 the kernel's per-tile sums make it slower than torch._int_mm on short rows).
LLM_INT8_FUSED_MAX_M = 16


def outlier_columns(x2: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the input columns of ``x2`` (M, K) with some |x| > threshold (none for a
    threshold <= 0): LLM.int8()'s outlier features."""
    if threshold <= 0:
        return x2.new_zeros(0, dtype=torch.long)
    return (x2.abs().amax(dim=0) > threshold).nonzero().flatten()


def llm_int8_linear(
    x: torch.Tensor,
    threshold: float,
    w_int8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """LLM.int8() on ``x`` (..., K); float32 (..., N). Input columns with some |x| above
    ``threshold`` (the outlier features) are multiplied in float with their dequantized
    weight columns; every other column goes through W8A8 with per-token scales
    (``int8_linear``, whose path choice this follows). Where that is the native kernel
    with VNNI, or the batch is decode-sized (up to LLM_INT8_FUSED_MAX_M rows, where the
    decomposition's extra calls cost more than the product on small layers), one native
    call finds the outliers and sums their float product in the same pass over the
    weight, while each row is in cache. Elsewhere two native calls find the columns and
    split the input and the weight around them (without the native library, torch ops
    do), the int8 product runs on the chosen path, and BLAS adds the outliers' float
    product to it."""
    args = (w_int8, w_scale, bias, "dynamic", None)
    k, n = x.shape[-1], w_int8.shape[0]
    path = None
    if _direct(x):
        path = _cpu_choice("int8_linear", x, args)[0].path  # recorded in the path log
        chosen = getattr(_forced, "name", None) is None  # not forced by use_path
        decode = chosen and x.numel() <= LLM_INT8_FUSED_MAX_M * k
        if cpu.native_w8a8_vnni() and (path == "native" or decode):
            return cpu.llm_int8_native(x, threshold, w_int8, w_scale, bias)
    x2 = x if x.dim() == 2 else x.reshape(-1, k)
    y = _llm_int8_split(x2, threshold, args, path)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n)


def _llm_int8_split(
    x2: torch.Tensor, threshold: float, args: tuple, path: str | None
) -> torch.Tensor:
    """LLM.int8() on (M, K) ``x2`` as a split: W8A8 on the regular columns (on ``path``,
    or through the registered op where None), plus the outliers' float product."""
    w_int8, w_scale = args[0], args[1]

    def w8a8(x: torch.Tensor) -> torch.Tensor:
        if path is None:  # another device, or tracing: through the registered op
            return int8_linear(x, *args).float()
        return CPU_PATHS["int8_linear"][path].fn(x, *args)

    if path is not None and cpu.native_available():
        parts = cpu.llm_int8_split(x2, threshold, w_int8, w_scale)
        if parts is None:
            return w8a8(x2)
        regular, x_out, w_out = parts
        return w8a8(regular).addmm_(x_out, w_out.t())
    cols = outlier_columns(x2, threshold)
    if cols.numel() == 0:
        return w8a8(x2)
    y = w8a8(x2.index_fill(1, cols, 0))  # outliers no longer set the int8 scales
    w_out = w_int8.index_select(1, cols).float() * w_scale.reshape(-1, 1)
    return y + torch.nn.functional.linear(x2.index_select(1, cols).float(), w_out)
