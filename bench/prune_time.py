"""Compression time of N:M against unstructured pruning, same method, same model.

Run: ``python bench/prune_time.py [--samples 8] [--repeats 3] [--threads 1]``. For each of
magnitude, Wanda and SparseGPT, times ``apply_recipe`` at 50% unstructured and at 2:4 on
the bundled demo model with the same calibration batches (stdlib-code, 256 tokens each),
each repeat on a fresh copy, and prints the medians of wall time and of the calling
thread's CPU time (with ``--threads 1`` that is all the work, unaffected by other
processes) and the ratio 2:4 / unstructured measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.calib import CalibSettings, calibration_batches  # noqa: E402
from core.data import get_text_set  # noqa: E402
from core.models import load_model  # noqa: E402
from core.recipe import recipe_from_steps  # noqa: E402
from core.walk import apply_recipe  # noqa: E402

KINDS = {"50%": {"sparsity": 0.5}, "2:4": {"pattern": "2:4"}}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown CPU"
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), "")


def time_one(model: torch.nn.Module, steps: list[dict], batches: list) -> tuple[float, float]:
    m = copy.deepcopy(model)
    t, c = time.perf_counter(), time.thread_time()
    apply_recipe(
        m,
        recipe_from_steps(steps),
        on_progress=lambda f, s: None,
        should_cancel=lambda: False,
        calib_batches=batches,
    )
    return time.perf_counter() - t, time.thread_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=8, help="calibration windows of 256 tokens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    demo = load_model("demo")
    text = get_text_set("stdlib-code").text
    batches = calibration_batches(demo.tokenizer, text, CalibSettings(n_samples=args.samples))
    print(f"# {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}")
    for method in ("magnitude", "wanda", "sparsegpt"):
        med = {}
        for kind, params in KINDS.items():
            runs = [
                time_one(demo.model, [{"method": method, **params}], batches)
                for _ in range(args.repeats)
            ]
            med[kind] = tuple(statistics.median(r[i] for r in runs) for i in (0, 1))
        (w5, c5), (w24, c24) = med["50%"], med["2:4"]
        print(
            f"{method:10s} 50%: {w5:6.2f} s wall {c5:6.2f} s cpu   2:4: {w24:6.2f} s wall "
            f"{c24:6.2f} s cpu   2:4 / 50%: {w24 / w5:.2f}x wall {c24 / c5:.2f}x cpu",
            flush=True,
        )


if __name__ == "__main__":
    main()
