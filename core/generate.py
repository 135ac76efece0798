"""Greedy continuations of a few prompts: what a model writes, to read side by side.

Each prompt is continued by exactly ``max_new_tokens`` tokens, always taking the most
likely next token (ties to the lowest id: ``argmax``), with the model's KV cache, so
the same model and prompt always give the same tokens; the seed is set anyway and
recorded. Each continuation keeps its token ids and the text each token adds, so two
continuations can be compared token by token (:func:`first_difference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from core.registry import ConfigError

MAX_PROMPTS = 8  # prompts per run
MAX_PROMPT_CHARS = 400  # characters per prompt
GEN_TOKENS = 32  # tokens generated per prompt
GEN_SEED = 0  # torch seed set before generating (greedy decoding uses no randomness)

# Default prompts: the demo model writes Python (stdlib-style code openings).
DEMO_PROMPTS: tuple[str, ...] = (
    "def read_config(path):\n",
    "class Stack:\n    def __init__(self):\n",
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "    for i, line in enumerate(lines):\n",
)
TEXT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time,",
    "The three primary colors are",
)


@dataclass(frozen=True)
class Continuation:
    """One prompt's greedy continuation."""

    prompt: str
    ids: list[int]  # generated token ids, in order
    pieces: list[str]  # the text each generated token adds
    text: str  # the decoded continuation (may differ from "".join(pieces) at byte seams)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Continuation:
        return cls(
            str(d.get("prompt", "")),
            [int(i) for i in d.get("ids") or []],
            [str(p) for p in d.get("pieces") or []],
            str(d.get("text", "")),
        )


def default_prompts(model_id: str) -> tuple[str, ...]:
    """The prompt set of a model when the user gave none."""
    return DEMO_PROMPTS if model_id in ("demo", "tiny-random") else TEXT_PROMPTS


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts as given (blank ones dropped); ConfigError when there are more than
    MAX_PROMPTS, one is longer than MAX_PROMPT_CHARS, or one is not text."""
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ConfigError(f"prompt {i + 1} must be text")
        if len(p) > MAX_PROMPT_CHARS:
            raise ConfigError(
                f"prompt {i + 1} has {len(p)} characters; at most {MAX_PROMPT_CHARS} are allowed"
            )
        if p.strip():
            out.append(p)
    if len(out) > MAX_PROMPTS:
        raise ConfigError(f"at most {MAX_PROMPTS} prompts (got {len(out)})")
    return out


def pieces_of(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each token adds: decode of the first k+1 tokens minus that of the first k."""
    pieces, prev = [], ""
    for k in range(len(ids)):
        now = tokenizer.decode(list(ids[: k + 1]))
        pieces.append(now[len(prev) :] if now.startswith(prev) else now)
        prev = now
    return pieces


def _max_positions(model: nn.Module) -> int | None:
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) else None


@torch.no_grad()
def greedy_ids(model: nn.Module, prompt_ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """``max_new_tokens`` greedy token ids after ``prompt_ids`` (1-D), with a KV cache."""
    out = model(input_ids=prompt_ids[None], use_cache=True)
    ids: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(out.logits[0, -1].argmax())
        ids.append(nxt)
        if len(ids) == max_new_tokens:
            break
        step = torch.tensor([[nxt]], device=prompt_ids.device)
        out = model(input_ids=step, past_key_values=out.past_key_values, use_cache=True)
    return ids


def continuations(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = GEN_TOKENS,
    seed: int = GEN_SEED,
) -> list[Continuation]:
    """Greedy continuations of ``prompts`` (the prompt's start is cut when prompt plus
    continuation would not fit the model's positions)."""
    if not 1 <= max_new_tokens <= 512:
        raise ConfigError(f"max_new_tokens must be in [1, 512] (got {max_new_tokens})")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    limit = _max_positions(model)
    model.eval()
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [0]
        if limit is not None:
            ids = ids[-max(1, limit - max_new_tokens) :]
        new = greedy_ids(model, torch.tensor(ids, device=device), max_new_tokens)
        out.append(Continuation(prompt, new, pieces_of(tokenizer, new), tokenizer.decode(new)))
    return out


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first token where two continuations differ (None if identical)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
