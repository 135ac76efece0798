"""End-to-end speed of a compressed Llama: prefill and decode tokens/s, ratio to fp32.

Run: ``python bench/model_speed.py [--json] [--quick] [--repeats N] [--threads N]``.

A 12-layer, 768-wide Llama (intermediate 2048, 12 heads, 4 key/value heads, vocabulary
32000; random weights built in code with transformers' ``LlamaConfig``, nothing is
downloaded) is compressed with each recipe below by the project's own walker
(``core.walk.apply_recipe``, calibration for the methods that need it: random token
ids), then timed on one sequence: a prefill of ``--prefill`` tokens (512; logits for the
last position only, as transformers' ``generate`` computes them) and a greedy decode of
``--decode`` tokens (64) from that prefill's key/value cache. The lm_head stays in float
in every recipe (DEFAULT_IGNORE), as in GPTQ / AWQ / llm-compressor checkpoints: with a
32,000-token vocabulary it is a quarter of this model's weights, which bounds what any
weight format can gain in decode (see the README).

Variants (label -> recipe of core/recipe.py): fp32 (the baseline, no recipe), bf16,
w8a8 (dynamic per-token activations), smoothquant+w8a8 (alpha 0.5, static activation
scale), int8 and int4 weight-only, GPTQ 4-bit (groups of 128; stored as affine int4, so
it runs through the same int4 kernel), bitsandbytes LLM.int8() and NF4; int4 with the output
layer quantized too; and a floor: every linear replaced by one that returns zeros, which
times everything else (attention, norms, the framework's per-layer overhead) and so
bounds the speed-up any weight format can give.

Timing: one untimed warm-up round (it also tunes / checks the kernel paths on first use),
then ``--repeats`` rounds; within a round every variant runs once, in turn, so a busy
machine slows them alike. Reported: medians; tokens/s and the ratio to fp32 of the same
run (above 1 = faster). Each row names the kernel paths that ran (core.kernels.ops path
log). The machine (CPU model, the SIMD flags that decide the kernels, cores, threads,
torch) is printed first. ``--quick``: a 2-layer, 64-wide model, 16 + 4 tokens, one
round (a smoke test; its numbers mean nothing). ``--clock thread`` (one thread): CPU
time of the calling thread, for a machine busy with other work. With ``--json`` the last line is a JSON
object ``{"machine": {...}, "rows": [...]}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.kernels import cpu, ops  # noqa: E402
from core.kernels.tune import cpu_model  # noqa: E402
from core.recipe import NAMED_RECIPES, recipe_from_steps  # noqa: E402
from core.walk import apply_recipe  # noqa: E402

VARIANTS: dict[str, str | None] = {  # row label -> named recipe (None: uncompressed fp32)
    "fp32": None,
    "bf16": "bf16",
    "w8a8": "w8a8",
    "smoothquant+w8a8": "smoothquant-w8a8",
    "int8-weight-only": "int8-weight-only",
    "int4-weight-only": "int4-weight-only",
    "int4-weight-only+lm_head": "int4-weight-only+lm_head",
    "gptq-4bit": "gptq-4bit-g128",
    "bnb-int8": "llm-int8-bnb",
    "bnb-nf4": "nf4",
    "floor (no linears)": "floor",
}
SHOWN_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


@dataclass(frozen=True)
class Sizes:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    prefill: int
    decode: int
    calib_samples: int
    calib_len: int


FULL = Sizes(12, 768, 2048, 12, 4, 32000, 512, 64, 8, 256)
QUICK = Sizes(2, 64, 128, 4, 2, 256, 16, 4, 2, 16)


def build_llama(s: Sizes) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=max(1024, s.prefill + s.decode),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def machine() -> dict:
    flags = cpu.cpu_flags()
    return {
        "cpu": cpu_model(),
        "flags": [f for f in SHOWN_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "native_vector_bits": cpu.native_vector_bits(),
        "native_w8a8": cpu.native_w8a8_kernel(),
        "load_before": [round(v, 2) for v in os.getloadavg()],
    }


# The output layer too (every recipe above keeps it in float, as GPTQ / AWQ checkpoints
# do; llama.cpp's 4-bit files quantize it): with a 32,000-token vocabulary it is a
# quarter of this model's weights, so it bounds what decode can gain.
EXTRA_RECIPES: dict[str, list[dict]] = {
    "int4-weight-only+lm_head": [{**NAMED_RECIPES["int4-weight-only"][0], "ignore": []}],
}


class NoMatmul(nn.Module):
    """A linear layer that costs nothing: zeros of the output shape. A model made of these
    times everything but the linears (attention, norms, the framework's per-layer
    overhead), the ceiling no weight format can pass."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


def floor_model(model: nn.Module) -> nn.Module:
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear):
            parent, _, leaf = name.rpartition(".")
            setattr(
                model.get_submodule(parent) if parent else model, leaf, NoMatmul(mod.out_features)
            )
    return model


def compress(base: nn.Module, recipe: str | None, calib: list[torch.Tensor]) -> nn.Module:
    model = copy.deepcopy(base)
    if recipe == "floor":
        return floor_model(model).eval()
    if recipe is not None:
        steps = EXTRA_RECIPES.get(recipe) or NAMED_RECIPES[recipe]
        apply_recipe(
            model,
            recipe_from_steps(steps, name=recipe),
            on_progress=lambda f, m: None,
            should_cancel=lambda: False,
            calib_batches=calib,
        )
    return model.eval()


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


@torch.no_grad()
def generate(
    model: nn.Module, ids: torch.Tensor, n_new: int, clock: str = "wall"
) -> tuple[float, float]:
    """(prefill seconds, decode seconds): one prefill of ``ids``, then ``n_new`` greedy
    tokens one at a time from its key/value cache."""
    now = CLOCKS[clock]
    t0 = now()
    out = model(ids, use_cache=True, logits_to_keep=1)  # as generate(): the last logits only
    t1 = now()
    cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(n_new):
        out = model(nxt, past_key_values=cache, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return t1 - t0, now() - t1


def _paths() -> list[str]:
    return sorted({f"{r['op']}:{r['path']}" for r in ops.path_log()})


def run(
    quick: bool = False, repeats: int = 3, variants: list[str] | None = None, clock: str = "wall"
) -> dict:
    s = QUICK if quick else FULL
    names = variants or list(VARIANTS)
    info = {**machine(), "clock": clock}
    print("# " + json.dumps(info), flush=True)
    base = build_llama(s)
    gen = torch.Generator().manual_seed(0)
    calib = [
        torch.randint(0, s.vocab, (1, s.calib_len), generator=gen) for _ in range(s.calib_samples)
    ]
    ids = torch.randint(0, s.vocab, (1, s.prefill), generator=gen)
    models, paths = {}, {}
    for name in names:
        t0 = time.perf_counter()
        models[name] = compress(base, VARIANTS[name], calib)
        ops.reset_path_log()
        generate(models[name], ids, s.decode)  # warm-up (tunes / checks kernel paths)
        paths[name] = _paths()
        print(f"# {name}: compressed and warmed up in {time.perf_counter() - t0:.1f}s", flush=True)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for _ in range(1 if quick else repeats):
        for name in names:
            times[name].append(generate(models[name], ids, s.decode, clock))
    info["load_after"] = [round(v, 2) for v in os.getloadavg()]
    rows = [make_row(name, times[name], s, paths[name]) for name in names]
    add_ratios(rows)
    return {"machine": info, "sizes": s.__dict__, "rows": rows}


def make_row(name: str, t: list[tuple[float, float]], s: Sizes, paths: list[str]) -> dict:
    prefill = statistics.median(p for p, _ in t)
    decode = statistics.median(d for _, d in t)
    return {
        "variant": name,
        "recipe": VARIANTS[name],
        "prefill_s": round(prefill, 4),
        "decode_s": round(decode, 4),
        "prefill_tok_s": round(s.prefill / prefill, 2),
        "decode_tok_s": round(s.decode / decode, 2),
        "repeats": len(t),
        "kernel_paths": paths,
    }


def add_ratios(rows: list[dict]) -> None:
    base = next((r for r in rows if r["variant"] == "fp32"), None)
    for r in rows:
        for k in ("prefill", "decode"):
            r[f"{k}_x_fp32"] = (
                round(r[f"{k}_tok_s"] / base[f"{k}_tok_s"], 3) if base is not None else None
            )


def format_table(result: dict) -> str:
    m, s = result["machine"], result["sizes"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, flags {' '.join(m['flags'])}, "
        f"torch {m['torch']}, clock {m['clock']}; Llama {s['layers']}x{s['hidden']}, prefill {s['prefill']}, "
        f"decode {s['decode']}",
        "| variant | prefill tok/s | x fp32 | decode tok/s | x fp32 | kernel paths |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | {r['prefill_tok_s']:.1f} | {r['prefill_x_fp32']:.2f}x "
            f"| {r['decode_tok_s']:.1f} | {r['decode_x_fp32']:.2f}x "
            f"| {', '.join(r['kernel_paths']) or '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="last line: a JSON object")
    p.add_argument("--quick", action="store_true", help="tiny model, one round (smoke test)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: latency as a user sees it; thread: CPU time of this thread (use with "
        "--threads 1 on a busy machine: robust to other processes)",
    )
    p.add_argument(
        "--variant", action="append", choices=tuple(VARIANTS), help="only these (repeatable)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.variant
    if names and "fp32" not in names:
        names = ["fp32", *names]  # the ratios need the baseline of the same run
    if args.clock == "thread":
        torch.set_num_threads(1)
    result = run(args.quick, args.repeats, names, args.clock)
    print(format_table(result))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
