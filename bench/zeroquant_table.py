"""ZeroQuant (with and without LKD) beside RTN, GPTQ and AWQ at 4-bit g128 and 3-bit g128.

Run: ``OMP_NUM_THREADS=1 python bench/zeroquant_table.py [--json] [--only LABEL,...]``.

On the bundled demo model, each recipe compresses a fresh copy of the float model with
the same calibration set (stdlib-code, 32 x 256 tokens, seed 0: a run's defaults) and is
evaluated on the same windows (stdlib-heldout, 4,096 tokens, ctx 256) against the float
model's log-probs. Printed per recipe: perplexity, KL to the float model (nats/token),
the stored bytes of the quantized linears and their bits per weight, and the compression
time as wall seconds and CPU seconds of this process (``time.process_time``: all its
threads; with OMP_NUM_THREADS=1 it is the work done, little moved by other processes).
Quality does not depend on the machine's load; the times do (the header states the
machine, the threads and the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compress_time import machine  # noqa: E402
from core.calib import CalibSettings  # noqa: E402
from core.metrics import EvalSettings, evaluate  # noqa: E402
from core.sensitivity import model_layers  # noqa: E402
from runs import search_local as L  # noqa: E402

BITS = (4, 3)


def recipes(bits: int) -> dict[str, list[dict[str, Any]]]:
    """The compared recipes at ``bits`` bits, group size 128 (label -> steps)."""
    g = {"bits": bits, "group_size": 128}
    return {
        f"rtn-{bits}bit-g128": [{"method": "rtn", "granularity": "group", **g}],
        f"gptq-{bits}bit-g128": [{"method": "gptq", **g}],
        f"awq-{bits}bit-g128": [{"method": "awq", **g}],
        f"zeroquant-{bits}bit-g128-nolkd": [{"method": "zeroquant", "lkd_steps": 0, **g}],
        f"zeroquant-{bits}bit-g128-lkd": [{"method": "zeroquant", **g}],
        f"zeroquant-{bits}bit-g128-lkd-scales": [{"method": "zeroquant", "learn": "scales", **g}],
    }


def all_recipes() -> dict[str, list[dict[str, Any]]]:
    return {k: v for b in BITS for k, v in recipes(b).items()}


def block_linears(bench: L.Bench) -> list[str]:
    """The linears inside the decoder blocks (what the recipes quantize; lm_head stays)."""
    names, path = model_layers(bench.model)
    return [n for n in names if n.startswith(path + ".")]


def measure(bench: L.Bench, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Perplexity, KL, stored bytes and compression wall / CPU seconds of one recipe."""
    layers = block_linears(bench)
    cpu0 = time.process_time()
    model, wall = L.compressed_copy(bench, steps)
    cpu = time.process_time() - cpu0
    with torch.no_grad():
        res = evaluate(model, bench.loaded.tokenizer, bench.windows, baseline=bench.base)
    nbytes, n = L.linear_bytes(model, layers)
    return {
        "ppl": res.perplexity,
        "kl": res.kl_to_baseline,
        "weight_bytes": nbytes,
        "bpw": 8 * nbytes / n,
        "compress_wall_s": wall,
        "compress_cpu_s": cpu,
    }


def baseline(bench: L.Bench) -> dict[str, Any]:
    layers = block_linears(bench)
    with torch.no_grad():
        res = evaluate(bench.model, bench.loaded.tokenizer, bench.windows)
    nbytes, n = L.linear_bytes(bench.model, layers)
    return {"ppl": res.perplexity, "kl": 0.0, "weight_bytes": nbytes, "bpw": 8 * nbytes / n}


def format_row(label: str, r: dict[str, Any]) -> str:
    t = (
        f"{r['compress_wall_s']:9.2f} {r['compress_cpu_s']:9.2f}"
        if "compress_wall_s" in r
        else f"{'-':>9} {'-':>9}"
    )
    return (
        f"{label:36s} {r['ppl']:8.3f} {r['kl']:10.3e} {r['weight_bytes']:10d} {r['bpw']:6.3f} {t}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="last line: the rows as JSON")
    ap.add_argument("--only", help="comma-separated labels to run (default: all)")
    ap.add_argument("--model", default="demo")
    args = ap.parse_args()
    todo = all_recipes()
    if args.only:
        wanted = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [w for w in wanted if w not in todo]
        if unknown:
            sys.exit(f"unknown label(s) {unknown}; known: {', '.join(todo)}")
        todo = {k: todo[k] for k in wanted}
    load0 = os.getloadavg()[0]
    bench = L.prepare(args.model, "stdlib-heldout", "stdlib-code", EvalSettings(), CalibSettings())
    print(
        f"# {args.model}; {machine()}; torch threads {torch.get_num_threads()}; "
        f"load {load0:.1f} before"
    )
    head = f"{'recipe':36s} {'ppl':>8s} {'KL':>10s} {'bytes':>10s} {'bpw':>6s} {'wall_s':>9s} {'cpu_s':>9s}"
    print(head)
    rows = {"float (baseline)": baseline(bench)}
    print(format_row("float (baseline)", rows["float (baseline)"]), flush=True)
    for label, steps in todo.items():
        rows[label] = measure(bench, steps)
        print(format_row(label, rows[label]), flush=True)
    print(f"# load {os.getloadavg()[0]:.1f} after")
    if args.json:
        print(json.dumps([{"recipe": k, **v} for k, v in rows.items()]))


if __name__ == "__main__":
    main()
