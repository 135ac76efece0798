"""Train ``demo-long``, the bundled model for KV-cache experiments: ``python -m core.zoo.train_long``.

The demo model (core/zoo/demo) was trained on 256-token windows without a start token,
so it attends locally and forms no attention sink: eviction policies cannot be told
apart on it. ``demo-long`` continues from the demo model's weights and tokenizer with
two changes that StreamingLLM and long-context work point to:

- every training window starts with the fixed start token (``<|endoftext|>``, id 0):
  a token that starts every sequence is where attention sinks form;
- windows are ``--ctx`` tokens long (1,024 by default), four times the demo model's.

Same architecture and tokenizer, so it stays under 10 MB. Writes into ``--out``
(default ``core/zoo/demo-long``) the model, tokenizer, ``training_run.json`` (what the
card states, including the sink mass per layer and the held-out NLL by position) and
``README.md``. Everything is seeded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from core.data import get_text_set
from core.kv import passkey
from core.kv.cache import KVSpec
from core.zoo import DEMO_MODEL_DIR
from core.zoo.train_demo import (
    _portable_tokenizer_class,
    encode,
    encode_prefix,
    make_optimizer,
)

logger = logging.getLogger(__name__)

LONG_MODEL_DIR: Path = DEMO_MODEL_DIR.parent / "demo-long"
POSITION_BUCKETS: tuple[int, ...] = (64, 128, 256, 512, 768, 1024)


@dataclass(frozen=True)
class LongConfig:
    ctx: int = 1024  # tokens per training window, the start token included
    batch_size: int = 4
    steps: int = 300
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    eval_windows: int = 8  # held-out windows of ctx tokens for the NLL-by-position curve
    passkey_fraction: float = 0.0  # share of windows with a planted passkey asked for at the end
    answer_weight: float = 1.0  # loss weight of the key's tokens after the question


def lr_at(step: int, cfg: LongConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def with_start_token(windows: torch.Tensor, start_id: int) -> torch.Tensor:
    """(B, T) windows with the start token prepended: (B, T + 1)."""
    start = torch.full((windows.shape[0], 1), start_id, dtype=windows.dtype)
    return torch.cat([start, windows], dim=1)


def plant_passkey(
    body: torch.Tensor, plant: torch.Tensor, ask: torch.Tensor, cut: int
) -> torch.Tensor:
    """``body`` (1-D ids) with ``plant`` inserted at token ``cut`` and ``ask`` (the question
    and its answer) as its last tokens; the length is kept (the tail of the code goes)."""
    room = len(body) - len(plant) - len(ask)
    cut = min(cut, room)
    return torch.cat([body[:cut], plant, body[cut:room], ask])


def long_batches(
    tokens: torch.Tensor,
    cfg: LongConfig,
    start_id: int,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (B, ctx) batches: the start token, then ctx - 1 consecutive tokens from a
    seeded random offset. With ``cfg.passkey_fraction`` > 0 that share of windows carries
    the passkey probe's line (core/kv/passkey.PLANT, a seeded random key) at a random depth
    and the probe's question with the key as the window's last tokens: the only way to
    predict those key tokens is to look back at the line, which teaches long-range recall.
    Yields (batch, weights): per predicted token, ``cfg.answer_weight`` on the key's
    tokens after the question and 1 elsewhere (see :func:`weighted_loss`)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    body = cfg.ctx - 1
    while True:
        starts = torch.randint(0, len(tokens) - body, (cfg.batch_size,), generator=gen)
        offsets = starts[:, None] + torch.arange(body)
        rows = tokens[offsets]
        weights = torch.ones(cfg.batch_size, cfg.ctx)
        if tokenizer is not None and cfg.passkey_fraction > 0:
            for b in range(len(rows)):
                if rng.random() < cfg.passkey_fraction:
                    key = str(rng.randrange(10_000, 100_000))
                    plant = passkey.encode(tokenizer, passkey.PLANT.format(key=key))
                    ask = passkey.encode(tokenizer, passkey.QUESTION + key + '"\n')
                    cut = int(rng.uniform(0.02, 0.95) * (body - len(plant) - len(ask)))
                    rows[b] = plant_passkey(rows[b], plant, ask, cut)
                    n_key = len(passkey.encode(tokenizer, key))
                    key_at = cfg.ctx - len(ask) + len(passkey.encode(tokenizer, passkey.QUESTION))
                    weights[b, key_at : key_at + n_key] = cfg.answer_weight
        yield with_start_token(rows, start_id), weights


def weighted_loss(
    model: LlamaForCausalLM, batch: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Next-token cross-entropy with a weight per predicted token (``weights[:, t]`` for
    the prediction of token t); the plain mean where every weight is 1."""
    if bool((weights == 1).all()):
        return model(input_ids=batch, labels=batch).loss
    logits = model(input_ids=batch).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
    )
    w = weights[:, 1:].reshape(-1)
    return (ce * w).sum() / w.sum()


def train(
    model: LlamaForCausalLM,
    tokens: torch.Tensor,
    cfg: LongConfig,
    start_id: int,
    max_seconds: float | None,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> dict:
    model.train()
    opt = make_optimizer(model, cfg)  # type: ignore[arg-type]  # reads weight_decay, lr
    data = long_batches(tokens, cfg, start_id, tokenizer)
    t0, c0 = time.perf_counter(), time.process_time()
    losses: list[float] = []
    while len(losses) < cfg.steps:
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            logger.warning("time budget reached after %d steps", len(losses))
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(len(losses), cfg)
        batch, weights = next(data)
        loss = weighted_loss(model, batch, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) % 25 == 0:
            recent = losses[-25:]
            logger.info(
                "step %d/%d loss %.4f %.0fs",
                len(losses),
                cfg.steps,
                sum(recent) / len(recent),
                time.perf_counter() - t0,
            )
    model.eval()
    tail = losses[-25:] or [float("nan")]
    return {
        "steps": len(losses),
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "final_loss_nats": round(sum(tail) / len(tail), 4),
        "tokens_seen": len(losses) * cfg.batch_size * cfg.ctx,
    }


@torch.no_grad()
def nll_and_sinks(
    model: torch.nn.Module, windows: torch.Tensor
) -> tuple[torch.Tensor, list[float]]:
    """Per-position mean NLL over (B, T) windows (T - 1 predicted positions), and per layer
    the mean attention mass that queries put on position 0 (eager attention)."""
    out = model(input_ids=windows, output_attentions=True)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, windows[:, 1:, None]).squeeze(-1)  # (B, T-1)
    # attention (B, H, T, T): mass on key 0, averaged over queries after the first 16
    sinks = [float(a[:, :, 16:, 0].mean()) for a in out.attentions]
    return nll.mean(0), sinks


def bucket_means(per_position: torch.Tensor, buckets: tuple[int, ...]) -> dict[str, float]:
    """Mean of per_position[i] (the prediction of token i + 1) over buckets of positions."""
    out: dict[str, float] = {}
    lo = 0
    for hi in buckets:
        if lo >= len(per_position):
            break
        out[f"{lo + 1}-{min(hi, len(per_position))}"] = round(float(per_position[lo:hi].mean()), 4)
        lo = hi
    return out


def heldout_windows(
    tokenizer: PreTrainedTokenizerFast, cfg: LongConfig, start_id: int
) -> torch.Tensor:
    text = get_text_set("stdlib-heldout").text
    body = cfg.ctx - 1
    ids = encode_prefix(tokenizer, text, body * cfg.eval_windows)
    return with_start_token(ids.view(cfg.eval_windows, body), start_id)


def measure(model: LlamaForCausalLM, windows: torch.Tensor) -> dict:
    model.config._attn_implementation = "eager"
    per_pos, sinks = [], []
    for w in windows.split(2):
        nll, s = nll_and_sinks(model, w)
        per_pos.append(nll * len(w))
        sinks.append(torch.tensor(s) * len(w))
    per_position = torch.stack(per_pos).sum(0) / len(windows)
    sink = torch.stack(sinks).sum(0) / len(windows)
    model.config._attn_implementation = "sdpa"
    return {
        "nll_by_position": bucket_means(per_position, POSITION_BUCKETS),
        "nll_mean": round(float(per_position.mean()), 4),
        "perplexity": round(math.exp(float(per_position.mean())), 3),
        "sink_mass_per_layer": [round(float(x), 4) for x in sink],
        "uniform_mass": round(
            float(torch.tensor([1.0 / (q + 1) for q in range(16, windows.shape[1])]).mean()), 4
        ),
        "windows": int(windows.shape[0]),
        "window_tokens": int(windows.shape[1]),
    }


def passkey_recall(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    windows: torch.Tensor,
    start_id: int,
) -> dict:
    """The passkey probe (core/kv/passkey) with the full cache, on held-out windows as
    filler, at each probe depth: the share of keys found (greedy tokens spell the key) and
    the answer's mean NLL in nats."""
    found, nll, n = 0, 0.0, 0
    for i, w in enumerate(windows):
        filler = w[1 : len(w) - 24]  # room for the line and the question
        for depth in passkey.DEPTHS:
            probe = passkey.make_probe(tokenizer, filler, depth, seed=1000 + i, bos=start_id)
            got = passkey.run_probe(model, probe, KVSpec(), chunk=256)
            found += bool(got["found"])
            nll += got["answer_nll"]
            n += 1
    return {"probes": n, "found_share": round(found / n, 3), "answer_nll": round(nll / n, 3)}


def run(
    cfg: LongConfig, init_from: Path, out: Path, max_seconds: float | None, command: str
) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(init_from)
    model = LlamaForCausalLM.from_pretrained(init_from, dtype=torch.float32)
    start_id = int(tokenizer.bos_token_id)
    # a stage on shorter windows does not shrink the length the model was trained at
    model.config.max_position_embeddings = max(cfg.ctx, model.config.max_position_embeddings)
    tokenizer.model_max_length = model.config.max_position_embeddings
    train_set = get_text_set("stdlib-code")
    tokens = encode(tokenizer, train_set.text)
    # measured at the length the model is trained for, whatever this stage's windows
    trained = dataclasses.replace(cfg, ctx=model.config.max_position_embeddings)
    windows = heldout_windows(tokenizer, trained, start_id)
    before = measure(model, windows)
    before["passkey"] = passkey_recall(model, tokenizer, windows, start_id)
    training = train(model, tokens, cfg, start_id, max_seconds, tokenizer)
    after = measure(model, windows)
    after["passkey"] = passkey_recall(model, tokenizer, windows, start_id)
    previous = init_from / "training_run.json"
    stages = json.loads(previous.read_text()).get("stages", []) if previous.exists() else []
    stage = {"command": command, "config": asdict(cfg), "training": training}
    report = {
        "stages": [*stages, stage],
        "config": asdict(cfg),
        "command": command,
        "init_from": str(
            init_from.relative_to(Path.cwd())
            if init_from.is_absolute() and init_from.is_relative_to(Path.cwd())
            else init_from
        ),
        "training": training,
        "start_token": {"id": start_id, "text": tokenizer.bos_token},
        "heldout": {"text_set": "stdlib-heldout", "init": before, "trained": after},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": f"{platform.machine()} ({os.cpu_count()} logical CPUs)",
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_class(out / "tokenizer_config.json")
    report["weights_bytes"] = (out / "model.safetensors").stat().st_size
    (out / "training_run.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(model_card(report))
    return report


def _row(name: str, r: dict) -> str:
    cells = " | ".join(f"{v:.3f}" for v in r["nll_by_position"].values())
    return f"| {name} | {cells} | {r['perplexity']:.2f} |"


def sink_verdict(r: dict) -> str:
    """One sentence: did a sink form (a layer putting over 5x uniform mass on token 0)?"""
    top, uniform = max(r["sink_mass_per_layer"]), r["uniform_mass"]
    if top > 5 * uniform:
        return f"A sink formed: up to {top:.3f} of the attention mass on the start token."
    return (
        f"No sink formed at this size and training budget: at most {top:.4f} of the mass "
        f"goes to the start token in any layer, {top / uniform:.1f}x uniform ({uniform:.4f}), "
        "where a sink takes a large share of every query's attention (over 5x uniform "
        "here counts as one). So StreamingLLM's sinks have little to keep here, and the "
        "Compare / Concepts charts show what they add for this model."
    )


def model_card(report: dict) -> str:
    cfg, tr, ev = report["config"], report["training"], report["heldout"]
    sinks = lambda r: ", ".join(f"{x:.3f}" for x in r["sink_mass_per_layer"])  # noqa: E731
    stages = report.get("stages") or [{"command": report["command"], "training": tr}]
    commands = "\n".join(st["command"] for st in stages)
    all_steps = sum(st["training"]["steps"] for st in stages)
    measured = {k: v for k, v in ev.items() if isinstance(v, dict)}  # demo, stages, trained
    names = {"init": "start of the last stage", "trained": "demo-long"}
    rows = "\n".join(_row(names.get(k, k), v) for k, v in measured.items())
    sink_lines = "\n".join(f"- {names.get(k, k)}: {sinks(v)}" for k, v in measured.items())
    heads = " | ".join(ev["trained"]["nll_by_position"])  # the position buckets
    sep = "|".join(["---"] * (len(ev["trained"]["nll_by_position"]) + 2))
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [llama, compresslab, demo, long-context]
---

# CompressLab demo-long model

The demo model (`core/zoo/demo`), trained further on {cfg["ctx"]}-token windows that each
start with the start token `{report["start_token"]["text"]}` (id {report["start_token"]["id"]}),
for KV-cache experiments (StreamingLLM sinks, H2O, quantized caches). Same architecture
and tokenizer as the demo model ({report["weights_bytes"] / 1e6:.2f} MB fp32). It only
writes Python-looking text; it is for testing, not for use. In CompressLab it is the
model `demo-long`.{passkey_note(stages)}

## Training

```
{commands}
```

Run in order ({len(stages)} stage(s), {all_steps} steps in all); the last stage continues
from `{report["init_from"]}` with a fresh AdamW (betas 0.9/0.95, weight decay
{cfg["weight_decay"]} on matrices), {tr["steps"]} steps of {cfg["batch_size"]} x {cfg["ctx"]}
tokens ({tr["tokens_seen"]:,} tokens) from seeded random offsets of `stdlib-code`, peak lr
{cfg["lr"]} with {cfg["warmup_steps"]} warm-up steps and cosine decay to {cfg["min_lr"]};
final training loss {tr["final_loss_nats"]} nats; {tr["seconds"] / 60:.1f} min wall,
{tr["cpu_seconds"] / 60:.1f} min CPU with {cfg["threads"]} threads on {report["cpu"]}
(load average {tr["load_average_1min"]}), torch {report["torch"]}.

## Does it use its context? Held-out NLL by position

{ev["trained"]["windows"]} windows of `stdlib-heldout` ({ev["trained"]["window_tokens"]} tokens,
start token first); mean NLL (nats) of the tokens predicted at each range of positions:

| model | {heads} | perplexity |
|{sep}|
{rows}

## Attention sink

Mean attention mass that queries (positions 17 and later) put on position 0, per layer
(uniform attention would give {ev["trained"]["uniform_mass"]}):

{sink_lines}

{sink_verdict(ev["trained"])}
{passkey_section(ev)}"""


def passkey_note(stages: list[dict]) -> str:
    """A sentence on the passkey mixture, where a stage used one."""
    used = [st for st in stages if st.get("config", {}).get("passkey_fraction", 0) > 0]
    if not used:
        return ""
    return (
        f"\n\n{len(used)} stage(s) planted the passkey probe's line in their windows "
        "(`--passkey-fraction`, the key's tokens weighted by `--answer-weight`): a code "
        "corpus alone gave a model that never copied a key from far back, so eviction "
        "could not be shown to lose one."
    )


def passkey_section(ev: dict) -> str:
    """The card's passkey paragraph (core/kv/passkey, full cache), where it was measured."""
    rows = [(k, v["passkey"]) for k, v in ev.items() if isinstance(v, dict) and "passkey" in v]
    if not rows:
        return ""
    names = {"init": "start of the last stage", "trained": "demo-long"}
    lines = "\n".join(
        f"| {names.get(k, k)} | {p['found_share']:.0%} of {p['probes']} | {p['answer_nll']:.2f} |"
        for k, p in rows
    )
    return f"""
## Passkey retrieval

The passkey probe of `core/kv/passkey.py` with the full cache: a line `PASSKEY = "<5 digits>"`
planted at 10%, 50% and 90% of a held-out window, the question `assert PASSKEY == "`
at its end; found = the greedy answer spells the key.

| model | keys found | answer NLL (nats) |
|---|---|---|
{lines}
"""


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=LONG_MODEL_DIR)
    p.add_argument("--init-from", type=Path, default=DEMO_MODEL_DIR)
    p.add_argument("--steps", type=int, default=LongConfig.steps)
    p.add_argument("--ctx", type=int, default=LongConfig.ctx)
    p.add_argument("--threads", type=int, default=LongConfig.threads)
    p.add_argument("--minutes", type=float, default=None, help="stop training after M minutes")
    p.add_argument("--batch-size", type=int, default=LongConfig.batch_size)
    p.add_argument(
        "--answer-weight",
        type=float,
        default=LongConfig.answer_weight,
        help="loss weight of the passkey's tokens after the question (1: plain mean)",
    )
    p.add_argument("--lr", type=float, default=LongConfig.lr)
    p.add_argument(
        "--passkey-fraction",
        type=float,
        default=LongConfig.passkey_fraction,
        help="share of training windows with a planted passkey asked for at the end",
    )
    args = p.parse_args(argv)
    cfg = LongConfig(
        steps=args.steps,
        ctx=args.ctx,
        threads=args.threads,
        batch_size=args.batch_size,
        lr=args.lr,
        passkey_fraction=args.passkey_fraction,
        answer_weight=args.answer_weight,
    )
    command = "python -m core.zoo.train_long " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    max_s = None if args.minutes is None else args.minutes * 60
    report = run(cfg, args.init_from, args.out, max_s, command.strip())
    print(json.dumps(report["heldout"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
