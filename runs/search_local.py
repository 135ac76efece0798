"""The search's scores measured in one process (the fast path of ``python -m workers
search --here``): one compression per candidate instead of one job per layer.

For each candidate the whole set of searched layers is compressed once (an ordinary
recipe through ``core.walk.apply_recipe``, calibrated block by block as a run does);
then each compressed layer alone is swapped into the float model and the model is
evaluated against the baseline's log-probs, with the definitions and settings of a
run (``core.metrics.evaluate``, the same windows, calibration batches and seed). The
difference from a sensitivity job: a calibrated method saw the inputs of the already
compressed blocks before it (as in the full recipe), not the float ones.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from core.calib import CalibSettings, calibration_batches
from core.data import get_text_set
from core.metrics import EvalSettings, eval_windows, evaluate
from core.models import LoadedModel, load_model
from core.recipe import recipe_from_steps
from core.storage import storage_info
from core.walk import apply_recipe, find_linears, get_submodule, replace_module
from runs import catalogue as cat
from runs.search import Candidate, ScoreTable

Progress = Callable[[float, str], None]


@dataclass
class Bench:
    """A loaded float model with its evaluation windows, baseline log-probs and
    calibration batches (what every measurement of one search shares)."""

    loaded: LoadedModel
    windows: list[torch.Tensor]
    base: np.ndarray  # (windows, ctx - 1, vocab) float16 log-probs of the float model
    batches: list[torch.Tensor]
    seed: int

    @property
    def model(self) -> nn.Module:
        return self.loaded.model


def prepare(
    model: str,
    eval_set: str,
    calib: str,
    ev: EvalSettings,
    cs: CalibSettings,
) -> Bench:
    loaded = load_model(model)
    tok = loaded.tokenizer
    windows = eval_windows(tok, get_text_set(eval_set).text, ev)
    vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
    base = np.zeros((len(windows), max(len(w) for w in windows) - 1, vocab), np.float16)
    with torch.no_grad():
        evaluate(loaded.model, tok, windows, record=base)
    batches = calibration_batches(tok, get_text_set(calib).text, cs)
    return Bench(loaded, windows, base, batches, cs.seed)


@torch.no_grad()
def kl_of(bench: Bench, model: nn.Module) -> float:
    """KL to the baseline (nats per token) of ``model`` on the bench's windows."""
    return float(
        evaluate(model, bench.loaded.tokenizer, bench.windows, baseline=bench.base).kl_to_baseline
    )


def compressed_copy(bench: Bench, steps: list[dict[str, Any]]) -> tuple[nn.Module, float]:
    """A copy of the float model compressed by ``steps``, and the seconds it took."""
    model = copy.deepcopy(bench.model)
    torch.manual_seed(bench.seed)
    t0 = time.perf_counter()
    apply_recipe(
        model,
        recipe_from_steps(steps),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=bench.batches,
    )
    return model, time.perf_counter() - t0


def linear_bytes(model: nn.Module, layers: Sequence[str]) -> tuple[int, int]:
    """(stored bytes, weights) of ``layers`` as the model now holds them."""
    mods = find_linears(model)
    infos = [storage_info(mods[n]) for n in layers]
    return sum(i.weight_bytes for i in infos), sum(i.n_weights for i in infos)


@torch.no_grad()
def score_candidate(
    bench: Bench, table: ScoreTable, cand: Candidate, on_progress: Progress
) -> dict[str, float]:
    """Fill ``table``'s column of ``cand``; returns what the uniform recipe (``cand`` on
    every searched layer, compressed once for the scores anyway) measures as a whole."""
    steps = [{**s, "targets": list(table.layers), "ignore": []} for s in cand.steps]
    compressed, seconds = compressed_copy(bench, steps)
    nbytes, n = linear_bytes(compressed, table.layers)
    whole = {
        cat.KL_TO_BASELINE.key: kl_of(bench, compressed),
        cat.WEIGHT_BYTES.key: nbytes,
        cat.LINEAR_WEIGHTS.key: n,
        cat.COMPRESS_S.key: seconds,
    }
    for i, name in enumerate(table.layers):
        new = get_submodule(compressed, name)
        old = get_submodule(bench.model, name)
        assert new is not None and old is not None
        replace_module(bench.model, name, new)
        try:
            kl = kl_of(bench, bench.model)
        finally:
            replace_module(bench.model, name, old)
        info = storage_info(new)
        table.set(name, cand.name, kl, info.weight_bytes, info.n_weights)
        on_progress((i + 1) / len(table.layers), f"{cand.name}: {name}")
    return whole


def measure_recipe(bench: Bench, steps: list[dict[str, Any]], layers: Sequence[str]) -> dict:
    """KL, stored bytes of ``layers`` and compression seconds of a whole recipe."""
    model, seconds = compressed_copy(bench, steps)
    nbytes, n = linear_bytes(model, layers)
    return {
        cat.KL_TO_BASELINE.key: kl_of(bench, model),
        cat.WEIGHT_BYTES.key: nbytes,
        cat.LINEAR_WEIGHTS.key: n,
        cat.COMPRESS_S.key: seconds,
    }
