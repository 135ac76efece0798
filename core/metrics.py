"""Measurements (their definitions, as the UI shows them, are in runs.catalogue).

Perplexity is token level, exp(mean NLL) over non-overlapping windows of ``ctx``
tokens (stride = ctx); the first token of each window is context only. Bits per byte
is the total NLL in bits over the UTF-8 bytes of the predicted tokens' text.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.calib import DEFAULT_PROTOCOL, REFERENCE_PROTOCOL, check_protocol
from core.errors import Cancelled
from core.paths import temp_path
from core.storage import CompressedLinear, module_storage_bytes

MAX_EVAL_TOKENS = 2**19  # 524288: a full WikiText-2 test split fits (about 300k tokens)
# (field, lowest, highest) of EvalSettings; the baseline cache is windows x ctx x vocab x 2
# bytes, so eval_tokens is also checked against the disk before a job computes it.
_EVAL_BOUNDS: tuple[tuple[str, int, int], ...] = (
    ("ctx", 16, 8192),
    ("eval_tokens", 16, MAX_EVAL_TOKENS),
    ("prompt_len", 1, 8192),
    ("decode_tokens", 0, 1024),
    ("repeats", 1, 100),
)


def baseline_cache_bytes(n_windows: int, ctx: int, vocab: int) -> int:
    """Bytes of a baseline log-prob cache: float16 (2 bytes) per window, predicted
    position (ctx - 1) and vocabulary entry."""
    return n_windows * (ctx - 1) * vocab * 2


@dataclass(frozen=True)
class EvalSettings:
    ctx: int = 256  # tokens per evaluation window (stride = ctx: non-overlapping)
    eval_tokens: int = 4096  # evaluation tokens taken from the start of the set
    prompt_len: int = 128  # prompt tokens for the prefill latency
    decode_tokens: int = 16  # decode steps timed
    repeats: int = 5  # latency repeats after one warm-up (median reported)

    def __post_init__(self) -> None:
        for name, low, high in _EVAL_BOUNDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number in {low}..{high}, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name}={value} is out of range: {low}..{high}")
        if self.eval_tokens < self.ctx:
            raise ValueError(
                f"eval_tokens={self.eval_tokens} must be in ctx..{MAX_EVAL_TOKENS} (ctx={self.ctx})"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def eval_windows(
    tokenizer, text: str, settings: EvalSettings, protocol: str = DEFAULT_PROTOCOL
) -> list[torch.Tensor]:
    """Token windows (each (ctx,)) from the first eval_tokens tokens.

    ``default``: no special tokens; the last window may be shorter. ``reference`` (as
    IST-DASLab/gptq and locuslab/wanda evaluate): the text tokenized as the model's
    tokenizer does by default (BOS first where it adds one), whole windows only (a text
    shorter than one window gives that one shorter window)."""
    reference = check_protocol(protocol) == REFERENCE_PROTOCOL
    ids = _first_tokens(tokenizer, text, settings.eval_tokens, special=reference)
    if ids.numel() < 2:
        raise ValueError("the evaluation text has fewer than 2 tokens")
    wins = [ids[i : i + settings.ctx] for i in range(0, ids.numel(), settings.ctx)]
    if reference and len(wins) > 1 and wins[-1].numel() < settings.ctx:
        wins = wins[:-1]
    return [w for w in wins if w.numel() >= 2]


def _first_tokens(tokenizer, text: str, n: int, special: bool = False) -> torch.Tensor:
    """The first ``n`` tokens of ``text``, tokenizing a growing prefix rather than all of it;
    ``special``: with the special tokens the tokenizer adds by default (BOS).

    The prefix is cut with a margin, so the first ``n`` tokens are those of the full text.
    """
    chars = n * 8
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=special, return_tensors="pt").input_ids[0]
        if ids.numel() > n + 64 or chars >= len(text):
            return ids[:n]
        chars *= 2


def _bytes_of(tokenizer, ids: torch.Tensor) -> int:
    return len(tokenizer.decode(ids.tolist()).encode("utf-8"))


@dataclass
class EvalResult:
    perplexity: float
    bits_per_byte: float
    nll_sum: float  # nats
    n_tokens: int
    n_bytes: int
    kl_to_baseline: float | None = None
    top1_agreement: float | None = None


class LogprobStore:
    """Baseline next-token log-probabilities for KL, one float16 memmap per key on disk.

    Written under a unique temporary name and published with ``os.replace`` (the data,
    then its summary: ``exists`` needs both), so a reader never sees a partial file.
    ``locked`` (an fcntl lock file beside it) lets one process compute a key while the
    others wait and then read its result; temporary files a killed writer left behind
    are removed by the next holder of the lock."""

    def __init__(self, path: Path, n_windows: int, ctx: int, vocab: int) -> None:
        self.path, self.shape = path, (n_windows, ctx - 1, vocab)
        self._tmp: Path | None = None

    def exists(self) -> bool:
        return self.path.is_file() and self.path.with_suffix(".json").is_file()

    def writer(self) -> np.memmap:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path(self.path)
        return np.memmap(self._tmp, np.float16, "w+", shape=self.shape)

    def commit(self, mm: np.memmap, summary: dict) -> None:
        assert self._tmp is not None, "commit() without writer()"
        mm.flush()
        os.replace(self._tmp, self.path)
        self._tmp = None
        tmp_json = temp_path(self.path.with_suffix(".json"))
        tmp_json.write_text(json.dumps(summary))
        os.replace(tmp_json, self.path.with_suffix(".json"))

    def discard(self) -> None:
        """Remove this writer's temporary file (a cancelled or failed computation)."""
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def stale_temps(self) -> list[Path]:
        return sorted(self.path.parent.glob(f".{self.path.stem}.*.tmp"))

    @contextmanager
    def locked(
        self, should_cancel: Callable[[], bool] = lambda: False, poll_s: float = 0.1
    ) -> Iterator[None]:
        """Hold this key's lock (waiting, cancellably, while another process holds it);
        the stale temporary files of this key are removed once it is held."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_suffix(".lock").open("a") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if should_cancel():
                        raise Cancelled from None
                    time.sleep(poll_s)
            try:
                for stale in self.stale_temps():  # no live writer: we hold the lock
                    stale.unlink(missing_ok=True)
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def reader(self) -> np.memmap:
        return np.memmap(self.path, np.float16, "r", shape=self.shape)

    def summary(self) -> dict:
        return json.loads(self.path.with_suffix(".json").read_text())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokenizer,
    windows: list[torch.Tensor],
    *,
    baseline: np.memmap | None = None,
    record: np.memmap | None = None,
    should_cancel: Callable[[], bool] = lambda: False,
    on_progress: Callable[[float, str], None] = lambda f, m: None,
) -> EvalResult:
    """Perplexity and bits per byte; KL and top-1 agreement against ``baseline`` log-probs.

    ``record`` (a writable memmap) receives this model's log-probs, to serve as a baseline.
    """
    device = next(model.parameters()).device
    nll_sum, n_tok, n_bytes, kl_sum, agree = 0.0, 0, 0, 0.0, 0
    for i, w in enumerate(windows):
        if should_cancel():
            raise Cancelled
        logits = model(w.unsqueeze(0).to(device), use_cache=False).logits[0, :-1].float()
        logp = F.log_softmax(logits, dim=-1)  # (T-1, V)
        target = w[1:].to(device)
        nll_sum += -logp.gather(1, target.unsqueeze(1)).sum().item()
        n_tok += target.numel()
        n_bytes += _bytes_of(tokenizer, w[1:])
        t = target.numel()
        if record is not None:
            record[i, :t] = logp.cpu().numpy().astype(np.float16)
        if baseline is not None:
            # Compared at the cached baseline's precision: identical models give 0 and 1.
            base = torch.from_numpy(np.asarray(baseline[i, :t], dtype=np.float32)).to(device)
            mine = logp.half().float()
            kl_sum += (base.exp() * (base - mine)).sum().item()
            agree += (base.argmax(-1) == mine.argmax(-1)).sum().item()
        on_progress((i + 1) / len(windows), f"evaluating window {i + 1}/{len(windows)}")
    res = EvalResult(
        perplexity=math.exp(nll_sum / n_tok),
        bits_per_byte=nll_sum / math.log(2) / max(1, n_bytes),
        nll_sum=nll_sum,
        n_tokens=n_tok,
        n_bytes=n_bytes,
    )
    if baseline is not None:
        res.kl_to_baseline, res.top1_agreement = kl_sum / n_tok, agree / n_tok
    return res


SLOWER_TOLERANCE = 1.05  # a speed-up below 1 / 1.05 counts as slower (timing noise aside)


def speed_vs_baseline(
    weight_bytes: int,
    prefill_ms: float,
    decode_tok_s: float,
    base_weight_bytes: int,
    base_prefill_ms: float,
    base_decode_tok_s: float,
) -> dict[str, float | bool]:
    """Speed-ups over the uncompressed model, and whether memory shrank while speed fell."""
    prefill_speedup = base_prefill_ms / prefill_ms
    decode_speedup = decode_tok_s / base_decode_tok_s
    slower = min(prefill_speedup, decode_speedup) < 1 / SLOWER_TOLERANCE
    return {
        "prefill_speedup": prefill_speedup,
        "decode_speedup": decode_speedup,
        "smaller_but_slower": bool(weight_bytes < base_weight_bytes and slower),
    }


@torch.no_grad()
def measure_latency(
    model: nn.Module, prompt: torch.Tensor, settings: EvalSettings
) -> tuple[float, float]:
    """(prefill ms, decode tokens/s): medians over ``repeats`` runs after one warm-up."""
    device = next(model.parameters()).device
    ids = prompt[: settings.prompt_len].unsqueeze(0).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    prefill, step = [], []
    for r in range(settings.repeats + 1):
        sync()
        t0 = time.perf_counter()
        out = model(ids, use_cache=True)
        sync()
        t1 = time.perf_counter()
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        times = []
        for _ in range(settings.decode_tokens):
            s0 = time.perf_counter()
            out = model(nxt, past_key_values=past, use_cache=True)
            sync()
            times.append(time.perf_counter() - s0)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        if r > 0:  # the first run is the warm-up
            prefill.append((t1 - t0) * 1000)
            step.append(statistics.median(times))
    return statistics.median(prefill), 1.0 / statistics.median(step)


@dataclass
class WeightMemory:
    weight_bytes: int  # every parameter and buffer as stored, tied tensors once
    bits_per_weight: float  # over all linear layers, compressed or not
    compressed_bits_per_weight: float | None  # over the compressed linear layers only
    linear_weights: int  # number of weights in the linear layers


def weight_memory(model: nn.Module) -> WeightMemory:
    """Real storage of the model; fake quantization (floats) would show up as 32 bits."""
    lin = [0, 0]  # bytes, weights
    comp = [0, 0]
    for mod in model.modules():
        if isinstance(mod, nn.Linear | CompressedLinear) and not _is_tied_head(model, mod):
            nbytes = module_storage_bytes(mod) - _bias_bytes(mod)
            n = mod.in_features * mod.out_features
            lin[0], lin[1] = lin[0] + nbytes, lin[1] + n
            if isinstance(mod, CompressedLinear):
                comp[0], comp[1] = comp[0] + nbytes, comp[1] + n
    return WeightMemory(
        weight_bytes=module_storage_bytes(model),
        bits_per_weight=8.0 * lin[0] / lin[1] if lin[1] else 0.0,
        compressed_bits_per_weight=8.0 * comp[0] / comp[1] if comp[1] else None,
        linear_weights=lin[1],
    )


def _bias_bytes(mod: nn.Module) -> int:
    b = getattr(mod, "bias", None)
    return b.numel() * b.element_size() if isinstance(b, torch.Tensor) else 0


def _is_tied_head(model: nn.Module, mod: nn.Module) -> bool:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    w = getattr(mod, "weight", None)
    return emb is not None and w is not None and w.data_ptr() == emb.weight.data_ptr()


class PeakMemory:
    """Peak memory over a block of work: sampled RSS on the CPU, the allocator peak on CUDA."""

    def __init__(self, device: torch.device, interval: float = 0.05) -> None:
        self.device, self.interval, self.peak = device, interval, 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._held = 0  # CUDA: the peak before a paused block

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            rss = proc.memory_info().rss
            if not self._paused.is_set():  # checked after reading: a pause wins the race
                self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """A block whose memory is not the job's (e.g. the baseline's weights swapped in
        to time against): not sampled on the CPU, the CUDA peak restarted after it."""
        if self.device.type == "cuda":
            self._held = max(self._held, torch.cuda.max_memory_allocated(self.device))
            try:
                yield
            finally:
                torch.cuda.reset_peak_memory_stats(self.device)
            return
        self._paused.set()
        try:
            yield
        finally:
            self._paused.clear()

    @contextmanager
    def track(self) -> Iterator[PeakMemory]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            yield self
            self.peak = max(self._held, torch.cuda.max_memory_allocated(self.device))
            return
        t = threading.Thread(target=self._sample, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self._stop.set()
            t.join()
