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
import contextlib
import copy
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.calib import CalibSettings, calibration_batches  # noqa: E402
from core.recipe import NAMED_RECIPES, recipe_from_steps  # noqa: E402
from core.walk import (  # noqa: E402
    CALIB_BATCH_TOKENS,
    apply_recipe,
    capture_block_inputs,
    find_blocks,
    run_block,
    stack_windows,
)

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
    """One forward of the uncompressed model over the calibration set, windows stacked as
    the walker stacks them (the fastest way this code runs them)."""
    stacked = stack_windows(batches, CALIB_BATCH_TOKENS)
    t0 = CLOCKS[clock]()
    for ids in stacked:
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


# The reference's true-sequential groups for a Llama block (IST-DASLab/gptq llama.py).
REFERENCE_GROUPS = [
    ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
    ["self_attn.o_proj"],
    ["mlp.up_proj", "mlp.gate_proj"],
    ["mlp.down_proj"],
]
REFERENCE_RECIPES = {"gptq-4bit-g128": 4, "gptq-3bit-g128": 3}  # symmetric, groups of 128


def load_reference(path: Path) -> Any:
    """The reference checkout's ``GPTQ`` and ``Quantizer`` classes (its gptq.py and quant.py,
    imported from ``path`` at run time; nothing of it is part of this package). Its CUDA
    synchronisation becomes a no-op on a CPU-only torch."""
    if not (path / "gptq.py").is_file() or not (path / "quant.py").is_file():
        raise SystemExit(f"--reference {path}: no gptq.py / quant.py (an IST-DASLab/gptq checkout)")
    sys.path.insert(0, str(path))
    with contextlib.redirect_stdout(io.StringIO()):
        import gptq as ref  # type: ignore[import-not-found]
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    return ref


@torch.no_grad()
def reference_seconds(
    ref: Any, model: nn.Module, batches: list[torch.Tensor], bits: int, clock: str
) -> float:
    """The reference's ``llama_sequential`` loop (true sequential, one window per block
    forward, a full block forward per group, then one to feed the next block) on a fresh
    copy of ``model``, with its GPTQ class doing the Hessians and the quantization
    (4-bit groups of 128, symmetric, damp 0.01). Only the block call is adapted: current
    transformers' blocks also take the rotary embeddings, so the kwargs block 0 received
    are reused, as captured by the walker."""
    fresh = copy.deepcopy(model)
    t0 = CLOCKS[clock]()
    _, blocks = find_blocks(fresh)
    inputs = capture_block_inputs(fresh, blocks, batches)
    for layer in blocks:
        full = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        for names in REFERENCE_GROUPS:
            gptq = {}
            for n in names:
                gptq[n] = ref.GPTQ(full[n])
                gptq[n].quantizer = ref.Quantizer()
                gptq[n].quantizer.configure(bits, perchannel=True, sym=True, mse=False)
            handles = [
                full[n].register_forward_hook(
                    lambda _m, inp, out, g=gptq[n]: g.add_batch(inp[0].data, out.data)
                )
                for n in names
            ]
            run_block(layer, inputs)
            for h in handles:
                h.remove()
            with contextlib.redirect_stdout(io.StringIO()):
                for n in names:
                    gptq[n].fasterquant(percdamp=0.01, groupsize=128)
                    gptq[n].free()
        for i, h in enumerate(run_block(layer, inputs)):
            inputs.with_hidden(i, h)
    return CLOCKS[clock]() - t0


def machine() -> str:
    """The CPU as lscpu names it, and the cores torch uses."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), "?"
        )
    except (OSError, subprocess.SubprocessError):
        name = "?"
    return f"{name}, {os.cpu_count()} cores"


def time_method(
    model: nn.Module, name: str, batches: list[torch.Tensor], reps: int, args: Any, ref: Any
) -> tuple[float, float, float | None]:
    """Medians of (forward, ours, reference) over ``reps`` rounds, each round timing the
    three back to back (the reference only for the recipes it implements)."""
    fwd_t, comp_t, ref_t = [], [], []
    for _ in range(reps):
        fwd_t.append(forward_seconds(model, batches, args.clock))
        comp_t.append(compress_seconds(model, METHODS[name], batches, args.clock))
        if ref is not None and name in REFERENCE_RECIPES:
            ref_t.append(
                reference_seconds(ref, model, batches, REFERENCE_RECIPES[name], args.clock)
            )
    med = statistics.median
    return med(fwd_t), med(comp_t), (med(ref_t) if ref_t else None)


MEMORY_RECIPE = "gptq-4bit-g128"


@torch.no_grad()
def _eval_nll(model: nn.Module, windows: torch.Tensor) -> float:
    """Mean next-token loss on ``windows`` (one block on the device at a time if onloaded)."""
    from core.onload import streaming

    with streaming(model):
        logits = model(windows, use_cache=False).logits
    flat = logits[:, :-1].flatten(0, 1)
    return torch.nn.functional.cross_entropy(flat, windows[:, 1:].flatten()).item()


def memory_child(folder: Path, budget_blocks: int, n_calib: int) -> dict[str, Any]:
    """In this fresh process: load the model saved in ``folder`` (in memory, or onloaded
    when ``budget_blocks`` > 0), compress it with GPTQ, evaluate it; the peak RSS above
    the process's RSS before loading (torch, transformers and the model's code imported),
    sampled every 10 ms."""
    import psutil
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.metrics import PeakMemory
    from core.onload import block_bytes, load_onloaded, store_of

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 4096, (1, CALIB.seq_len), generator=gen) for _ in range(n_calib)]
    windows = torch.randint(0, 4096, (4, 256), generator=gen)
    with torch.device("meta"):  # the model's code imported (about 110 MiB of modules)
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    float_block = block_bytes(find_blocks(skeleton)[1][0])  # counted by shape on meta
    del skeleton
    base = psutil.Process().memory_info().rss
    peak = PeakMemory(torch.device("cpu"), interval=0.01)
    with peak.track():
        if budget_blocks:
            model = load_onloaded(folder)
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        apply_recipe(
            model,
            recipe_from_steps(METHODS[MEMORY_RECIPE]),
            on_progress=lambda f, m: None,
            should_cancel=lambda: False,
            calib_batches=batches,
        )
        nll = _eval_nll(model, windows)
    store = store_of(model)
    _, blocks = find_blocks(model)
    return {
        "mode": "onload" if budget_blocks else "in-memory",
        "peak_rss_above_start": peak.peak - base,
        "rss_at_start": base,
        "nll": nll,
        "blocks_at_once": store.peak_loaded if store else len(blocks),
        "block_bytes": float_block,  # one float32 block, before compression
    }


def memory_table(budget_blocks: int, n_calib: int) -> list[dict[str, Any]]:
    """Peak RSS of GPTQ 4-bit on the 12x768 model, in memory and onloaded under a budget of
    ``budget_blocks`` blocks, each in a fresh process (the model saved as safetensors
    first); the loss of both on the same windows."""
    import tempfile

    model = large_llama()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    embed_bytes = embed.numel() * embed.element_size()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cl-mem-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        for blocks in (0, budget_blocks):
            cmd = [sys.executable, __file__, "--memory-child", tmp, "--budget-blocks", str(blocks)]
            cmd += ["--calib-samples", str(n_calib)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row["weight_bytes"], row["embed_bytes"] = weights, embed_bytes
            row["budget_bytes"] = blocks * row["block_bytes"] if blocks else None
            rows.append(row)
    mib = 1 << 20
    print(
        f"\n{MEMORY_RECIPE} on llama-12x768, weights {weights / mib:.0f} MiB, embeddings "
        f"{embed_bytes / mib:.1f} MiB, one block {rows[0]['block_bytes'] / mib:.1f} MiB"
    )
    print(f"{'mode':<12} {'budget MiB':>10} {'peak RSS MiB':>13} {'x weights':>10} {'loss':>10}")
    for r in rows:
        budget = f"{r['budget_bytes'] / mib:.0f}" if r["budget_bytes"] else "-"
        print(
            f"{r['mode']:<12} {budget:>10} {r['peak_rss_above_start'] / mib:>13.0f} "
            f"{r['peak_rss_above_start'] / weights:>10.2f} {r['nll']:>10.6f}"
        )
    print(
        "peak RSS: above the process's RSS once torch, transformers and the model's code "
        f"are imported ({rows[0]['rss_at_start'] / mib:.0f} MiB); onload: x budget+embeddings "
        + ", ".join(
            f"{r['peak_rss_above_start'] / (r['budget_bytes'] + embed_bytes):.2f}"
            for r in rows
            if r["budget_bytes"]
        )
    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="last line: JSON list of rows")
    p.add_argument("--repeats", type=int, default=3, help="repeats on the demo model")
    p.add_argument("--large-repeats", type=int, default=1, help="repeats on the 12x768 model")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--models", default="demo,llama-12x768", help="comma-separated subset")
    p.add_argument("--calib-samples", type=int, default=CALIB.n_samples, help="sequences")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="wall or thread CPU")
    p.add_argument(
        "--reference", type=Path, default=None, help="IST-DASLab/gptq checkout: time it too"
    )
    p.add_argument("--memory", action="store_true", help="peak RSS table instead of times")
    p.add_argument("--budget-blocks", type=int, default=3, help="--memory: budget in blocks")
    p.add_argument("--memory-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.budget_blocks, args.calib_samples)))
        return
    if args.memory:
        print(f"machine: {machine()}; threads={torch.get_num_threads()}")
        rows = memory_table(args.budget_blocks, args.calib_samples)
        if args.json:
            print(json.dumps(rows))
        return
    ref = load_reference(args.reference) if args.reference else None
    calib = CalibSettings(n_samples=args.calib_samples, seq_len=CALIB.seq_len, seed=CALIB.seed)
    names = [m for m in args.methods.split(",") if m]
    print(
        f"machine: {machine()}; threads={torch.get_num_threads()} device=cpu "
        f"clock={args.clock} calib={calib.n_samples}x{calib.seq_len}"
    )
    rows = []
    wanted = set(args.models.split(","))
    for label, model, batches in models(calib):
        if label not in wanted:
            continue
        n_layers = len(find_blocks(model)[1])
        reps = args.repeats if label == "demo" else args.large_repeats
        forward_seconds(model, batches[:1], args.clock)  # warm-up
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"\n{label}: {n_layers} layers, {params:.1f}M params")
        print(
            f"{'method':<20} {'seconds':>9} {'s/layer':>9} {'x forward':>10} {'forward s':>10}"
            f" {'ref s':>8} {'x ref':>7} {'ref x fwd':>10}"
        )
        for name in names:
            fwd, sec, ref_s = time_method(model, name, batches, reps, args, ref)
            row = {
                "model": label,
                "method": name,
                "seconds": sec,
                "s_per_layer": sec / n_layers,
                "x_forward": sec / fwd,
                "forward_s": fwd,
                "reference_s": ref_s,
                "x_reference": sec / ref_s if ref_s else None,
                "repeats": reps,
                "clock": args.clock,
            }
            rows.append(row)
            extra = f" {ref_s:>8.2f} {sec / ref_s:>7.2f} {ref_s / fwd:>10.1f}" if ref_s else ""
            print(
                f"{name:<20} {sec:>9.2f} {sec / n_layers:>9.3f} {sec / fwd:>10.1f} {fwd:>10.2f}"
                + extra,
                flush=True,
            )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
