"""A retrieval probe: a passkey planted in a long context, asked for at the end.

Eviction can keep perplexity (most tokens are predicted from nearby ones) while losing
what lay far back; this probe shows it. The context is held-out code with one line
``PASSKEY = "<digits>"`` planted at a chosen depth (10% = near the start) and the
question ``assert PASSKEY == "`` at the end. The context goes through the cache in
chunks (evicting between chunks, as a stream would), then the answer is decoded
greedily through the same cache; the key is found when the greedy tokens spell it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from core.kv.cache import KVSpec, PolicyCache, model_rope
from core.kv.stream import n_layers

PLANT = '\nPASSKEY = "{key}"\n'
QUESTION = '\nassert PASSKEY == "'
DEPTHS: tuple[float, ...] = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Probe:
    depth: float
    key: str
    context: torch.Tensor  # 1-D ids: filler with the plant, then the question
    answer: torch.Tensor  # 1-D ids of the key and its closing quote


def encode(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def make_probe(
    tokenizer, filler: torch.Tensor, depth: float, seed: int, bos: int | None = None
) -> Probe:
    """``filler`` (1-D ids) with the passkey line at ``depth`` of it and the question last."""
    key = f"{random.Random(seed).randrange(10_000, 100_000)}"
    cut = int(round(depth * len(filler)))
    parts = [
        filler[:cut],
        encode(tokenizer, PLANT.format(key=key)),
        filler[cut:],
        encode(tokenizer, QUESTION),
    ]
    if bos is not None:
        parts.insert(0, torch.tensor([bos]))
    return Probe(depth, key, torch.cat(parts), encode(tokenizer, key + '"'))


@torch.no_grad()
def run_probe(model: torch.nn.Module, probe: Probe, spec: KVSpec, chunk: int = 32) -> dict:
    """Feed the context through a cache of ``spec`` in ``chunk``-token pieces, then decode
    the answer greedily; returns whether the key was found and the answer's NLL."""
    cache = PolicyCache(spec, n_layers(model), model_rope(model) if spec.evicts else None)
    want = spec.needs_attention
    dev = next(model.parameters()).device
    ctx = probe.context.to(dev)
    for start in range(0, len(ctx), chunk):
        out = model(
            input_ids=ctx[None, start : start + chunk],
            past_key_values=cache,
            use_cache=True,
            output_attentions=want,
        )
        cache.after_step(out.attentions if want else None)
    got: list[int] = []
    nll = 0.0
    logits = out.logits[0, -1]
    for target in probe.answer.tolist():
        nll -= float(torch.log_softmax(logits.float(), -1)[target])
        nxt = int(logits.argmax())
        got.append(nxt)
        out = model(
            input_ids=torch.tensor([[target]], device=dev),
            past_key_values=cache,
            use_cache=True,
            output_attentions=want,
        )
        cache.after_step(out.attentions if want else None)
        logits = out.logits[0, -1]
    return {
        "depth": probe.depth,
        "found": got == probe.answer.tolist(),
        "answer_nll": nll,
        "context_tokens": len(probe.context),
    }
