"""Which mode a run takes, and its peak memory, before it is queued.

Two modes (core/onload.py):

* ``in memory``: the whole float32 model is loaded on the device; the peak is the
  weights, plus calibration (:func:`core.estimate.estimate_memory`), plus one forward's
  activations over a stacked calibration batch.
* ``onloaded``: the decoder blocks stay in safetensors files and come onto the device one
  at a time; the peak is what lives outside the blocks (embeddings, head, final norm),
  one float block and its compressed copy, calibration and the activations.

A device budget (``--max-device-memory`` of a worker, or a job's own) picks the mode: in
memory if that peak fits, else onloaded if that one fits, else the run is refused with
both figures. The host holds the same when the model is loaded lazily (on the CPU the
device is the host). Every figure is an estimate; the run records the peak it reached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from core.calib import CalibSettings
from core.estimate import FLOAT32, estimate_memory
from core.models import LoadedModel, content_hash, load_model, model_folder, model_skeleton
from core.recipe import Recipe
from core.storage import tensor_bytes
from core.walk import CALIB_BATCH_TOKENS, find_blocks, find_linears

IN_MEMORY, ONLOADED = "in memory", "onloaded"
# Working memory of one block forward beyond the tensors counted: the MLP's three
# intermediate tensors and the attention scores (eager attention, float32).
MLP_TENSORS = 3


@dataclass(frozen=True)
class ModePeaks:
    """Estimated peak device bytes of each mode, and the mode a budget picks."""

    in_memory: int
    onloaded: int
    outside_blocks: int  # embeddings, head, final norm: resident in both modes
    block: int  # the largest decoder block (float32)
    budget: int | None = None

    @property
    def mode(self) -> str | None:
        """The mode that runs: in memory when it fits (or no budget), else onloaded when it
        fits, else None (refused)."""
        if self.budget is None or self.in_memory <= self.budget:
            return IN_MEMORY
        return ONLOADED if self.onloaded <= self.budget else None

    @property
    def peak(self) -> int | None:
        """The estimated peak of the mode that runs (None when refused)."""
        mode = self.mode
        return None if mode is None else self.in_memory if mode == IN_MEMORY else self.onloaded

    def refusal(self) -> str:
        """Why the budget is too small (empty when a mode fits)."""
        if self.mode is not None:
            return ""
        return (
            f"device budget {fmt(self.budget or 0)} is too small: in memory needs about "
            f"{fmt(self.in_memory)}, one block at a time about {fmt(self.onloaded)} "
            f"({fmt(self.outside_blocks)} outside the blocks + {fmt(self.block)} per block)"
        )


def fmt(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def activation_bytes(model: nn.Module, calib: CalibSettings, *, stacked: bool = True) -> int:
    """One block forward's working memory over a stacked calibration batch (in memory),
    or over one window (``stacked=False``: onloaded runs take one window per forward)."""
    _, blocks = find_blocks(model)
    widest = max((m.out_features for m in find_linears(blocks[0]).values()), default=0)
    batch = CALIB_BATCH_TOKENS if stacked else 0
    tokens = min(calib.n_samples * calib.seq_len, max(batch, calib.seq_len))
    heads = getattr(getattr(model, "config", None), "num_attention_heads", 1) or 1
    scores = tokens * min(calib.seq_len, tokens) * heads * FLOAT32
    return MLP_TENSORS * tokens * widest * FLOAT32 + scores


def mode_peaks(
    model: nn.Module, recipe: Recipe, calib: CalibSettings, budget: int | None = None
) -> ModePeaks:
    """Estimated peaks of both modes for ``model`` (meta device is fine)."""
    est = estimate_memory(model, recipe, calib)
    path, blocks = find_blocks(model)
    block = max(sum(tensor_bytes(p) for p in b.parameters()) for b in blocks)
    outside = est.weight_bytes - sum(tensor_bytes(p) for b in blocks for p in b.parameters())
    work = est.block_io_bytes + est.layer_stats_bytes + est.error_rows_bytes
    acts = activation_bytes(model, calib) if recipe.steps else 0
    one_window = activation_bytes(model, calib, stacked=False) if recipe.steps else 0
    in_memory = est.weight_bytes + work + acts
    onloaded = outside + 2 * block + work + one_window  # float block + compressed copy
    return ModePeaks(in_memory, onloaded, outside, block, budget)


UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """'512MiB', '6GB', '8g', '1073741824' -> bytes (binary units; ValueError if not)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.strip().lower())
    if not m:
        raise ValueError(f"{text!r} is not a memory size (e.g. 512MiB, 6GiB, 8g)")
    value = float(m.group(1)) * UNITS[m.group(2)]
    if value < 2**16:
        raise ValueError(f"{text!r}: a device budget under 64 KiB cannot hold a block")
    return int(value)


# Hub presets from 0.5 B to 8 B: their published configs (config.json), kept here so the
# estimate needs no network. model_type picks the transformers config class.
BIG_PRESETS: dict[str, dict] = {
    "Qwen/Qwen2.5-0.5B": dict(
        model_type="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "Qwen/Qwen2.5-1.5B": dict(
        model_type="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "meta-llama/Llama-3.2-3B": dict(
        model_type="llama",
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "Qwen/Qwen2.5-7B": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "meta-llama/Llama-3.1-8B": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
}


def preset_skeleton(model_id: str) -> nn.Module:
    """The preset's model on the meta device, from the config stored above."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(BIG_PRESETS[model_id])
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def preset_rows(recipe: Recipe, calib: CalibSettings) -> list[dict[str, object]]:
    """Per preset: parameters and the estimated peak of each mode, for New run."""
    rows = []
    for model_id in BIG_PRESETS:
        meta = preset_skeleton(model_id)
        peaks = mode_peaks(meta, recipe, calib)
        rows.append(
            {
                "model": model_id,
                "params (B)": round(sum(p.numel() for p in meta.parameters()) / 1e9, 2),
                "in memory": fmt(peaks.in_memory),
                "one block at a time": fmt(peaks.onloaded),
            }
        )
    return rows


BUDGET_ENV = "COMPRESSLAB_MAX_DEVICE_MEMORY"  # a worker's --max-device-memory


def device_budget(job_budget: str = "") -> int | None:
    """The tighter of a job's own budget and its worker's (``BUDGET_ENV``), in bytes;
    None when neither is set. ValueError for a size that cannot be read."""
    import os

    sizes = [parse_bytes(v) for v in (job_budget, os.environ.get(BUDGET_ENV, "")) if v.strip()]
    return min(sizes) if sizes else None


def plan(spec: str, recipe: Recipe, calib: CalibSettings, budget: int | None) -> ModePeaks:
    """Both modes' peaks for model ``spec`` (read from its config, nothing loaded) and the
    mode ``budget`` picks; ModelLoadError when neither fits."""
    from core.errors import ModelLoadError

    peaks = mode_peaks(model_skeleton(spec), recipe, calib, budget)
    if peaks.mode is None:
        raise ModelLoadError(peaks.refusal())
    return peaks


def load_in_mode(spec: str, mode: str, device: torch.device) -> LoadedModel:
    """``spec`` loaded in memory, or onloaded (its blocks left in its safetensors files)."""
    from core.onload import load_onloaded

    if mode == IN_MEMORY:
        return load_model(spec, device=device)
    from transformers import AutoTokenizer

    folder = model_folder(spec)
    model = load_onloaded(folder, device=device)
    return LoadedModel(
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(folder),
        model_id=spec.strip(),
        revision=content_hash(folder),
        n_params=sum(p.numel() for p in model.parameters()),
        note="onloaded: one decoder block on the device at a time",
    )
