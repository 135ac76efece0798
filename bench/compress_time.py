"""Compression wall time of every weight-quantization method, as the model grows.

Run: ``python bench/compress_time.py [--json] [--repeats N] [--large-repeats N]``.

For the bundled demo model (if present) and a larger Llama built in code (12 layers,
hidden 768, intermediate 2048, random weights), times ``apply_recipe`` of each method
with the same calibration set (16 x 256 tokens: stdlib-code windows for the demo,
random token ids for the random model) and prints, per method, the median wall seconds,
the seconds per decoder layer, and the ratio to ONE forward pass of the uncompressed
model over the whole calibration set, measured in the same run (median too): one
forward is timed right before every compression, so that a machine whose load drifts
during the run biases both alike. Each repeat compresses a fresh copy of the model.
``--clock thread`` measures the CPU time of the calling thread instead of wall time:
with ``--threads 1`` that is the work done, unaffected by other processes on a busy
machine. With ``--json`` the last line is a JSON list of rows (model, method, seconds,
s_per_layer, x_forward, forward_s, repeats, clock).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.calib import CalibSettings, calibration_batches  # noqa: E402
from core.recipe import NAMED_RECIPES, recipe_from_steps  # noqa: E402
from core.walk import apply_recipe, find_blocks  # noqa: E402

# Row label -> the named recipe it times (core/recipe.py NAMED_RECIPES).
METHODS: dict[str, list[dict]] = {
    label: NAMED_RECIPES[name]
    for label, name in (
        ("rtn-4bit-g128", "rtn-4bit-g128"),
        ("rtn-4bit-g128-mse", "rtn-4bit-g128-mse"),
        ("gptq-4bit-g128", "gptq-4bit-g128"),
        ("gptq-3bit-g128", "gptq-3bit-g128"),
        ("awq-4bit-g128", "awq-4bit-g128"),
        ("bnb-int8", "llm-int8-bnb"),
        ("bnb-nf4", "nf4"),
        ("fp8-e4m3", "fp8-e4m3"),
    )
}
CALIB = CalibSettings(n_samples=16, seq_len=256, seed=0)  # --calib-samples overrides


def large_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=4096,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def models(calib: CalibSettings) -> list[tuple[str, nn.Module, list[torch.Tensor]]]:
    out = []
    try:
        from core.data import get_text_set
        from core.models import load_model

        demo = load_model("demo")
        text = get_text_set("stdlib-code").text
        out.append(("demo", demo.model, calibration_batches(demo.tokenizer, text, calib)))
    except Exception as e:  # the demo model may not be trained yet on this checkout
        print(f"demo model skipped: {e}", file=sys.stderr)
    gen = torch.Generator().manual_seed(0)
    ids = [
        torch.randint(0, 4096, (1, calib.seq_len), generator=gen) for _ in range(calib.n_samples)
    ]
    out.append(("llama-12x768", large_llama(), ids))
    return out


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


@torch.no_grad()
def forward_seconds(model: nn.Module, batches: list[torch.Tensor], clock: str) -> float:
    t0 = CLOCKS[clock]()
    for ids in batches:
        model(ids, use_cache=False)
    return CLOCKS[clock]() - t0


def compress_seconds(
    model: nn.Module, steps: list[dict], batches: list[torch.Tensor], clock: str
) -> float:
    fresh = copy.deepcopy(model)
    t0 = CLOCKS[clock]()
    apply_recipe(
        fresh,
        recipe_from_steps(steps),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=batches,
    )
    return CLOCKS[clock]() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="last line: JSON list of rows")
    p.add_argument("--repeats", type=int, default=3, help="repeats on the demo model")
    p.add_argument("--large-repeats", type=int, default=1, help="repeats on the 12x768 model")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--calib-samples", type=int, default=CALIB.n_samples, help="sequences")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="wall or thread CPU")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    calib = CalibSettings(n_samples=args.calib_samples, seq_len=CALIB.seq_len, seed=CALIB.seed)
    names = [m for m in args.methods.split(",") if m]
    print(
        f"threads={torch.get_num_threads()} device=cpu clock={args.clock} "
        f"calib={calib.n_samples}x{calib.seq_len}"
    )
    rows = []
    for label, model, batches in models(calib):
        n_layers = len(find_blocks(model)[1])
        reps = args.repeats if label == "demo" else args.large_repeats
        forward_seconds(model, batches[:1], args.clock)  # warm-up
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"\n{label}: {n_layers} layers, {params:.1f}M params")
        print(f"{'method':<20} {'seconds':>9} {'s/layer':>9} {'x forward':>10} {'forward s':>10}")
        for name in names:
            fwd_t, comp_t = [], []
            for _ in range(reps):
                fwd_t.append(forward_seconds(model, batches, args.clock))
                comp_t.append(compress_seconds(model, METHODS[name], batches, args.clock))
            fwd, sec = statistics.median(fwd_t), statistics.median(comp_t)
            row = {
                "model": label,
                "method": name,
                "seconds": sec,
                "s_per_layer": sec / n_layers,
                "x_forward": sec / fwd,
                "forward_s": fwd,
                "repeats": reps,
                "clock": args.clock,
            }
            rows.append(row)
            print(
                f"{name:<20} {sec:>9.2f} {sec / n_layers:>9.3f} {sec / fwd:>10.1f} {fwd:>10.2f}",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
