"""int8 GEMM benchmark: our kernels against fp32 / bf16 F.linear, torch._int_mm and
bitsandbytes, all timed in the same run, as ratios to fp32.

Run: ``python bench/int8_gemm.py [--json] [--quick] [--write-dispatch]``.

For M in 1, 16, 128, 512, 2048 rows and K = N in 1024, 4096 it times one forward of:

- ``fp32_ms``, ``bf16_ms``: ``F.linear`` on float32 / bfloat16 weights (the baseline);
- ``w8a8_ms``: our W8A8 linear through ``core.kernels.ops`` including the per-token
  activation quantization and the epilogue, on the path the dispatcher picks
  (``w8a8_path``); each candidate path also gets its own column (``w8a8_<path>_ms``);
- ``int8_weight_only_ms`` / ``int4_weight_only_ms``: our weight-only decode ops, likewise.
  These three columns are the ops called as a model calls them (the path the dispatcher
  decided, its first-use check done in the warm-up); the per-path columns force a path
  with ``ops.use_path``, which looks the path up again on every call;
- ``int_mm_ms``: ``torch._int_mm`` alone on already quantized int8 inputs;
  ``native_gemm_ms``: our integer GEMM alone on already quantized codes (AVX-512
  VNNI where the CPU has it, else AVX2; ``native_w8a8`` in the header says which);
  ``wo8_kernel_ms`` / ``wo4_kernel_ms``: the native weight-only kernels alone, their
  arguments prepared once (the op's time minus its Python: argument checks, the output's
  allocation, the path choice);
- the ceilings, in the same run: ``ceiling_int_ms``, the faster of those two (the
  integer matmul the machine offers), and ``ceiling_bytes_ms`` (``ceiling_bytes_int4_ms``):
  one read over a buffer the size of the int8 (int4) weight. Each op is also printed as
  % of its ceiling (``*_pct_ceiling``): W8A8 of the slower of the two ceilings, the
  weight-only ops of their weight bytes;
- ``seq_<name>_ms`` for M up to SEQ_MAX_M (decode): fp32, the weight-only ops and kernels,
  W8A8 and both byte reads again, each called as a decode step calls its layers: one
  after another over enough distinct copies of the weight that together they fill the
  last-level cache twice. Every call streams its weight from memory, as above, but the
  interpreter and torch's dispatcher stay in cache, as they do in a model's forward. In
  the round robin above the other variants' reads evict those too, and an op's fixed
  cost is timed with every line of it a memory miss (about 0.1 ms at K = N = 4096). With
  ``seq_*_x_fp32`` and ``seq_*_pct_ceiling`` (of ``seq_stream_i8_ms`` / ``seq_stream_i4_ms``);
- ``bnb_int8_ms`` / ``bnb_nf4_ms``: bitsandbytes' LLM.int8() and NF4 layers;
- ``llm_int8_ms`` / ``bnb_int8_outliers_ms``: our LLM.int8() decomposition and
  bitsandbytes' on the same input with OUTLIER_COLUMNS feature columns scaled up 20x (as
  LLM activations have them; the plain inputs above have none), with each one's relative
  output error against fp32 in ``llm_int8_rel_err`` / ``bnb_int8_outliers_rel_err``;
- ``fbgemm_a7_ms``: PyTorch's FBGEMM dynamic linear for reference. It quantizes
  activations per tensor to 7 bits (reduce_range: its AVX2 kernel's 16-bit pair sums
  would saturate at 8 bits), so it does not compute the same function as ours.

Timings (``--clock wall``, or ``thread``: this thread's CPU time, one thread, for a
busy machine) are medians over ``--repeats`` rounds after one warm-up; within a round every
variant runs once, in turn, so a busy machine slows all of them alike. Each variant has
its own copy of the weight, so every call reads it from memory. A variant already slow at the previous M
whose time extrapolated to this M exceeds ``--max-call-s`` is skipped (null); fp32, the
baseline, always runs. Ratios
are fp32_ms / x_ms (above 1 = faster than fp32); TOPS = 2 M N K / time for the int8
paths. ``--write-dispatch`` stores the fastest path per (op, M, K) for this CPU's ISA in
core/kernels/dispatch_cpu.json, which the ops read to choose their path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.kernels import cpu, ops  # noqa: E402
from core.kernels.tune import cpu_model  # noqa: E402
from core.quant.actquant import quantize_per_token  # noqa: E402
from core.quant.rtn import QuantSpec, quantize  # noqa: E402
from core.storage import AffineLinear, LLMInt8Linear, W8A8Linear  # noqa: E402

MS = (1, 16, 128, 512, 2048)
OUTLIER_COLUMNS = 4  # input features with |x| far above LLM.int8's threshold of 6
KS = (1024, 4096)
OP_COLUMNS = {  # op -> (prefix of its per-path columns, column of the dispatched path)
    "int8_linear": ("w8a8", "w8a8_ms"),
    "int8_weight_only_linear": ("wo8", "int8_weight_only_ms"),
    "int4_weight_only_linear": ("wo4", "int4_weight_only_ms"),
}
SEQ_MAX_M = 16  # decode batch sizes: also timed in sequence over distinct weights
SEQ_VARIANTS = (
    "fp32", "stream_i8", "stream_i4", "w8a8", "int8_weight_only", "int4_weight_only",
    "wo8_kernel", "wo4_kernel",
)  # fmt: skip
CANDIDATES = {  # paths that compute the same function (ref: float64, never a contender)
    "int8_linear": ("native", "int_mm", "dequant"),
    "int8_weight_only_linear": ("native", "dequant"),
    "int4_weight_only_linear": ("native", "dequant"),
}


def _bnb_layers(lin: nn.Linear) -> dict[str, nn.Module]:
    try:
        from core.storage import Bnb4bitLinear, BnbInt8Linear

        return {
            "bnb_int8": BnbInt8Linear.build(lin.weight, lin.bias, threshold=6.0),
            "bnb_nf4": Bnb4bitLinear.build(lin.weight, lin.bias, quant_type="nf4", blocksize=64),
            "bnb_int8_outliers": BnbInt8Linear.build(lin.weight, lin.bias, threshold=6.0),
        }
    except Exception as e:  # bitsandbytes missing or without a CPU backend
        print(f"# bitsandbytes unavailable: {e}", file=sys.stderr)
        return {}


def _fbgemm(lin: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dyn = torch.ao.nn.quantized.dynamic.Linear(lin.in_features, lin.out_features)
            w = lin.weight.detach()
            scale = (w.abs().amax(1) / 127).clamp(min=1e-8).double()
            zero = torch.zeros(w.shape[0], dtype=torch.long)
            dyn.set_weight_bias(torch.quantize_per_channel(w, scale, zero, 0, torch.qint8), None)
        return dyn
    except Exception as e:  # quantized engine removed or unavailable
        print(f"# fbgemm unavailable: {e}", file=sys.stderr)
        return None


class Cell:
    """Everything timed for one (K, N) weight, reused across M."""

    def __init__(self, k: int, n: int) -> None:
        torch.manual_seed(k)
        self.lin = nn.Linear(k, n, bias=False)
        self.w = self.lin.weight.detach()
        self.wb = self.w.to(torch.bfloat16)
        self.w8 = W8A8Linear.build(self.lin.weight, self.lin.bias, act_mode="dynamic")
        self.llm8 = LLMInt8Linear.build(self.lin.weight, self.lin.bias, threshold=6.0)
        int4 = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=128)
        self.w4 = AffineLinear.build(quantize(self.lin.weight, int4), self.lin.bias)
        self.bnb = _bnb_layers(self.lin)
        self.fbgemm = _fbgemm(self.lin)

    def int8_w(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of the int8 weight and its scales of its own."""
        return self.w8.w_int8.clone(), self.w8.w_scale.clone()

    def int4_w(self) -> tuple:
        w4 = self.w4
        return w4.qweight.clone(), w4.scale.clone(), w4.zero.clone(), w4.group_size

    def stream(self, nbytes: int) -> Callable[[], object]:
        """One read over a buffer of its own of ``nbytes``: our own read loop, threads
        split as in the kernels (torch's float sum where the native library does not run;
        it measured 0.28-0.30 ms over 8 MiB from memory where the loop took 0.19-0.23 ms)."""
        if cpu.native_available():
            return cpu.read_bytes_call(nbytes)
        return torch.randn(max(1, nbytes // 4)).sum

    def weight_readers(self, x: torch.Tensor) -> dict[str, tuple[int, Callable[[], Callable]]]:
        """name -> (weight bytes, factory): each call of the factory makes the variant on
        ``x`` over a copy of the weight of its own. The ops are called as a model calls
        them, on the path the dispatcher decides."""
        n, k = self.w.shape
        out: dict[str, tuple[int, Callable[[], Callable]]] = {
            "fp32": (4 * n * k, lambda: partial(F.linear, x, self.w.clone())),
            "stream_i8": (n * k, lambda: self.stream(n * k)),
            "stream_i4": (n * k // 2, lambda: self.stream(n * k // 2)),
            "w8a8": (n * k, lambda: partial(ops.int8_linear, x, *self.int8_w(), None, "dynamic")),
            "int8_weight_only": (
                n * k,
                lambda: partial(ops.int8_weight_only_linear, x, *self.int8_w(), None),
            ),
            "int4_weight_only": (
                n * k // 2,
                lambda: partial(ops.int4_weight_only_linear, x, *self.int4_w(), None),
            ),
        }
        if cpu.native_available():
            out["wo8_kernel"] = (
                n * k,
                lambda: cpu.weight_only_kernel_call(
                    "int8_weight_only_linear", x, *self.int8_w(), None
                ),
            )
            out["wo4_kernel"] = (
                n * k // 2,
                lambda: cpu.weight_only_kernel_call(
                    "int4_weight_only_linear", x, *self.int4_w(), None
                ),
            )
        return out

    def variants(self, x: torch.Tensor) -> dict[str, Callable[[], object]]:
        xb = x.to(torch.bfloat16)
        xq, xs = quantize_per_token(x)
        xq16 = xq.to(torch.int16)
        if not cpu.int_mm_takes_any_shape():
            xq = F.pad(xq, (0, 0, 0, max(0, cpu.INT_MM_MIN_M - xq.shape[0])))

        # Every variant reads its own copy of the weight, so none finds another's copy of
        # the same tensor still in cache: within a round the other variants read more
        # than the last-level cache in between, and each call streams its weight from
        # memory, as decode does with a model bigger than the cache.
        wt = self.w8.w_int8.clone().t()
        out: dict[str, Callable[[], object]] = {"fp32": lambda: F.linear(x, self.w)}
        readers = self.weight_readers(x)
        out.update({name: make() for name, (_, make) in readers.items() if name != "fp32"})
        out["bf16"] = lambda: F.linear(xb, self.wb)
        out["int_mm"] = lambda: torch._int_mm(xq, wt)
        if cpu.native_available():
            g8 = self.int8_w()
            out["native_gemm"] = lambda: cpu.w8a8_gemm_native(xq16, xs, *g8, None)
        ops_fn = {
            "int8_linear": ops.int8_linear,
            "int8_weight_only_linear": ops.int8_weight_only_linear,
            "int4_weight_only_linear": ops.int4_weight_only_linear,
        }

        def forced(op: str, path: str, args: tuple) -> Callable[[], object]:
            def run() -> object:
                with ops.use_path(path):
                    return ops_fn[op](x, *args)

            return run

        args = {
            "int8_linear": lambda: (*self.int8_w(), None, "dynamic"),
            "int8_weight_only_linear": lambda: (*self.int8_w(), None),
            "int4_weight_only_linear": lambda: (*self.int4_w(), None),
        }
        for op, (prefix, _) in OP_COLUMNS.items():
            for path in CANDIDATES[op]:
                if ops.CPU_PATHS[op][path].available():
                    out[f"{prefix}_{path}"] = forced(op, path, args[op]())
        for name in ("bnb_int8", "bnb_nf4"):
            if name in self.bnb:
                out[name] = lambda mod=self.bnb[name]: mod(x)
        for name, call in self.outlier_variants(with_outliers(x)).items():
            out[name] = call
        if self.fbgemm is not None:
            out["fbgemm_a7"] = lambda: self.fbgemm(x)
        return out

    def sequences(self, x: torch.Tensor, cache_bytes: int) -> dict[str, list[Callable]]:
        """SEQ_VARIANTS, each over as many copies of its weight as fill ``cache_bytes``
        twice (at least two)."""
        readers = self.weight_readers(x)
        return {
            name: [make() for _ in range(copies_to_fill(2 * cache_bytes, nbytes))]
            for name, (nbytes, make) in readers.items()
            if name in SEQ_VARIANTS
        }

    def outlier_variants(self, xo: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
        """The two LLM.int8() implementations, on an input with outlier features (each
        layer its own: bitsandbytes' is a second copy, not the one bnb_int8 times)."""
        out = {"llm_int8": lambda: self.llm8(xo)}
        if "bnb_int8_outliers" in self.bnb:
            out["bnb_int8_outliers"] = lambda: self.bnb["bnb_int8_outliers"](xo)
        return out

    def outlier_errors(self, x: torch.Tensor) -> dict[str, float]:
        """Relative output error of each LLM.int8() against fp32, on the outlier input."""
        xo = with_outliers(x)
        with torch.no_grad():
            ref = F.linear(xo, self.w)
            return {
                f"{name}_rel_err": round(((call().float() - ref).norm() / ref.norm()).item(), 6)
                for name, call in self.outlier_variants(xo).items()
            }


def with_outliers(x: torch.Tensor) -> torch.Tensor:
    """``x`` with OUTLIER_COLUMNS evenly spaced feature columns scaled 20x."""
    xo = x.clone()
    cols = torch.linspace(0, x.shape[1] - 1, OUTLIER_COLUMNS).long()
    xo[:, cols] *= 20.0
    return xo


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def time_round_robin(
    fns: dict[str, Callable[[], object]], repeats: int, clock: str = "wall"
) -> dict[str, float]:
    """Median ms per variant; one warm-up each, then ``repeats`` rounds of one call each."""
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for k, fn in fns.items():
                t0 = now()
                fn()
                times[k].append(now() - t0)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def time_sequences(seqs: dict[str, list[Callable[[], object]]], repeats: int) -> dict[str, float]:
    """Median ms per call; per round every variant runs its calls one after another, as a
    model's forward runs its layers. One warm-up pass first."""
    times: dict[str, list[float]] = {k: [] for k in seqs}
    now = time.perf_counter
    with torch.no_grad():
        for calls in seqs.values():
            for fn in calls:
                fn()
        for _ in range(repeats):
            for k, calls in seqs.items():
                for fn in calls:
                    t0 = now()
                    fn()
                    times[k].append(now() - t0)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def copies_to_fill(total: int, nbytes: int) -> int:
    """How many copies of ``nbytes`` make at least ``total`` (at least 2, at most 512)."""
    return min(512, max(2, -(-total // max(1, nbytes))))


def last_level_cache_bytes(default: int = 32 << 20) -> int:
    """The largest CPU cache's size (Linux sysfs), or ``default``."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=default)


def _too_slow(prev_m: int, prev_ms: float, m: int, max_call_s: float) -> bool:
    """Linear extrapolation in M, applied only to variants already slow at the previous M
    (paths with a fixed cost, such as dequantizing the weight, do not scale with M)."""
    prev_s = prev_ms / 1000
    return prev_s > 0.1 * max_call_s and prev_s * m / prev_m > max_call_s


def run(args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []
    ms = (1, 16, 128) if args.quick else tuple(args.m or MS)
    ks = (1024,) if args.quick else tuple(args.k or KS)
    for k in ks:
        cell = Cell(k, k)
        last: dict[str, tuple[int, float]] = {}  # variant -> (M, ms) at the previous M
        for m in ms:
            x = torch.randn(m, k)
            fns = cell.variants(x)
            skipped = []
            for name in list(fns):
                if name != "fp32" and name in last and _too_slow(*last[name], m, args.max_call_s):
                    skipped.append(name)
                    del fns[name]
            ops.reset_path_log()
            t = time_round_robin(fns, args.repeats, args.clock)
            for name, v in t.items():
                last[name] = (m, v)
            paths = dispatched_paths(m)
            del fns
            if m <= SEQ_MAX_M:
                seq = time_sequences(cell.sequences(x, last_level_cache_bytes()), args.repeats)
                t.update({f"seq_{name}": v for name, v in seq.items()})
            row = make_row(m, k, k, t, skipped, paths)
            rows.append({**row, **cell.outlier_errors(x)})
            print(format_row(rows[-1]), flush=True)
    return rows


def dispatched_paths(m: int) -> dict[str, str]:
    """op -> the path its unforced calls took at M = ``m`` since the path log's reset."""
    return {
        e["op"]: e["path"]
        for e in ops.path_log()
        if e["table"] != "forced" and e["device"] == "cpu" and e["m_le"] == ops.m_bucket(m)
    }


def make_row(
    m: int, k: int, n: int, t: dict[str, float], skipped: list[str], paths: dict[str, str]
) -> dict:
    row: dict = {"M": m, "K": k, "N": n}
    row.update({f"{name}_ms": round(v, 4) for name, v in t.items()})
    for name in skipped:
        row[f"{name}_ms"] = None
    for op, (_, column) in OP_COLUMNS.items():
        row[column.replace("_ms", "_path")] = paths.get(op)
    for key in [c for c in row if c.endswith("_ms") and row[c]]:
        base = "seq_fp32_ms" if key.startswith("seq_") else "fp32_ms"  # fp32 timed alike
        if key != base and row.get(base):
            row[key.replace("_ms", "_x_fp32")] = round(row[base] / row[key], 3)
    macs = 2.0 * m * n * k
    for key in ("w8a8_ms", "int_mm_ms"):
        if row.get(key):
            row[key.replace("_ms", "_tops")] = round(macs / (row[key] / 1000) / 1e12, 4)
    add_ceilings(row)
    row["skipped"] = skipped
    return row


def add_ceilings(row: dict) -> None:
    """ceiling_int_ms, ceiling_bytes_ms, ceiling_bytes_int4_ms and each op's % of its
    ceiling (100 = as fast as the ceiling allows)."""
    ints = [row[c] for c in ("int_mm_ms", "native_gemm_ms") if row.get(c)]
    row["ceiling_int_ms"] = min(ints) if ints else None
    row["ceiling_bytes_ms"] = row.get("stream_i8_ms")
    row["ceiling_bytes_int4_ms"] = row.get("stream_i4_ms")
    ceilings = {
        "w8a8": max((v for v in (row["ceiling_int_ms"], row["ceiling_bytes_ms"]) if v), default=0),
        "int8_weight_only": row["ceiling_bytes_ms"],
        "int4_weight_only": row["ceiling_bytes_int4_ms"],
        "wo8_kernel": row["ceiling_bytes_ms"],
        "wo4_kernel": row["ceiling_bytes_int4_ms"],
    }
    for name, ceiling in ceilings.items():
        got = row.get(f"{name}_ms")
        row[f"{name}_pct_ceiling"] = round(100 * ceiling / got, 2) if ceiling and got else None
    seq_ceilings = {
        "i8": ("int8_weight_only", "wo8_kernel"),
        "i4": ("int4_weight_only", "wo4_kernel"),
    }
    for stream, names in seq_ceilings.items():
        ceiling = row.get(f"seq_stream_{stream}_ms")
        for name in names:
            got = row.get(f"seq_{name}_ms")
            if ceiling and got:
                row[f"seq_{name}_pct_ceiling"] = round(100 * ceiling / got, 2)


SHOW = (
    "fp32",
    "bf16",
    "w8a8",
    "int8_weight_only",
    "int4_weight_only",
    "int_mm",
    "bnb_int8",
    "bnb_nf4",
    "fbgemm_a7",
    "llm_int8",
    "bnb_int8_outliers",
)


def format_row(row: dict) -> str:
    parts = [f"M={row['M']:<5d} K=N={row['K']:<5d}"]
    for name in SHOW:
        v = row.get(f"{name}_ms")
        if name == "fp32":
            parts.append(f"fp32 {v:9.3f}ms")
        elif v is None:
            parts.append(f"{name} skipped" if f"{name}_ms" in row else f"{name} n/a")
        else:
            parts.append(f"{name} {v:.3f}ms ({row[f'{name}_x_fp32']:.2f}x)")
    ceil = " ".join(
        f"{name} {row[f'{name}_pct_ceiling']:.0f}%"
        for name in ("w8a8", "int8_weight_only", "wo8_kernel", "int4_weight_only", "wo4_kernel")
        if row.get(f"{name}_pct_ceiling") is not None
    )
    parts.append(
        f"ceilings int {row['ceiling_int_ms'] or 0:.3f}ms bytes {row['ceiling_bytes_ms'] or 0:.3f}ms"
        f" int4-bytes {row['ceiling_bytes_int4_ms'] or 0:.3f}ms: {ceil}"
    )
    if row.get("seq_fp32_ms"):
        parts.append(
            "in sequence: "
            + " ".join(
                f"{name} {row[f'seq_{name}_x_fp32']:.2f}x"
                + (f" {pct:.0f}%" if (pct := row.get(f"seq_{name}_pct_ceiling")) else "")
                for name in SEQ_VARIANTS[3:]
                if row.get(f"seq_{name}_x_fp32")
            )
        )
    paths = "/".join(str(row[c.replace("_ms", "_path")]) for _, c in OP_COLUMNS.values())
    tops = row.get("w8a8_tops")
    parts.append(f"paths {paths}" + (f", w8a8 {tops:.3f} TOPS" if tops else ""))
    return " | ".join(parts)


def dispatch_table(rows: list[dict]) -> dict:
    """The fastest measured path per (op, M, K) cell."""
    rules: dict[str, list[dict]] = {}
    for op, (prefix, _) in OP_COLUMNS.items():
        for row in rows:
            cands = {
                p: row.get(f"{prefix}_{p}_ms")
                for p in CANDIDATES[op]
                if row.get(f"{prefix}_{p}_ms") is not None
            }
            if cands:
                best = min(cands, key=cands.__getitem__)
                rules.setdefault(op, []).append({"m": row["M"], "k": row["K"], "path": best})
    return rules


def write_dispatch(rows: list[dict], meta: dict) -> Path:
    path = ops.DISPATCH_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    data[ops.cpu_description()] = {**meta, "rules": dispatch_table(rows)}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="last line: a JSON list of rows")
    p.add_argument("--quick", action="store_true", help="M in 1, 16, 128 and K = 1024 only")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up")
    p.add_argument("--m", type=int, action="append", help="an M to time (repeatable)")
    p.add_argument("--k", type=int, action="append", help="a K = N to time (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--max-call-s", type=float, default=2.0, help="skip a variant predicted slower than this"
    )
    p.add_argument(
        "--write-dispatch", action="store_true", help="store the fastest paths for this CPU"
    )
    p.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: latency as a user sees it; thread: CPU time of this thread only (one "
        "thread; robust to other processes on a busy machine, blind to memory stalls they cause)",
    )
    args = p.parse_args()
    if args.clock == "thread":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {
        "cpu": cpu_model(),
        "isa": ops.cpu_description(),
        "native_kernels": cpu.native_available(),
        "native_w8a8": cpu.native_w8a8_kernel(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "measured": time.strftime("%Y-%m-%d %H:%M"),
        "repeats": args.repeats,
        "clock": args.clock,
    }
    print("# " + json.dumps(meta))
    t0 = time.perf_counter()
    rows = run(args)
    meta["load_after"] = [round(v, 2) for v in os.getloadavg()]
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    print("# " + json.dumps({k: meta[k] for k in ("load_after", "wall_s")}))
    if args.write_dispatch:
        print(f"# dispatch table written to {write_dispatch(rows, meta)}")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
