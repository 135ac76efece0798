"""The same recipe run N times, headless: each run's baseline prefill latency (median and
middle half) and its speed-ups (median of the interleaved pair ratios, or "not
measurable"), for the closing note of issue 18 (the old figures: the uncompressed
model's prefill read 6.78 ms, 585.42 ms and 32.78 ms in three jobs minutes apart).

    python bench/latency_repeat.py [--model demo] [--recipe rtn-4bit-g128] [--n 3]
                                   [--json] [-- extra `workers run` arguments]

Each run is `python -m workers run --json` against a temporary SQLite database (the
real job: compress, evaluate, time the baseline and the compressed model interleaved),
one after the other. Prints the machine (lscpu), then one row per run and the spread of
the baseline medians across runs. Run it on an idle machine: the verdicts say "not
measurable" where the load could explain the difference (runs/latency.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compress_time import machine  # noqa: E402
from runs import catalogue as cat  # noqa: E402

FAST_EVAL = ["--eval-tokens", "2048", "--ctx", "256", "--calib-samples", "8"]


def run_once(model: str, recipe: str, db: str, extra: list[str]) -> dict[str, Any]:
    """One `workers run --json`; its last stdout line (the run's whole result)."""
    cmd = [sys.executable, "-m", "workers", "run", "--model", model, "--recipe", recipe]
    cmd += ["--db", db, "--json", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def _spread(r: dict[str, Any], med: cat.Metric, q1: cat.Metric, q3: cat.Metric) -> str:
    """``median [q1-q3]``; a speed-up without a number is "not measurable"."""
    m, a, b = (r.get(x.key) for x in (med, q1, q3))
    if m is None:
        return "not measurable" if med.unit == "x" else "?"
    if a is None or b is None:
        return f"{m:.3g}"
    return f"{m:.3g} [{a:.3g}-{b:.3g}]"


def _num(v: Any) -> str:
    return "?" if v is None else f"{float(v):.3g}"


def row(r: dict[str, Any]) -> dict[str, Any]:
    """The figures the note quotes, from one run's result."""
    report = r.get(cat.LATENCY_REPORT.key) or []
    return {
        "run": r.get("run_id"),
        "baseline_prefill_ms": _spread(
            r, cat.BASELINE_PREFILL_MS, cat.BASELINE_PREFILL_MS_Q1, cat.BASELINE_PREFILL_MS_Q3
        ),
        "prefill_ms": _spread(r, cat.PREFILL_MS, cat.PREFILL_MS_Q1, cat.PREFILL_MS_Q3),
        "prefill_speedup": _spread(
            r, cat.PREFILL_SPEEDUP, cat.PREFILL_SPEEDUP_Q1, cat.PREFILL_SPEEDUP_Q3
        ),
        "decode_speedup": _spread(
            r, cat.DECODE_SPEEDUP, cat.DECODE_SPEEDUP_Q1, cat.DECODE_SPEEDUP_Q3
        ),
        "rounds": r.get(cat.LATENCY_REPEATS.key),
        "threads": r.get(cat.LATENCY_THREADS.key),
        "load": " -> ".join(_num(r.get(m.key)) for m in (cat.LOAD_BEFORE, cat.LOAD_AFTER)),
        "load_factor": max((float(m.get("load") or 1.0) for m in report), default=1.0),
        "compress_cpu_s": _num(r.get(cat.COMPRESS_CPU_S.key)),
        "compress_wall_s": _num(r.get(cat.COMPRESS_S.key)),
        "smaller_but_slower": r.get(cat.SMALLER_BUT_SLOWER.key),
        "verdict": r.get(cat.LATENCY_VERDICT.key),
    }


def table(rows: list[dict[str, Any]], baselines: list[float]) -> str:
    head = (
        "run | baseline prefill ms median [q1-q3] | compressed prefill ms | prefill speed-up "
        "| decode speed-up | rounds | threads | load 1 min before -> after | load factor "
        "| compress CPU s / wall s"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"#{r['run']} | {r['baseline_prefill_ms']} | {r['prefill_ms']} | "
            f"{r['prefill_speedup']} | {r['decode_speedup']} | {r['rounds']} | {r['threads']} | "
            f"{r['load']} | {r['load_factor']:.2f} | {r['compress_cpu_s']} / {r['compress_wall_s']}"
        )
    if baselines:
        lo, hi = min(baselines), max(baselines)
        out.append(
            f"baseline prefill medians across runs: {', '.join(f'{b:.3g}' for b in baselines)} ms "
            f"(max/min {hi / lo:.2f}x; the issue's old figures 6.78, 585.42, 32.78 ms: 86x)"
        )
    out += [f"verdicts #{r['run']}: {r['verdict']}" for r in rows]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--recipe", default="rtn-4bit-g128")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="last line: the rows as JSON")
    ap.add_argument("extra", nargs="*", help="more `workers run` arguments (after --)")
    args = ap.parse_args()
    print(f"# machine: {machine()}", flush=True)
    rows, baselines = [], []
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'repeat.db'}"
        for i in range(args.n):
            result = run_once(args.model, args.recipe, db, args.extra or FAST_EVAL)
            rows.append(row(result))
            if result.get(cat.BASELINE_PREFILL_MS.key) is not None:
                baselines.append(float(result[cat.BASELINE_PREFILL_MS.key]))
            print(f"# run {i + 1}/{args.n} done: #{rows[-1]['run']}", flush=True)
    print(table(rows, baselines))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
