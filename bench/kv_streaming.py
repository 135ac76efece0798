"""KV-cache policies on a model that uses its context: ``python bench/kv_streaming.py``.

On ``demo-long`` (core/zoo/demo-long, trained at 1,024 tokens with a start token) by
default, over held-out streams, in one run:

1. **streaming past the trained length**: full cache (absolute positions), recent
   window, sinks + window (positions by slot) and sliding-window recomputation (the
   reference; every ``--recompute-every``-th token, it is slow), NLL by position bucket;
2. **quantized caches**: int2 / int4 / int8 (per-token and per-channel keys) and FP8,
   perplexity and KL to the plain cache with measured and analytic bytes per token;
3. **eviction within the trained length**: H2O vs recent-only vs sinks + recent at
   budgets of 12%, 25% and 50% of the stream;
4. the model's attention mass on the first token per layer (the sink).

``--json`` prints everything as one JSON object. Quality numbers, not timings; the
decode tokens/s of each cache are reported as a ratio to the plain cache's in the same
run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import get_text_set  # noqa: E402
from core.kv.cache import KVSpec  # noqa: E402
from core.kv.stream import (  # noqa: E402
    Stream,
    by_bucket,
    compare,
    decode_stream,
    recompute_stream,
)
from core.models import load_model  # noqa: E402

BUCKETS = (256, 512, 1024, 2048, 4096)


def held_out_stream(tok, n: int, offset: int) -> torch.Tensor:
    text = get_text_set("stdlib-heldout").text
    ids = tok(text[offset * 4 : offset * 4 + n * 8], add_special_tokens=False)["input_ids"]
    body = torch.tensor(ids[: n - 1], dtype=torch.long)
    bos = tok.bos_token_id
    return torch.cat([torch.tensor([bos]), body]) if bos is not None else body


def nll_row(s: Stream) -> dict[str, float]:
    return {k: round(v, 4) for k, v in by_bucket(s.positions, s.nll, BUCKETS).items()}


def sink_mass(model, ids: torch.Tensor) -> list[float]:
    before = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        out = model(input_ids=ids[None], output_attentions=True)
    model.config._attn_implementation = before
    return [round(float(a[0, :, 16:, 0].mean()), 4) for a in out.attentions]


def streaming(model, ids, trained: int, sinks: int, every: int, prefix: int) -> dict:
    window = trained - sinks
    rows = {
        "full cache (absolute positions)": decode_stream(model, ids, KVSpec(), prefix=prefix),
        f"recent window ({trained})": decode_stream(
            model, ids, KVSpec(window=trained), prefix=prefix
        ),
        f"sinks {sinks} + window {window}": decode_stream(
            model, ids, KVSpec(sinks=sinks, window=window), prefix=prefix
        ),
    }
    out = {name: nll_row(s) for name, s in rows.items()}
    ref = recompute_stream(model, ids[: len(ids)], prefix=prefix, window=trained, every=every)
    out[f"sliding-window recomputation ({trained}, every {every}th token)"] = nll_row(ref)
    return out


def quantized(model, ids, prefix: int) -> list[dict]:
    plain = decode_stream(model, ids, KVSpec(), prefix=prefix)
    specs = {
        "int8 per token": KVSpec(bits=8),
        "int4 per token": KVSpec(bits=4),
        "int4 keys per channel": KVSpec(bits=4, key_axis="channel"),
        "int2 per token": KVSpec(bits=2),
        "int2 keys per channel": KVSpec(bits=2, key_axis="channel"),
        "fp8 e4m3": KVSpec(bits=8, fp8="e4m3"),
        "fp8 e5m2": KVSpec(bits=8, fp8="e5m2"),
    }
    rows = [_quality_row("plain (fp32)", plain, plain)]
    for name, spec in specs.items():
        rows.append(_quality_row(name, plain, decode_stream(model, ids, spec, prefix=prefix)))
    return rows


def _quality_row(name: str, ref: Stream, got: Stream) -> dict:
    c = compare(ref, got)
    return {
        "cache": name,
        "perplexity": round(c["ppl"], 4),
        "kl": float(f"{c['kl']:.3g}"),
        "top1": round(c["top1"], 4),
        "bytes_per_token": round(got.bytes_per_token, 1),
        "decode_vs_plain": round(got.tokens_per_s / ref.tokens_per_s, 3),
    }


def eviction(model, ids, prefix: int, sinks: int) -> list[dict]:
    n = len(ids)
    plain = decode_stream(model, ids, KVSpec(), prefix=prefix)
    rows = []
    before = model.config._attn_implementation
    for frac in (0.125, 0.25, 0.5):
        budget = int(n * frac)
        specs = {
            "recent only": KVSpec(window=budget),
            f"sinks {sinks} + recent": KVSpec(sinks=sinks, window=budget - sinks),
            "H2O (half heavy, half recent)": KVSpec(heavy=budget // 2, window=budget - budget // 2),
        }
        for name, spec in specs.items():
            model.config._attn_implementation = "eager" if spec.needs_attention else before
            got = decode_stream(model, ids, spec, prefix=prefix)
            rows.append(
                {"budget": f"{frac:.1%} ({budget} tokens)", **_quality_row(name, plain, got)}
            )
    model.config._attn_implementation = before
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo-long")
    p.add_argument("--stream", type=int, default=2048, help="tokens past the trained length")
    p.add_argument("--recompute-every", type=int, default=16)
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--prefix", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="short streams (a smoke test)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    trained = int(model.config.max_position_embeddings)
    n_long = 128 if args.quick else args.stream
    n_in = 64 if args.quick else trained
    if args.quick:
        trained, args.prefix = 32, 16
    long_ids = held_out_stream(tok, n_long, 0)
    in_ids = held_out_stream(tok, n_in, 50_000)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "model": args.model,
        "trained_length": int(model.config.max_position_embeddings),
        "sink_mass_per_layer": sink_mass(model, in_ids),
        "streaming": streaming(
            model, long_ids, trained, args.sinks, args.recompute_every, args.prefix
        ),
        "quantized": quantized(model, in_ids, args.prefix),
        "eviction": eviction(model, in_ids, args.prefix, args.sinks),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print(report)
    return 0


def _print(r: dict) -> None:
    print(f"# {r['model']} (trained at {r['trained_length']} tokens) on {r['machine']}")
    print("sink mass per layer (attention on token 0):", r["sink_mass_per_layer"])
    print("\n## NLL by position bucket (streaming)")
    for name, row in r["streaming"].items():
        print(f"{name:55s}", "  ".join(f"{k}: {v:.3f}" for k, v in row.items()))
    for title in ("quantized", "eviction"):
        print(f"\n## {title}")
        for row in r[title]:
            print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    raise SystemExit(main())
