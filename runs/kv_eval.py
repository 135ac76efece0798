"""The job's KV stage: decode through the cache the recipe's KV steps chose.

Runs only when a recipe has a KV step (core/methods/kv.py). On one stream of the
evaluation text (up to the model's trained length, at most ``MAX_STREAM`` tokens) the
compressed model decodes through the plain cache (the reference) and through the
policy's cache; the catalogue's ``kv_*`` metrics compare them, by position too, and a
passkey probe at three depths asks whether what was evicted mattered.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from core.kv.cache import KVSpec
from core.kv.passkey import DEPTHS, make_probe, run_probe
from core.kv.quant import analytic_bytes_per_token
from core.kv.stream import Stream, by_bucket, compare, decode_stream, kl_per_token
from core.methods.kv import kv_spec
from runs import catalogue as cat
from runs.progress import Progress

MAX_STREAM = 2048  # tokens of the stream
PREFIX = 64  # prefill tokens before decoding one at a time


def stream_ids(job: Any) -> torch.Tensor:
    """The first tokens of the evaluation text, up to the trained length."""
    model = job.loaded.model
    trained = int(getattr(model.config, "max_position_embeddings", MAX_STREAM) or MAX_STREAM)
    n = min(MAX_STREAM, trained, job.spec.eval.eval_tokens)
    ids = torch.cat(job.windows)[:n]
    if len(ids) < 8:
        raise ValueError(f"the evaluation text gives only {len(ids)} tokens: too few to stream")
    return ids


@contextlib.contextmanager
def attention_for(model: torch.nn.Module, spec: KVSpec) -> Iterator[str]:
    """Eager attention while a policy needs attention weights (H2O), else unchanged."""
    before = model.config._attn_implementation
    if spec.needs_attention:
        model.config._attn_implementation = "eager"
    try:
        yield model.config._attn_implementation
    finally:
        model.config._attn_implementation = before


def describe(spec: KVSpec) -> str:
    fields = dataclasses.asdict(spec)
    default = dataclasses.asdict(KVSpec())
    return ", ".join(f"{k}={v}" for k, v in fields.items() if v != default[k]) or "plain"


def analytic(model: torch.nn.Module, spec: KVSpec) -> float:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = spec.group if spec.key_axis == "channel" and spec.quantized and not spec.fp8 else None
    return analytic_bytes_per_token(
        n_layers=cfg.num_hidden_layers,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        head_dim=head_dim,
        bits=spec.bits,
        fp8=bool(spec.fp8),
        key_group=group,
        float_bytes=next(model.parameters()).element_size(),
    )


def position_rows(ref: Stream, got: Stream) -> list[dict[str, Any]]:
    kl = kl_per_token(ref, got)
    agree = (ref.top1 == got.top1).float()
    nll, ref_nll = by_bucket(got.positions, got.nll), by_bucket(ref.positions, ref.nll)
    kls, tops = by_bucket(got.positions, kl), by_bucket(got.positions, agree)
    return [
        {"bucket": b, "nll": nll[b], "ref_nll": ref_nll[b], "kl": kls[b], "top1": tops[b]}
        for b in nll
    ]


def passkeys(job: Any, ids: torch.Tensor, spec: KVSpec) -> list[dict[str, Any]]:
    model, tok = job.loaded.model, job.loaded.tokenizer
    bos = getattr(tok, "bos_token_id", None)  # as the model reads a document
    filler = ids[: max(16, len(ids) - 32)]
    filler = filler[1:] if bos is not None and int(filler[0]) == bos else filler
    rows = []
    for i, depth in enumerate(DEPTHS):
        probe = make_probe(tok, filler, depth, seed=i, bos=bos)
        plain = run_probe(model, probe, KVSpec())
        got = run_probe(model, probe, spec)
        rows.append(
            {
                "depth": depth,
                "found": got["found"],
                "answer_nll": got["answer_nll"],
                "plain_found": plain["found"],
                "plain_answer_nll": plain["answer_nll"],
                "context_tokens": got["context_tokens"],
            }
        )
    return rows


def evaluate_kv(job: Any, report: Progress) -> None:
    """The KV stage; a recipe without a KV step skips it."""
    spec = kv_spec(job.loaded.model) if job.loaded is not None else None
    if spec is None:
        return
    model = job.loaded.model
    ids = stream_ids(job)
    prefix = min(PREFIX, max(1, len(ids) // 4))
    report(0.0, f"KV cache: decoding {len(ids)} tokens through the plain cache")
    ref = decode_stream(model, ids, KVSpec(), prefix=prefix)
    with attention_for(model, spec) as attention:
        report(0.35, f"KV cache: decoding through {describe(spec)}")
        got = decode_stream(model, ids, spec, prefix=prefix)
        report(0.7, "KV cache: passkey probe")
        keys = passkeys(job, ids, spec)
    c = compare(ref, got)
    job.outputs.update(
        {
            cat.KV_POLICY.key: describe(spec),
            cat.KV_BYTES_PER_TOKEN.key: got.bytes_per_token,
            cat.KV_BYTES_PER_TOKEN_ANALYTIC.key: analytic(model, spec),
            cat.KV_PEAK_BYTES.key: got.peak_bytes,
            cat.KV_STREAM_TOKENS.key: len(ids),
            cat.KV_PERPLEXITY.key: c["ppl"],
            cat.KV_REF_PERPLEXITY.key: c["ref_ppl"],
            cat.KV_KL.key: c["kl"],
            cat.KV_TOP1.key: c["top1"],
            cat.KV_BY_POSITION.key: position_rows(ref, got),
            cat.KV_DECODE_TOK_S.key: got.tokens_per_s,
            cat.KV_DECODE_SPEEDUP.key: got.tokens_per_s / ref.tokens_per_s if ref.seconds else None,
            cat.KV_PASSKEY.key: keys,
            cat.KV_ATTENTION.key: attention,
        }
    )
    report(1.0, "KV cache measured")
