"""The latency side of the budget search: each layer x candidate's op time at a target
shape, and the whole model's time, measured on this machine.

A layer's time is its stored module's forward (the very op a run calls: the
``compresslab::`` kernels of core/kernels/ops.py for integer formats, ``F.linear`` in
16 bits for the keep-16-bit candidate) on an input of ``m`` tokens (m = 1: a decode
step's linear; m = 512: a prefill's). What is timed depends on the layer's shape and its
stored format, not on its weights' values, so one representative layer per (in, out,
bias, dtype) is compressed by each candidate (on random calibration tokens: the format
is what matters) and timed; the other layers of that shape take its time. Per shape the
candidates are timed in interleaved rounds (A B C, C B A, ...) after warm-up; each sample
repeats the call until it lasts ``min_sample_s``; the median of the rounds is kept.

Times are cached in the data folder, one file per machine (CPU model, flags, cores,
torch version, threads, device): a search on the same machine reuses them. The caveats a
sum of such times carries: each layer is timed alone with its weights warm in cache,
and the sum leaves out attention, norms, rotary, embeddings, lm_head and the framework's
own overhead (see :func:`model_seconds`, which times the whole model at the same shape).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.kernels import tune
from core.paths import data_dir, write_json_atomic
from core.recipe import recipe_from_steps
from core.walk import apply_recipe, find_linears, get_submodule
from runs import catalogue as cat
from runs.latency import decode_step_seconds, interleaved, machine_load, prefill_seconds
from runs.search import Candidate

CACHE_VERSION = 1  # bumped when what is timed changes: older caches are ignored
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class LatencySettings:
    """How the layers are timed."""

    m: int = 1  # tokens per call: 1 = a decode step's linears, e.g. 512 = a prefill's
    repeats: int = 5  # interleaved timed rounds (the median is kept)
    warmup: int = 1  # rounds run and discarded first (caches, first calls, tuning)
    min_sample_s: float = 2e-3  # a sample repeats the call until it lasts this long

    def __post_init__(self) -> None:
        if not 1 <= self.m <= 8192:
            raise ValueError(f"latency m={self.m} is out of range: 1..8192 tokens")
        if not 1 <= self.repeats <= 50:
            raise ValueError(f"repeats={self.repeats} is out of range: 1..50")
        if not 0 <= self.warmup <= 10:
            raise ValueError(f"warmup={self.warmup} is out of range: 0..10")
        if not 0 < self.min_sample_s <= 1:
            raise ValueError(f"min_sample_s={self.min_sample_s} must be in (0, 1] seconds")


def machine_key(device: torch.device) -> dict[str, Any]:
    """What a cached time is valid for."""
    key = {**tune.machine_key(), "threads": torch.get_num_threads(), "device": device.type}
    if device.type == "cuda":
        key["gpu"] = torch.cuda.get_device_name(device)
    return key


def cache_file(key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return data_dir() / "search" / f"layer_times_{digest}.json"


def load_cache(key: Mapping[str, Any]) -> dict[str, float]:
    """Cached seconds by entry key ({} when none, unreadable, or another machine's)."""
    try:
        data = json.loads(cache_file(key).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if data.get("key") != dict(key) or data.get("version") != CACHE_VERSION:
        return {}
    return {k: float(v) for k, v in (data.get("seconds") or {}).items()}


def save_cache(key: Mapping[str, Any], seconds: Mapping[str, float]) -> None:
    """Merge ``seconds`` into the machine's cache, atomically (temporary file, rename)."""
    data = {"key": dict(key), "version": CACHE_VERSION, "seconds": {**load_cache(key), **seconds}}
    write_json_atomic(cache_file(key), data)


Shape = tuple[int, int, bool, str]  # in_features, out_features, has bias, dtype


def shape_of(layer: nn.Module) -> Shape:
    w = layer.weight
    return int(w.shape[1]), int(w.shape[0]), layer.bias is not None, str(w.dtype)


def entry_key(cand: Candidate, shape: Shape, m: int) -> str:
    """The cache key of one candidate's time on one shape at ``m`` tokens."""
    return json.dumps([list(cand.steps), list(shape), m], sort_keys=True)


def shapes(model: nn.Module, layers: Sequence[str]) -> dict[Shape, list[str]]:
    """The searched layers grouped by shape (the first of each group is timed)."""
    linears = find_linears(model)
    out: dict[Shape, list[str]] = {}
    for name in layers:
        out.setdefault(shape_of(linears[name]), []).append(name)
    return out


def timing_batches(model: nn.Module, n: int = 2, t: int = 32) -> list[torch.Tensor]:
    """Random token ids to calibrate the representatives (only their format is used)."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (1, t), generator=gen) for _ in range(n)]


def compressed_layers(model: nn.Module, reps: Sequence[str], cand: Candidate) -> dict:
    """``reps`` as ``cand`` stores them (a copy of the model, compressed on those layers)."""
    work = copy.deepcopy(model)
    steps = [{**s, "targets": list(reps), "ignore": []} for s in cand.steps]
    apply_recipe(
        work,
        recipe_from_steps(steps),
        on_progress=lambda f, msg: None,
        should_cancel=lambda: False,
        calib_batches=timing_batches(model),
    )
    return {r: get_submodule(work, r) for r in reps}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _per_call(mod: nn.Module, x: torch.Tensor, calls: int) -> float:
    _sync(x.device)
    t0 = time.perf_counter()
    for _ in range(calls):
        mod(x)
    _sync(x.device)
    return (time.perf_counter() - t0) / calls


def time_modules(mods: Mapping[str, nn.Module], x: torch.Tensor, s: LatencySettings) -> dict:
    """Median seconds per call of each module on ``x``, in interleaved rounds."""
    calls = {}
    for name, mod in mods.items():
        _per_call(mod, x, 1)  # first call: kernel choice, allocation
        one = max(_per_call(mod, x, 1), 1e-7)
        calls[name] = max(1, min(10_000, math.ceil(s.min_sample_s / one)))
    rounds = interleaved(lambda n: _per_call(mods[n], x, calls[n]), list(mods), s.repeats, s.warmup)
    return {name: statistics.median(v) for name, v in rounds.items()}


def _time_shape(model: nn.Module, rep: str, mods: Mapping[str, nn.Module], s: LatencySettings):
    layer = find_linears(model)[rep]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, s.m, layer.in_features, generator=gen, dtype=layer.weight.dtype)
    return time_modules(mods, x.to(layer.weight.device), s)


AS_LOADED = Candidate("as loaded", ())  # the float linear as the model holds it (reference)


def _build(model: nn.Module, reps: Sequence[str], cand: Candidate) -> dict[str, nn.Module]:
    if cand is AS_LOADED:
        linears = find_linears(model)
        return {r: linears[r] for r in reps}
    return compressed_layers(model, reps, cand)


def _measure(
    model: nn.Module,
    groups: Mapping[Shape, list[str]],
    todo: Sequence[Candidate],
    s: LatencySettings,
    on_progress: Progress,
) -> dict[str, float]:
    """Time ``todo`` on one representative per shape; seconds by cache entry key."""
    reps = [names[0] for names in groups.values()]
    built = {}
    for i, cand in enumerate(todo):
        built[cand.name] = _build(model, reps, cand)
        on_progress(0.5 * (i + 1) / max(1, len(todo)), f"compressed {cand.name} for timing")
    by_name = {c.name: c for c in todo}
    fresh: dict[str, float] = {}
    for j, (shape, names) in enumerate(groups.items()):
        mods = {c: built[c][names[0]] for c in built}
        for c, secs in (_time_shape(model, names[0], mods, s) if mods else {}).items():
            fresh[entry_key(by_name[c], shape, s.m)] = secs
        on_progress(0.5 + 0.5 * (j + 1) / len(groups), f"timed {len(names)} layers of {shape}")
    return fresh


def layer_seconds(
    model: nn.Module,
    layers: Sequence[str],
    candidates: Sequence[Candidate],
    s: LatencySettings,
    *,
    use_cache: bool = True,
    on_progress: Progress = lambda f, msg: None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """(seconds[layer][candidate] at ``s.m`` tokens, how they were measured: settings,
    machine, load, counts, and ``as_loaded_ms``, the float layers' summed time, timed in
    the same interleaved rounds as a reference)."""
    key = machine_key(next(model.parameters()).device)
    cached = load_cache(key) if use_cache else {}
    groups = shapes(model, layers)
    everyone = [AS_LOADED, *candidates]
    todo = [c for c in everyone if any(entry_key(c, sh, s.m) not in cached for sh in groups)]
    load = machine_load()
    fresh = _measure(model, groups, todo, s, on_progress)
    if fresh:
        save_cache(key, fresh)
    found = {**cached, **fresh}
    seconds = {
        la: {c.name: found[entry_key(c, sh, s.m)] for c in candidates}
        for sh, names in groups.items()
        for la in names
    }
    loaded = sum(found[entry_key(AS_LOADED, sh, s.m)] * len(n) for sh, n in groups.items())
    facts = {k: v for k, v in key.items() if k != "flags"}  # the flags stay in the cache key
    n_all = len(groups) * len(everyone)
    how = {**asdict(s), **facts, "measured": len(fresh), "cached": n_all - len(fresh)}
    how |= {"as_loaded_ms": 1e3 * loaded}
    return seconds, how | {cat.LOAD_BEFORE.key: load, cat.LOAD_AFTER.key: machine_load()}


def cached_seconds(
    model: nn.Module, layers: Sequence[str], candidates: Sequence[Candidate], m: int
) -> dict[str, dict[str, float]] | None:
    """This machine's cached times of every layer x candidate at ``m`` tokens (CPU), or
    None when one is missing; ``model`` may be a meta-device skeleton (shapes only)."""
    found = load_cache(machine_key(torch.device("cpu")))
    try:
        return {
            la: {c.name: found[entry_key(c, sh, m)] for c in candidates}
            for sh, names in shapes(model, layers).items()
            for la in names
        }
    except KeyError:
        return None


def prompt_ids(model: nn.Module, m: int) -> torch.Tensor:
    """``m`` random token ids (batch 1) for timing the whole model."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (1, m), generator=gen)


def model_seconds(
    models: Mapping[str, nn.Module], s: LatencySettings, context: int = 128
) -> dict[str, float]:
    """Median seconds of each whole model at the search's shape, in interleaved rounds:
    a forward over ``m`` tokens (m > 1, a prefill), or one greedy decode step after a
    prompt of ``context`` tokens (m = 1). What the layers' sum leaves out is the rest."""

    def one(name: str) -> float:
        model = models[name]
        device = next(model.parameters()).device
        if s.m > 1:
            return prefill_seconds(model, prompt_ids(model, s.m).to(device))
        return decode_step_seconds(model, prompt_ids(model, context).to(device), steps=4)

    rounds = interleaved(one, list(models), s.repeats, max(1, s.warmup))
    return {name: statistics.median(v) for name, v in rounds.items()}
