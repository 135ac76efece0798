"""Decode through a cache, and compare caches (the KV metrics of the catalogue).

A one-pass forward over a window never reads a cache, so it cannot judge one. Here a
stream of token ids is fed as a short prefill (``prefix`` tokens) and then one token at
a time through the cache; every token after the prefix is predicted from the cache as
it stands, and its NLL and log-probs are recorded. The plain cache under the same
protocol is the reference; with absolute positions past the trained length the plain
cache breaks, so sliding-window recomputation (every prediction from a fresh forward
over the last ``window`` tokens) is the reference there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from core.kv.cache import KVSpec, PolicyCache, model_rope

POSITION_BUCKETS: tuple[int, ...] = (256, 512, 1024, 2048, 4096)


@dataclass
class Stream:
    """Predictions of ``ids[prefix:]`` (one row per predicted token)."""

    positions: torch.Tensor  # (n,) index of each predicted token in the stream
    nll: torch.Tensor  # (n,) nats
    logprobs: torch.Tensor  # (n, vocab) float32 log-probs (for KL)
    top1: torch.Tensor  # (n,) argmax token id
    peak_bytes: int = 0  # largest cache size over the stream (stored tensors)
    end_bytes: int = 0
    end_tokens: int = 0  # tokens held at the end
    seconds: float = 0.0  # decode time, the prefill excluded
    decoded: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def bytes_per_token(self) -> float:
        return self.end_bytes / max(1, self.end_tokens)

    @property
    def tokens_per_s(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0

    @property
    def perplexity(self) -> float:
        return math.exp(float(self.nll.mean()))


def n_layers(model: torch.nn.Module) -> int:
    return int(model.config.num_hidden_layers)  # type: ignore[union-attr]


def _record(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    lp = torch.log_softmax(logits.float(), dim=-1)
    return -lp.gather(-1, target[:, None])[:, 0], lp, lp.argmax(-1)


@torch.no_grad()
def decode_stream(
    model: torch.nn.Module, ids: torch.Tensor, spec: KVSpec, *, prefix: int = 64
) -> Stream:
    """Feed ``ids`` (1-D) through a :class:`PolicyCache` of ``spec``: a prefill of
    ``prefix`` tokens, then one token per forward pass."""
    if not 1 <= prefix < len(ids):
        raise ValueError(f"prefix {prefix} must be in [1, {len(ids) - 1}]")
    rope = model_rope(model) if spec.evicts else None
    cache = PolicyCache(spec, n_layers(model), rope)
    want_attn = spec.needs_attention
    dev = next(model.parameters()).device
    ids = ids.to(dev)
    out = model(
        input_ids=ids[None, :prefix],
        past_key_values=cache,
        use_cache=True,
        output_attentions=want_attn,
    )
    cache.after_step(out.attentions if want_attn else None)
    rows = [_record(out.logits[0, -1:], ids[prefix : prefix + 1])]
    peak = cache.nbytes
    t0 = time.perf_counter()
    for t in range(prefix, len(ids) - 1):
        out = model(
            input_ids=ids[None, t : t + 1],
            past_key_values=cache,
            use_cache=True,
            output_attentions=want_attn,
        )
        peak = max(peak, cache.nbytes)
        cache.after_step(out.attentions if want_attn else None)
        rows.append(_record(out.logits[0, -1:], ids[t + 1 : t + 2]))
    seconds = time.perf_counter() - t0
    nll, lp, top = (torch.cat(c) for c in zip(*rows, strict=True))
    return Stream(
        positions=torch.arange(prefix, len(ids)),
        nll=nll.cpu(),
        logprobs=lp.cpu(),
        top1=top.cpu(),
        peak_bytes=peak,
        end_bytes=cache.nbytes,
        end_tokens=cache.get_seq_length(),
        seconds=seconds,
        decoded=len(ids) - 1 - prefix,
    )


@torch.no_grad()
def one_pass(model: torch.nn.Module, ids: torch.Tensor, prefix: int) -> Stream:
    """The same predictions from one forward pass over the whole stream (no cache)."""
    dev = next(model.parameters()).device
    logits = model(input_ids=ids[None].to(dev)).logits[0, prefix - 1 : -1]
    nll, lp, top = _record(logits, ids[prefix:].to(dev))
    return Stream(torch.arange(prefix, len(ids)), nll.cpu(), lp.cpu(), top.cpu())


@torch.no_grad()
def recompute_stream(
    model: torch.nn.Module, ids: torch.Tensor, *, prefix: int, window: int, every: int = 1
) -> Stream:
    """Sliding-window recomputation: each token predicted by a fresh forward over the
    ``window`` tokens before it (positions 0..window-1). Slow: one full pass per token,
    so ``every`` > 1 predicts only every ``every``-th token (the rows say which)."""
    dev = next(model.parameters()).device
    rows = []
    targets = range(prefix, len(ids), every)
    for t in targets:
        ctx = ids[max(0, t - window) : t].to(dev)
        logits = model(input_ids=ctx[None]).logits[0, -1:]
        rows.append(_record(logits, ids[t : t + 1].to(dev)))
    nll, lp, top = (torch.cat(c) for c in zip(*rows, strict=True))
    return Stream(torch.tensor(list(targets)), nll.cpu(), lp.cpu(), top.cpu())


def kl_per_token(ref: Stream, got: Stream) -> torch.Tensor:
    """KL(ref || got) in nats for every predicted token."""
    p = ref.logprobs.float()
    return (p.exp() * (p - got.logprobs.float())).sum(-1)


def by_bucket(
    positions: torch.Tensor, values: torch.Tensor, buckets: tuple[int, ...] = POSITION_BUCKETS
) -> dict[str, float]:
    """Mean of ``values`` over predicted positions <= 256, 257-512, ... (non-empty only)."""
    out: dict[str, float] = {}
    lo = 0
    for hi in buckets:
        sel = (positions >= lo) & (positions < hi)
        if sel.any():
            out[f"<={hi}"] = float(values[sel].float().mean())
        lo = hi
    return out


def compare(ref: Stream, got: Stream) -> dict[str, object]:
    """Perplexity, KL to the reference and top-1 agreement, overall and by position."""
    kl = kl_per_token(ref, got)
    agree = (ref.top1 == got.top1).float()
    return {
        "ppl": got.perplexity,
        "ref_ppl": ref.perplexity,
        "kl": float(kl.mean()),
        "top1": float(agree.mean()),
        "nll_by_position": by_bucket(got.positions, got.nll),
        "kl_by_position": by_bucket(got.positions, kl),
        "top1_by_position": by_bucket(got.positions, agree),
    }
