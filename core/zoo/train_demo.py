"""Train the bundled demo model: ``python -m core.zoo.train_demo``.

A byte-level BPE tokenizer and a small Llama (RMSNorm, rotary embeddings, SwiGLU,
grouped-query attention) trained on ``stdlib-code`` (the running interpreter's
standard library minus tests and the held-out modules, plus pydoc topics), then
evaluated on ``stdlib-heldout``. Everything is seeded; given the same Python
standard library, package versions and thread count, the same command gives the
same weights. The default run takes about 25 minutes on one idle CPU core (longer on a
busy machine; the card records the wall time and the CPU time).

Writes into ``--out`` (default ``core/zoo/demo``): the model and tokenizer in
Hugging Face format, ``heldout_eval.json``, ``training_run.json`` (everything the card
states) and the model card ``README.md``; ``--card-only`` rewrites the card from
``training_run.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from core.data import HELDOUT_MODULES, get_text_set
from core.zoo import DEMO_MODEL_DIR

logger = logging.getLogger(__name__)

SPECIAL_TOKEN = "<|endoftext|>"  # bos, eos and pad; id 0
GENERATION_PROMPT = "def "
# Pre-tokenization: identifiers (with underscores and digits), up to 3 digits, or a run
# of punctuation, each taking ONE following space; other whitespace runs (newline plus
# indentation) stay whole. Unlike GPT-2's leading-space pieces, a prompt ending in a
# space ("def ") then tokenizes exactly as it did in training.
PRETOKENIZE_PATTERN = r"(?:[\p{L}_][\p{L}\p{N}_]*|\p{N}{1,3}|[^\s\p{L}\p{N}_]+) ?|\s+"


@dataclass(frozen=True)
class DemoConfig:
    # tokenizer
    vocab_size: int = 4096  # byte-level BPE: 256 byte symbols + merges + 1 special token
    # model: every Linear's in_features is a multiple of 128 (group-wise quantization)
    hidden_size: int = 256  # d_model
    num_hidden_layers: int = 4  # decoder blocks
    num_attention_heads: int = 8  # head_dim = 256 / 8 = 32
    num_key_value_heads: int = 2  # GQA: 4 query heads share each k/v head
    intermediate_size: int = 256  # SwiGLU width; kept small so fp32 weights fit 10 MB
    tie_word_embeddings: bool = True  # the 4096 x 256 embedding is 40% of the weights
    # training
    ctx: int = 256  # tokens per training sequence (also max_position_embeddings)
    batch_size: int = 8  # sequences per step
    steps: int = 1200  # optimizer steps: ~22 min on one idle core (2.5M tokens, ~1 epoch)
    lr: float = 3e-3  # peak AdamW learning rate
    min_lr: float = 3e-4  # end of the cosine decay
    warmup_steps: int = 60  # linear warm-up
    weight_decay: float = 0.1  # on matrices only, not on norms
    grad_clip: float = 1.0  # max global grad norm
    seed: int = 0  # tokenizer-independent: model init and data order
    threads: int = 1  # torch.set_num_threads: results depend on it; 1 is the most portable
    line_aligned: bool = False  # windows start at the start of a line, as prompts do
    # held-out evaluation
    eval_ctx: int = 256  # window length; windows do not overlap (stride = ctx)
    eval_tokens: int = 8192  # first tokens of stdlib-heldout
    test_eval_tokens: int = 2048  # the smaller budget tests/test_demo_model.py recomputes


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE over ``PRETOKENIZE_PATTERN`` pieces, wrapped for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_chunks(text, 1 << 16), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        model_max_length=DemoConfig.ctx,
        clean_up_tokenization_spaces=False,
    )


def _chunks(text: str, size: int) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D int64 tensor (no special tokens added)."""
    ids = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    return torch.tensor(ids, dtype=torch.long)


def encode_prefix(tokenizer: PreTrainedTokenizerFast, text: str, n_tokens: int) -> torch.Tensor:
    """The first ``n_tokens`` ids of ``text`` without encoding all of it.

    Pieces are cut by a left-to-right regex without look-ahead, so only the piece at
    the cut can differ from encoding the whole text; a margin of tokens covers it.
    """
    margin = 64
    chars = 8 * (n_tokens + margin)
    while True:
        ids = encode(tokenizer, text[:chars])
        if len(ids) >= n_tokens + margin or chars >= len(text):
            return ids[:n_tokens]
        chars *= 2


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """UTF-8 bytes each token id stands for (0 for special tokens).

    In a byte-level vocabulary every character of a token string encodes exactly
    one byte, so this is exact even for tokens that split a multi-byte character.
    """
    lengths = torch.zeros(len(tokenizer), dtype=torch.long)
    special = set(tokenizer.all_special_ids)
    for token, idx in tokenizer.get_vocab().items():
        lengths[idx] = 0 if idx in special else len(token)
    return lengths


# ---------------------------------------------------------------- model


def model_config(cfg: DemoConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    eos = tokenizer.eos_token_id
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.ctx,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def build_model(cfg: DemoConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised model; the init depends only on ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(model_config(cfg, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- training


def line_start_mask(tokenizer: PreTrainedTokenizerFast, tokens: torch.Tensor) -> torch.Tensor:
    """True where a token follows one that contains a newline (a line starts there)."""
    newline = torch.zeros(len(tokenizer), dtype=torch.bool)
    for token, idx in tokenizer.get_vocab().items():
        newline[idx] = "\u010a" in token  # byte-level spelling of "\n"
    mask = torch.zeros(len(tokens), dtype=torch.bool)
    mask[1:] = newline[tokens[:-1]]
    return mask


def window_starts(n_tokens: int, ctx: int, line_starts: torch.Tensor | None = None) -> torch.Tensor:
    """Starts of non-overlapping ctx-token windows, each snapped forward to a line start if given."""
    if line_starts is None:
        return torch.arange(0, n_tokens - ctx + 1, ctx)
    starts: list[int] = []
    next_free = 0
    for pos in line_starts.nonzero().flatten().tolist():
        if pos + ctx > n_tokens:
            break
        if pos >= next_free:
            starts.append(pos)
            next_free = pos + ctx
    return torch.tensor(starts, dtype=torch.long)


def batches(
    tokens: torch.Tensor, starts: torch.Tensor, ctx: int, batch_size: int, seed: int
) -> Iterator[torch.Tensor]:
    """Endless (batch_size, ctx) batches of the windows at ``starts``, reshuffled each epoch."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(starts), generator=gen)
        for first in range(0, len(starts) - batch_size + 1, batch_size):
            idx = starts[order[first : first + batch_size]]
            offsets = idx[:, None] + torch.arange(ctx)  # (B, ctx)
            yield tokens[offsets]


def lr_at(step: int, cfg: DemoConfig) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``min_lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, cfg: DemoConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def _train_step(
    model: LlamaForCausalLM,
    opt: torch.optim.Optimizer,
    batch: torch.Tensor,
    lr: float,
    grad_clip: float,
) -> float:
    """One AdamW step on a (B, T) batch; the model shifts the labels itself."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def train(
    model: LlamaForCausalLM,
    tokens: torch.Tensor,
    cfg: DemoConfig,
    max_seconds: float | None = None,
    line_starts: torch.Tensor | None = None,
) -> dict:
    """Train in place; stops after ``cfg.steps`` or ``max_seconds``, whichever first.

    ``line_starts`` (a mask over ``tokens``) is needed when ``cfg.line_aligned``.
    """
    model.train()
    opt = make_optimizer(model, cfg)
    starts = window_starts(len(tokens), cfg.ctx, line_starts if cfg.line_aligned else None)
    data = batches(tokens, starts, cfg.ctx, cfg.batch_size, cfg.seed)
    start = time.perf_counter()
    cpu_start = time.process_time()
    losses: list[float] = []
    steps_done = 0
    while steps_done < cfg.steps:
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            logger.warning("time budget reached after %d steps", steps_done)
            break
        losses.append(_train_step(model, opt, next(data), lr_at(steps_done, cfg), cfg.grad_clip))
        steps_done += 1
        if steps_done % 50 == 0 or steps_done == cfg.steps:
            logger.info(
                "step %d/%d loss %.4f lr %.2e %.0fs",
                steps_done,
                cfg.steps,
                sum(losses[-50:]) / len(losses[-50:]),
                lr_at(steps_done - 1, cfg),
                time.perf_counter() - start,
            )
    model.eval()
    return {
        "steps": steps_done,
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "final_loss_nats": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
        "tokens_seen": steps_done * cfg.batch_size * cfg.ctx,
        "windows_per_epoch": len(starts),
    }


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def heldout_eval(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    text: str,
    *,
    ctx: int = 256,
    eval_tokens: int = 8192,
    batch_size: int = 8,
) -> dict:
    """Perplexity and bits per byte over non-overlapping windows of ``ctx`` tokens.

    The first ``eval_tokens`` tokens of ``text`` are cut into windows of ``ctx``
    (stride ``ctx``; a short last window is kept); the first token of each window is
    context only. Perplexity is exp(mean NLL) over the predicted tokens; bits per
    byte is the total NLL in bits over the UTF-8 bytes those tokens stand for.
    """
    ids = encode_prefix(tokenizer, text, eval_tokens)
    if len(ids) < eval_tokens:
        raise ValueError(f"text has only {len(ids)} tokens, fewer than eval_tokens={eval_tokens}")
    byte_len = token_byte_lengths(tokenizer)
    windows = [ids[i : i + ctx] for i in range(0, len(ids), ctx)]
    windows = [w for w in windows if len(w) > 1]
    total_nll = 0.0
    for start in range(0, len(windows), batch_size):
        total_nll += _windows_nll(model, windows[start : start + batch_size])
    targets = torch.cat([w[1:] for w in windows])
    n_bytes = int(byte_len[targets].sum())
    n_tokens = len(targets)
    return {
        "perplexity": round(math.exp(total_nll / n_tokens), 4),
        "bits_per_byte": round(total_nll / math.log(2) / n_bytes, 5),
        "nll_nats_per_token": round(total_nll / n_tokens, 5),
        "predicted_tokens": n_tokens,
        "predicted_bytes": n_bytes,
    }


def _windows_nll(model: torch.nn.Module, windows: list[torch.Tensor]) -> float:
    """Summed NLL (nats) of tokens 1.. of each window given the tokens before them."""
    total = 0.0
    for length in sorted({len(w) for w in windows}):
        group = torch.stack([w for w in windows if len(w) == length])  # (B, T)
        logits = model(input_ids=group).logits.float()  # (B, T, V)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), group[:, 1:].reshape(-1), reduction="sum"
        )
        total += nll.item()
    return total


@torch.no_grad()
def greedy_sample(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompt: str = GENERATION_PROMPT,
    max_new_tokens: int = 64,
) -> str:
    """Greedy continuation of ``prompt`` (prompt included)."""
    ids = encode(tokenizer, prompt)[None, :]
    out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0], skip_special_tokens=True)


# ---------------------------------------------------------------- outputs


def save(
    out: Path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, report: dict
) -> None:
    """Weights, tokenizer, held-out figures and the card into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_class(out / "tokenizer_config.json")
    report["weights_bytes"] = (out / "model.safetensors").stat().st_size
    (out / "heldout_eval.json").write_text(json.dumps(report["eval"], indent=2) + "\n")
    (out / "training_run.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(model_card(report))


def _portable_tokenizer_class(path: Path) -> None:
    """Name the class transformers 4.x also knows (5.x maps it to the same backend).

    Also drops the loading flags transformers 5 writes back when the tokenizer was read
    from a folder (``--init-from``): they describe that load, not the tokenizer.
    """
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2) + "\n")


def _fmt_eval(name: str, r: dict) -> str:
    return f"| {name} | {r['perplexity']:.2f} | {r['bits_per_byte']:.4f} | {r['nll_nats_per_token']:.4f} |"


def _stages(report: dict) -> list[dict]:
    return report.get("stages") or _previous_stages(report)


def _stage_commands(report: dict) -> str:
    return "\n".join(st["command"] for st in _stages(report))


def _stage_table(report: dict) -> str:
    rows = [
        "| stage | steps | tokens | peak / final lr | warm-up | windows | seed | final train "
        "loss (nats) | wall min | CPU min | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, st in enumerate(_stages(report), start=1):
        tr = st["training"]
        windows = "line starts" if st["line_aligned"] else "any"
        rows.append(
            f"| {i} | {tr['steps']} | {tr['tokens_seen']:,} | {st['lr']} / {st['min_lr']} "
            f"| {st['warmup_steps']} | {windows} | {st['seed']} | {tr['final_loss_nats']} "
            f"| {tr['seconds'] / 60:.1f} | {tr['cpu_seconds'] / 60:.1f} "
            f"| {tr['load_average_1min']} |"
        )
    return "\n".join(rows)


def model_card(report: dict) -> str:
    """The README.md next to the weights."""
    cfg = report["config"]
    ev = report["eval"]
    mb = report["weights_bytes"] / 1e6
    heldout = ", ".join(f"`{m}`" for m in HELDOUT_MODULES)
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [llama, compresslab, demo]
---

# CompressLab demo model

A small causal language model of Python source code, bundled with CompressLab so
that every method can be tried, and every number measured, offline. It is a real
trained model: its held-out perplexity is far below that of the same architecture
untrained. It is tiny and only writes Python-looking text; it is for testing
compression methods, not for use.

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("core/zoo/demo")  # works offline
tokenizer = AutoTokenizer.from_pretrained("core/zoo/demo")
```

In CompressLab it is the model `demo` (`python -m workers run --model demo ...`).

## Architecture

`LlamaForCausalLM` (RMSNorm, rotary position embeddings, SwiGLU MLP, grouped-query
attention), {report["n_params"]:,} parameters, stored in fp32 ({mb:.2f} MB
`model.safetensors`).

| setting | value |
|---|---|
| vocabulary | {report["vocab_size"]} (byte-level BPE, ours) |
| hidden size | {cfg["hidden_size"]} |
| layers | {cfg["num_hidden_layers"]} |
| attention heads / key-value heads | {cfg["num_attention_heads"]} / {cfg["num_key_value_heads"]} (head dim {cfg["hidden_size"] // cfg["num_attention_heads"]}) |
| SwiGLU intermediate size | {cfg["intermediate_size"]} |
| tied input/output embeddings | {cfg["tie_word_embeddings"]} |
| context length | {cfg["ctx"]} |

Every linear layer's input width is a multiple of 128, so group-wise quantization
with groups of 32, 64 or 128 applies to all of them. The sizes were chosen to keep
the fp32 weights within 10 MB.

## Tokenizer

Byte-level BPE trained with the `tokenizers` package on the training text below,
vocabulary {report["vocab_size"]}. Text is first split into identifiers, numbers (up to
3 digits) and punctuation runs, each taking one following space, and whitespace runs
(a newline with its indentation stays one piece); so `def ` is a single token, as in
training. There is
one special token `{SPECIAL_TOKEN}` (id {report["special_token_id"]}) used as bos, eos
and pad. No special token is added when encoding. Loads with
`AutoTokenizer.from_pretrained("core/zoo/demo")`.

## Data

- Training: the text set `stdlib-code` of `core/data.py`: the `.py` files of the
  Python {report["python"]} standard library in sorted path order, each after a
  `# ===== <path> =====` header, excluding site-packages, tests, idlelib, lib2to3,
  encodings, turtledemo, ensurepip, build-specific files and the held-out modules,
  followed by the pydoc topics text; {report["train_bytes"]:,} bytes,
  {report["train_tokens"]:,} tokens, sha256 `{report["train_sha256"][:16]}...`.
- Held out (never seen in training; the text set `stdlib-heldout`): {heldout};
  {report["heldout_bytes"]:,} bytes, sha256 `{ev["heldout_sha256"][:16]}...`.

## Training

Run in order (each command reads what the one before it wrote):

```
{_stage_commands(report)}
```

AdamW (betas 0.9/0.95, weight decay {cfg["weight_decay"]} on matrices), gradient clipping
{cfg["grad_clip"]}, batches of {cfg["batch_size"]} x {cfg["ctx"]} tokens from non-overlapping
windows in a seeded order, one linear warm-up and cosine decay per stage. A later stage
continues from the weights of the one before with a fresh optimizer (a warm restart),
a new data order, and its windows starting at line starts (the start of a line is where
prompts such as `def ` begin).

{_stage_table(report)}

Wall time depends on how busy the machine was (the load average is recorded);
CPU time does less. Whole script, last stage: {report["total_seconds"] / 60:.1f} minutes
(tokenizer and evaluation included), with {cfg["threads"]} torch thread(s) on
{report["cpu"]}, torch {report["torch"]}, transformers {report["transformers"]},
tokenizers {report["tokenizers"]}.

## Held-out evaluation

Measured with Python {ev["python"]} (the held-out text is that version's standard
library) by `heldout_eval` in `core/zoo/train_demo.py`: the first {ev["eval_tokens"]}
tokens of `stdlib-heldout`, non-overlapping windows of {ev["ctx"]} tokens (stride
{ev["stride"]}), the first token of each window not predicted
({ev["trained"]["predicted_tokens"]} predicted tokens, {ev["trained"]["predicted_bytes"]:,}
bytes). Perplexity = exp(mean NLL per predicted token); bits per byte = total NLL in
bits / UTF-8 bytes of the predicted tokens.

| model | perplexity | bits per byte | NLL (nats/token) |
|---|---|---|---|
{_fmt_eval("trained", ev["trained"])}
{_fmt_eval("untrained (same architecture, same seed init)", ev["untrained"])}

With the test's smaller budget ({ev["test_budget"]["eval_tokens"]} tokens, same
windows) the trained model scores perplexity {ev["test_budget"]["trained"]["perplexity"]:.2f},
{ev["test_budget"]["trained"]["bits_per_byte"]:.4f} bits per byte;
`tests/test_demo_model.py` checks that figure within 2%. Another Python version has a
different standard library, so a different held-out text: the figures above do not
apply there (the test checks the text's sha256 and skips).

## Sample

Greedy decoding of {report["sample_new_tokens"]} new tokens from the prompt `{GENERATION_PROMPT}`:

```python
{report["sample"]}
```
"""


# ---------------------------------------------------------------- main


def _versions() -> dict:
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "cpu": f"{platform.machine()} ({os.cpu_count()} logical CPUs)",
    }


def evaluate_both(
    trained: torch.nn.Module,
    untrained: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    cfg: DemoConfig,
) -> dict:
    heldout = get_text_set("stdlib-heldout")
    settings = {"ctx": cfg.eval_ctx, "stride": cfg.eval_ctx}
    full = {"eval_tokens": cfg.eval_tokens, **settings}
    small = {"eval_tokens": cfg.test_eval_tokens, **settings}
    return {
        **full,
        "text_set": "stdlib-heldout",
        "heldout_sha256": heldout.sha256,
        "python": platform.python_version(),
        "trained": heldout_eval(
            trained, tokenizer, heldout.text, ctx=cfg.eval_ctx, eval_tokens=cfg.eval_tokens
        ),
        "untrained": heldout_eval(
            untrained, tokenizer, heldout.text, ctx=cfg.eval_ctx, eval_tokens=cfg.eval_tokens
        ),
        "test_budget": {
            **small,
            "trained": heldout_eval(
                trained, tokenizer, heldout.text, ctx=cfg.eval_ctx, eval_tokens=cfg.test_eval_tokens
            ),
            "untrained": heldout_eval(
                untrained,
                tokenizer,
                heldout.text,
                ctx=cfg.eval_ctx,
                eval_tokens=cfg.test_eval_tokens,
            ),
        },
    }


def _stage(cfg: DemoConfig, command: str, training: dict, init_from: str | None) -> dict:
    """One training stage as the card lists it."""
    keys = ("steps", "lr", "min_lr", "warmup_steps", "batch_size", "seed", "threads")
    return {
        "command": command,
        "init_from": init_from,
        "line_aligned": cfg.line_aligned,
        **{k: getattr(cfg, k) for k in keys},
        "training": training,
    }


def _previous_stages(previous: dict) -> list[dict]:
    """Stages of the run a model was initialised from (older runs list none)."""
    if "stages" in previous:
        return previous["stages"]
    cfg = DemoConfig(**{**previous["config"], "line_aligned": False})
    return [_stage(cfg, previous["command"], previous["training"], None)]


def _start(
    cfg: DemoConfig, init_from: Path | None, train_text: str
) -> tuple[PreTrainedTokenizerFast, LlamaForCausalLM, list[dict], int]:
    """Tokenizer, model, earlier stages and the seed of the first init."""
    if init_from is None:
        tokenizer = train_tokenizer(train_text, cfg.vocab_size)
        return tokenizer, build_model(cfg, tokenizer), [], cfg.seed
    tokenizer = PreTrainedTokenizerFast.from_pretrained(init_from)
    model = LlamaForCausalLM.from_pretrained(init_from, dtype=torch.float32)
    stages = _previous_stages(json.loads((init_from / "training_run.json").read_text()))
    return tokenizer, model, stages, stages[0]["seed"]


def run(
    cfg: DemoConfig,
    out: Path,
    max_seconds: float | None,
    command: str,
    init_from: Path | None = None,
) -> dict:
    """The whole recipe: tokenizer, model, training, evaluation, files in ``out``.

    With ``init_from`` (a folder this script wrote) training continues from that
    model and tokenizer: a further stage with its own warm-up and cosine schedule.
    """
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    train_set = get_text_set("stdlib-code")
    tokenizer, model, stages, init_seed = _start(cfg, init_from, train_set.text)
    tokens = encode(tokenizer, train_set.text)
    logger.info("tokenizer: %d ids, %d training tokens", len(tokenizer), len(tokens))
    untrained = build_model(replace(cfg, seed=init_seed), tokenizer).eval()
    line_starts = line_start_mask(tokenizer, tokens) if cfg.line_aligned else None
    training = train(model, tokens, cfg, max_seconds, line_starts)
    stages = [*stages, _stage(cfg, command, training, init_from and str(init_from))]
    sample_new_tokens = 64
    report = {
        "config": asdict(cfg),
        "command": command,
        "training": training,
        "stages": stages,
        "n_params": count_parameters(model),
        "vocab_size": len(tokenizer),
        "special_token_id": tokenizer.eos_token_id,
        "train_bytes": train_set.n_bytes,
        "train_sha256": train_set.sha256,
        "train_tokens": len(tokens),
        "heldout_bytes": get_text_set("stdlib-heldout").n_bytes,
        "eval": evaluate_both(model, untrained, tokenizer, cfg),
        "sample": greedy_sample(model, tokenizer, GENERATION_PROMPT, sample_new_tokens),
        "sample_new_tokens": sample_new_tokens,
        **_versions(),
    }
    report["eval"]["training_steps"] = sum(st["training"]["steps"] for st in stages)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    save(out, model, tokenizer, report)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help="output folder")
    p.add_argument("--steps", type=int, default=DemoConfig.steps, help="optimizer steps")
    p.add_argument(
        "--minutes", type=float, default=None, help="stop training early after M minutes"
    )
    p.add_argument("--seed", type=int, default=DemoConfig.seed, help="init and data-order seed")
    p.add_argument("--threads", type=int, default=DemoConfig.threads, help="torch threads")
    p.add_argument("--lr", type=float, default=DemoConfig.lr, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=DemoConfig.min_lr, help="final learning rate")
    p.add_argument("--warmup", type=int, default=DemoConfig.warmup_steps, help="warm-up steps")
    p.add_argument(
        "--line-aligned", action="store_true", help="start training windows at line starts"
    )
    p.add_argument(
        "--init-from", type=Path, default=None, help="continue training a model this script saved"
    )
    p.add_argument(
        "--card-only", action="store_true", help="rewrite README.md from training_run.json"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.card_only:
        report = json.loads((args.out / "training_run.json").read_text())
        (args.out / "README.md").write_text(model_card(report))
        return 0
    cfg = DemoConfig(
        steps=args.steps,
        seed=args.seed,
        threads=args.threads,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_steps=args.warmup,
        line_aligned=args.line_aligned,
    )
    command = "python -m core.zoo.train_demo " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    max_seconds = None if args.minutes is None else args.minutes * 60
    report = run(cfg, args.out, max_seconds, command.strip(), args.init_from)
    ev = report["eval"]
    print(f"steps {report['training']['steps']}, {report['total_seconds'] / 60:.1f} min")
    for which in ("trained", "untrained"):
        print(f"{which}: ppl {ev[which]['perplexity']:.2f}, bpb {ev[which]['bits_per_byte']:.4f}")
    print(report["sample"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
