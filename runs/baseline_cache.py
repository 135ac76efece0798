"""The uncompressed model's side of a job: its log-probs on the evaluation windows,
cached on disk per (model, revision, evaluation set, ctx, eval_tokens) and reused by
later jobs, and its weight statistics before compression."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.calib import DEFAULT_PROTOCOL
from core.data import TextSet
from core.metrics import EvalSettings, LogprobStore, evaluate
from core.models import LoadedModel
from core.onload import each_linear
from core.stats import layer_weight, weight_stats
from runs import catalogue as cat
from runs.progress import Progress


def baseline_key(
    loaded: LoadedModel,
    eval_text: TextSet,
    settings: EvalSettings,
    protocol: str = DEFAULT_PROTOCOL,
) -> str:
    raw = f"{loaded.model_id}|{loaded.revision}|{eval_text.sha256}|{settings.ctx}|{settings.eval_tokens}"
    if protocol != DEFAULT_PROTOCOL:  # other windows; default keys stay as they were
        raw += f"|{protocol}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def _vocab_size(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def logprob_store(
    cache_dir: Path,
    loaded: LoadedModel,
    eval_text: TextSet,
    settings: EvalSettings,
    n_windows: int,
    protocol: str = DEFAULT_PROTOCOL,
) -> LogprobStore:
    """Where the baseline's log-probs for these windows live (maybe not computed yet)."""
    return LogprobStore(
        cache_dir / f"{baseline_key(loaded, eval_text, settings, protocol)}.f16",
        n_windows,
        settings.ctx,
        _vocab_size(loaded.model),
    )


def ensure_baseline(
    loaded: LoadedModel,
    windows: list[torch.Tensor],
    store: LogprobStore,
    should_cancel: Callable[[], bool],
    on_progress: Progress,
) -> dict[str, Any]:
    """The baseline's perplexity and bits per byte; its log-probs computed once, by one
    process at a time (the others wait on the store's lock, then read the result)."""
    if store.exists():
        return store.summary()
    on_progress(0.0, "baseline: waiting for its cache lock")
    with store.locked(should_cancel):
        if store.exists():  # computed by the process that held the lock before us
            return store.summary()
        mm = store.writer()
        try:
            res = evaluate(
                loaded.model,
                loaded.tokenizer,
                windows,
                record=mm,
                should_cancel=should_cancel,
                on_progress=lambda f, m: on_progress(f, f"baseline: {m}"),
            )
        except BaseException:
            del mm
            store.discard()
            raise
        summary = {cat.PERPLEXITY.key: res.perplexity, cat.BITS_PER_BYTE.key: res.bits_per_byte}
        store.commit(mm, summary)
    return summary


def stats_before(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Weight statistics of every linear of the uncompressed model."""
    return {n: weight_stats(layer_weight(m)).to_dict() for n, m in each_linear(model)}
