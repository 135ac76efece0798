"""CompressLab beside the reference implementations, on the demo model, reference protocol.

Run: ``python bench/reference_parity.py --gptq PATH --wanda PATH [--samples 32]
[--eval-tokens 4096] [--seed 0] [--only gptq,wanda] [--json]``, where PATH are exports of
IST-DASLab/gptq and locuslab/wanda that you fetched yourself (``git clone`` or
``git archive``); they are never committed here and the package never imports them.

Both sides see the same data: the calibration windows come from the references' own
data utilities (gptq ``datautils.get_wikitext2``, wanda ``lib.data.get_loaders``) fed
our calibration text through a stand-in for ``datasets.load_dataset`` and our
tokenizer through a stand-in for ``AutoTokenizer.from_pretrained``; ours come from
``core.calib`` with ``protocol="reference"`` and the bench checks they are identical.
The evaluation text is tokenized by the reference loader (BOS as the tokenizer adds
it) and cut to ``--eval-tokens``; theirs is scored by wanda's ``eval_ppl_wikitext``,
ours by ``core.metrics.evaluate`` on the reference-protocol windows.

Theirs runs the references' functions on our loaded demo model: gptq's
``llama.llama_sequential`` (their GPTQ and Quantizer classes; ``args`` set as their
command line would), their ``Quantizer`` for round-to-nearest (``llama_eval
--nearest`` is per channel; per group the same Quantizer on each 128-column slice),
wanda's ``prune_magnitude``, ``prune_wanda`` and ``prune_sparsegpt``. Shims, all
scoped to their calls: transformers >= 4.48 decoder layers need ``position_embeddings``
that the references' layer loops do not pass (computed here from the model's rotary
embedding), ``torch.cuda.synchronize`` and ``Tensor.cuda`` are no-ops on a CPU, and
the model gets ``seqlen`` and an empty ``hf_device_map``.

Prints one row per method: ours, theirs, the relative difference, and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.calib import CalibSettings, calibration_batches  # noqa: E402
from core.data import get_text_set  # noqa: E402
from core.metrics import EvalSettings, eval_windows, evaluate  # noqa: E402
from core.models import load_model  # noqa: E402
from core.recipe import recipe_from_steps  # noqa: E402
from core.walk import apply_recipe  # noqa: E402

CTX = 256  # the demo model's context; seqlen of both sides


# --- shims, active only while a reference function runs -----------------------------


@contextlib.contextmanager
def reference_shims(model: torch.nn.Module, calib_text: str, eval_text: str, tok: Any):
    """The stand-ins the references need on this machine and model (module docstring)."""
    import datasets
    import transformers
    from transformers.models.llama import modeling_llama

    rotary = model.model.rotary_emb
    layer_cls = modeling_llama.LlamaDecoderLayer
    forward = layer_cls.forward

    def forward_with_rope(self, hidden_states, *args, position_embeddings=None, **kwargs):
        if position_embeddings is None:
            pos = kwargs.get("position_ids")
            if pos is None:
                pos = torch.arange(hidden_states.shape[1]).unsqueeze(0)
            position_embeddings = rotary(hidden_states, position_ids=pos)
        return forward(
            self, hidden_states, *args, position_embeddings=position_embeddings, **kwargs
        )

    def load_dataset(*_a: Any, split: str = "train", **_k: Any) -> dict[str, list[str]]:
        return {"text": [calib_text if split == "train" else eval_text]}

    saved = (
        datasets.load_dataset,
        transformers.AutoTokenizer.from_pretrained,
        torch.cuda.synchronize,
        torch.Tensor.cuda,
    )
    layer_cls.forward = forward_with_rope
    datasets.load_dataset = load_dataset
    transformers.AutoTokenizer.from_pretrained = lambda *a, **k: tok
    torch.cuda.synchronize = lambda *a, **k: None
    torch.Tensor.cuda = lambda self, *a, **k: self
    model.seqlen = CTX
    model.hf_device_map = {}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # their progress prints
            yield
    finally:
        layer_cls.forward = forward
        (
            datasets.load_dataset,
            transformers.AutoTokenizer.from_pretrained,
            torch.cuda.synchronize,
            torch.Tensor.cuda,
        ) = saved


def import_references(gptq: Path, wanda: Path) -> dict[str, Any]:
    """The reference modules, imported from the given exports (never from the package)."""
    import importlib

    sys.path[:0] = [str(gptq), str(wanda)]
    with contextlib.redirect_stdout(io.StringIO()):  # quant.py prints about its CUDA kernel
        mods = {n: importlib.import_module(n) for n in ("datautils", "quant", "llama")}
        mods.update({n: importlib.import_module(f"lib.{n}") for n in ("data", "prune", "eval")})
    return mods


# --- their side ----------------------------------------------------------------------


def their_rtn(refs: dict[str, Any], model: Any, bits: int, group: int | None) -> None:
    """gptq's Quantizer (asymmetric, as llama.py --nearest) on every linear of the blocks;
    per group: the same Quantizer on each ``group``-column slice."""
    quant = refs["quant"]
    for layer in model.model.layers:
        for lin in refs["llama"].find_layers(layer).values():
            W = lin.weight.data
            step = group or W.shape[1]
            out = torch.empty_like(W)
            for c in range(0, W.shape[1], step):
                q = quant.Quantizer()
                q.configure(bits, perchannel=True, sym=False, mse=False)
                q.find_params(W[:, c : c + step], weight=True)
                out[:, c : c + step] = quant.quantize(W[:, c : c + step], q.scale, q.zero, q.maxq)
            lin.weight.data = out


def their_gptq(
    refs: dict[str, Any], model: Any, loader: list, bits: int, group: int | None
) -> None:
    """gptq's llama_sequential, with the arguments its command line would set."""
    refs["llama"].args = types.SimpleNamespace(
        nsamples=len(loader),
        true_sequential=True,  # as our default (core/methods/gptq.py)
        wbits=bits,
        sym=False,
        percdamp=0.01,
        groupsize=group or -1,
        act_order=False,
        static_groups=False,
    )
    refs["llama"].llama_sequential(model, loader, torch.device("cpu"))


def _wanda_args(loader: list, sparsity: float) -> Any:
    return types.SimpleNamespace(
        nsamples=len(loader), seed=0, sparsity_ratio=sparsity, use_variant=False
    )


def their_prune(
    refs: dict[str, Any], fn: str, model: Any, loader: list, sparsity: float, nm: tuple[int, int]
) -> None:
    """wanda's prune_magnitude / prune_wanda / prune_sparsegpt, their loader our windows."""
    prune = refs["prune"]
    prune.get_loaders = lambda *a, **k: (loader, None)
    getattr(prune, fn)(
        _wanda_args(loader, sparsity),
        model,
        None,
        torch.device("cpu"),
        prune_n=nm[0],
        prune_m=nm[1],
    )


def their_ppl(refs: dict[str, Any], model: Any, testenc: Any) -> float:
    return float(refs["eval"].eval_ppl_wikitext(model, testenc, 1, torch.device("cpu")))


# --- the rows ------------------------------------------------------------------------

Theirs = Callable[[dict[str, Any], Any, list], None]


def rows() -> list[tuple[str, list[dict[str, Any]], Theirs]]:
    """(label, our recipe, their function) per compared method."""
    out: list[tuple[str, list[dict[str, Any]], Theirs]] = []
    for bits in (4, 3):
        for group in (None, 128):
            g = "g128" if group else "per channel"
            gran = {"granularity": "group", "group_size": 128} if group else {}
            out.append(
                (
                    f"RTN w{bits} {g}",
                    [{"method": "rtn", "bits": bits, "symmetric": False, **gran}],
                    lambda r, m, ld, b=bits, gr=group: their_rtn(r, m, b, gr),
                )
            )
            out.append(
                (
                    f"GPTQ w{bits} {g}",
                    [{"method": "gptq", "bits": bits, "symmetric": False, "group_size": group}],
                    lambda r, m, ld, b=bits, gr=group: their_gptq(r, m, ld, b, gr),
                )
            )
    prune_rows = (
        ("magnitude", "prune_magnitude", {"ties": "threshold"}, {"ties": "threshold"}),
        ("wanda", "prune_wanda", {}, {}),
        ("sparsegpt", "prune_sparsegpt", {"true_sequential": False}, {"true_sequential": False}),
    )
    for method, fn, unstructured, nm_extra in prune_rows:
        out.append(
            (
                f"{method} 50%" + (" (ties=threshold)" if unstructured.get("ties") else ""),
                [{"method": method, "sparsity": 0.5, **unstructured}],
                lambda r, m, ld, f=fn: their_prune(r, f, m, ld, 0.5, (0, 0)),
            )
        )
        nm_cfg = {k: v for k, v in nm_extra.items() if k != "ties"}
        out.append(
            (
                f"{method} 2:4",
                [{"method": method, "pattern": "2:4", **nm_cfg}],
                lambda r, m, ld, f=fn: their_prune(r, f, m, ld, 0.5, (2, 4)),
            )
        )
    out.append(
        (
            "magnitude 50% (ties=exact, our default)",
            [{"method": "magnitude", "sparsity": 0.5}],
            lambda r, m, ld: their_prune(r, "prune_magnitude", m, ld, 0.5, (0, 0)),
        )
    )
    return out


def machine() -> str:
    import subprocess

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), ""
        )
    except (OSError, subprocess.SubprocessError):
        name = ""
    return (
        f"{name or platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    refs = import_references(Path(args.gptq).resolve(), Path(args.wanda).resolve())
    demo = load_model("demo")
    tok, base = demo.tokenizer, demo.model
    calib, held = get_text_set("stdlib-code").text, get_text_set("stdlib-heldout").text
    with reference_shims(base, calib, held, tok):
        loader, testenc = refs["datautils"].get_wikitext2(args.samples, args.seed, CTX, "demo")
    testenc = types.SimpleNamespace(input_ids=testenc.input_ids[:, : args.eval_tokens])
    cs = CalibSettings(n_samples=args.samples, seq_len=CTX, seed=args.seed)
    ours_batches = calibration_batches(tok, calib, cs, "reference")
    same_calib = all(torch.equal(a, b[0]) for a, b in zip(ours_batches, loader, strict=True))
    wins = eval_windows(tok, held, EvalSettings(ctx=CTX, eval_tokens=args.eval_tokens), "reference")
    n_full = args.eval_tokens // CTX * CTX
    same_eval = torch.equal(torch.cat(wins), testenc.input_ids[0, :n_full])
    print(f"# machine: {machine()}", flush=True)
    print(f"# same calibration windows: {same_calib}; same evaluation tokens: {same_eval}")
    out = []
    for label, recipe, theirs in rows():
        if args.only and not any(s.lower() in label.lower() for s in args.only.split(",")):
            continue
        t0 = time.perf_counter()
        mine = copy.deepcopy(base)
        apply_recipe(
            mine,
            recipe_from_steps(recipe),
            on_progress=lambda f, m: None,
            should_cancel=lambda: False,
            calib_batches=ours_batches,
        )
        ours = evaluate(mine, tok, wins).perplexity
        del mine
        their_model = copy.deepcopy(base)
        with reference_shims(their_model, calib, held, tok):
            theirs(refs, their_model, loader)
            ref = their_ppl(refs, their_model, testenc)
        row = {
            "method": label,
            "ours": ours,
            "theirs": ref,
            "diff_pct": 100 * (ours - ref) / ref,
            "s": time.perf_counter() - t0,
        }
        out.append(row)
        print(
            f"{label:42s} ours {ours:9.4f}  theirs {ref:9.4f}  diff {row['diff_pct']:+7.3f}%",
            flush=True,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gptq", required=True, help="folder of an IST-DASLab/gptq export")
    p.add_argument("--wanda", required=True, help="folder of a locuslab/wanda export")
    p.add_argument("--samples", type=int, default=32, help="calibration windows of 256 tokens")
    p.add_argument("--eval-tokens", type=int, default=4096, help="evaluation tokens")
    p.add_argument("--seed", type=int, default=0, help="calibration seed")
    p.add_argument("--only", default="", help="comma-separated substrings of row labels")
    p.add_argument("--json", action="store_true", help="last line: the rows as JSON")
    args = p.parse_args()
    out = run(args)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
