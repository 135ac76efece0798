"""Latency you can believe: the uncompressed and the compressed model timed in the same
job, interleaved (A, B, B, A, A, B ...), after warm-up, with the spread of every measure,
the repeat count, threads, the machine's load before and after, and the device.

Only one model is in memory: before compressing, the job writes the original weights to
a temporary file beside the baseline cache (:class:`BaselineCopy`); to time the baseline
the linears the recipe replaced (and any tensor it changed in place, e.g. a norm that
SmoothQuant folded) are swapped back in from that file (memory-mapped), then swapped out
again (:class:`ModuleSwap`). The swap never copies the embeddings or unchanged layers.

Speed-ups come from the pairs (baseline time / compressed time of the same round). A
speed-up is a number only where the pairs allow it (:func:`direction`): their middle half
lies on one side of 1, beyond what the machine's load alone could do to a round
(:func:`load_factor`), and the claimed factor is larger than the spread of the pairs.
Otherwise the run says "not measurable on this machine at this load" instead.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from core.kernels import ops
from core.metrics import SLOWER_TOLERANCE, EvalSettings
from core.paths import temp_path
from core.walk import find_linears, replace_module
from runs import catalogue as cat

if TYPE_CHECKING:
    from runs.pipeline import Job

log = logging.getLogger(__name__)

BASELINE, COMPRESSED = "baseline", "compressed"
WARMUP = 1  # rounds run and discarded before timing (caches, allocator, kernels' first call)
MIN_REPEATS = 3  # fewer timed rounds give no spread worth the name
DECODE_BATCHES = (1, 4)  # decode at batch 1 and one larger batch, as LLM-Perf reports
NOT_MEASURABLE = "not measurable on this machine at this load"
Direction = Literal["faster", "slower", "same", "unmeasurable"]


# --- pure statistics -----------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Median, quartiles (linear interpolation) and range of some repeated measurements."""

    median: float
    q1: float
    q3: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        v = sorted(float(x) for x in values)
        if not v:
            raise ValueError("no measurements")
        if len(v) == 1:
            return cls(v[0], v[0], v[0], v[0], v[0], 1)
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
        return cls(statistics.median(v), q1, q3, v[0], v[-1], len(v))

    def scaled(self, k: float) -> Spread:
        """Every statistic times ``k`` (seconds -> ms); a negative-free ``k`` keeps order."""
        return Spread(self.median * k, self.q1 * k, self.q3 * k, self.lo * k, self.hi * k, self.n)

    def inverted(self, k: float = 1.0) -> Spread:
        """``k / value`` for each statistic (seconds per step -> tokens per second)."""
        return Spread(k / self.median, k / self.q3, k / self.q1, k / self.hi, k / self.lo, self.n)


def direction(ratio: Spread, tolerance: float = SLOWER_TOLERANCE, load: float = 1.0) -> Direction:
    """What the pair ratios (baseline time / compressed time, one per round) say.

    ``load`` (>= 1, :func:`load_factor`) is how much the machine's load could have
    slowed one round against the other. A difference is claimed only when

    - the middle half of the ratios (q1-q3) lies beyond ``load`` on one side of 1 (the
      load alone could not have made it), and
    - the claimed factor (the median, or its inverse) is larger than the spread of the
      ratios themselves (q3 / q1): the difference must exceed the noise it is read from;

    "same" only when the middle half lies within the tolerance of 1 and the load could
    not move a round by more than the tolerance; fewer than MIN_REPEATS pairs, or any
    other case, is "unmeasurable"."""
    noise = max(1.0, load)
    band = ratio.q3 / ratio.q1 if ratio.q1 > 0 else float("inf")
    if ratio.n < MIN_REPEATS:
        return "unmeasurable"
    if ratio.q1 > noise and ratio.median > band:
        return "faster"
    if ratio.q3 < 1.0 / noise and 1.0 / ratio.median > band:
        return "slower"
    if noise <= tolerance and 1.0 / tolerance <= ratio.q1 and ratio.q3 <= tolerance:
        return "same"
    return "unmeasurable"


def is_slower(ratio: Spread, tolerance: float = SLOWER_TOLERANCE, load: float = 1.0) -> bool:
    """Measurably slower, by more than the tolerance (the "smaller but slower" test)."""
    return direction(ratio, tolerance, load) == "slower" and ratio.median < 1.0 / tolerance


def verdict_text(
    name: str, ratio: Spread | None, tolerance: float = SLOWER_TOLERANCE, load: float = 1.0
) -> str:
    if ratio is None:
        return f"{name}: no baseline to compare with"
    d = direction(ratio, tolerance, load)
    if d == "unmeasurable":
        why = (
            f"pair ratios {ratio.q1:.2f}x-{ratio.q3:.2f}x over the middle half of {ratio.n} rounds"
        )
        if load > tolerance:
            why += f"; the machine's load could move a round by {load:.2f}x"
        return f"{name}: {NOT_MEASURABLE} ({why})"
    what = {"faster": "faster", "slower": "slower", "same": "no measurable difference"}[d]
    return f"{name}: {ratio.median:.2f}x [{ratio.q1:.2f}-{ratio.q3:.2f}] {what}"


# --- interleaved timing ----------------------------------------------------------------


def interleaved(
    measure: Callable[[str], float],
    variants: Sequence[str],
    repeats: int,
    warmup: int = WARMUP,
) -> dict[str, list[float]]:
    """``measure(variant)`` for each variant, round after round, the order reversed every
    other round (A B, B A, ...) so that a drift in load hits both alike; the first
    ``warmup`` rounds are discarded."""
    out: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(warmup + repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for v in order:
            t = measure(v)
            if r >= warmup:
                out[v].append(t)
    return out


def pair_ratios(base: Sequence[float], comp: Sequence[float]) -> list[float]:
    """Per round: baseline time / compressed time (above 1: the compressed one is faster)."""
    return [b / c for b, c in zip(base, comp, strict=True) if c > 0]


# --- the model: prefill and decode steps -----------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def prefill_seconds(model: nn.Module, ids: torch.Tensor) -> float:
    """One forward pass over ``ids`` (batch, seq), with a KV cache as generation builds."""
    _sync(ids.device)
    t0 = time.perf_counter()
    model(ids, use_cache=True)
    _sync(ids.device)
    return time.perf_counter() - t0


@torch.no_grad()
def decode_step_seconds(model: nn.Module, ids: torch.Tensor, steps: int) -> float:
    """Median seconds of one greedy decode step after a prefill of ``ids`` (not timed)."""
    out = model(ids, use_cache=True)
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(max(1, steps)):
        _sync(ids.device)
        t0 = time.perf_counter()
        out = model(nxt, past_key_values=past, use_cache=True)
        _sync(ids.device)
        times.append(time.perf_counter() - t0)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return statistics.median(times)


def prefill_lengths(settings: EvalSettings, available: int) -> list[int]:
    """Two or three prompt lengths: a quarter of prompt_len, prompt_len and twice it, as
    far as the prompt tokens at hand allow (prompt_len itself is the headline)."""
    wanted = (max(1, settings.prompt_len // 4), settings.prompt_len, 2 * settings.prompt_len)
    return sorted({min(n, available) for n in wanted if n >= 1})


@dataclass(frozen=True)
class Measure:
    """One timed workload: prefill of ``seq_len`` tokens, or decode steps at ``batch``."""

    kind: Literal["prefill", "decode"]
    seq_len: int
    batch: int

    @property
    def name(self) -> str:
        if self.kind == "prefill":
            return f"prefill {self.seq_len} tokens"
        return f"decode batch {self.batch}"

    def inputs(self, prompt: torch.Tensor, device: torch.device) -> torch.Tensor:
        ids = prompt[: self.seq_len].unsqueeze(0).to(device)
        return ids.expand(self.batch, -1).contiguous()

    def seconds(self, model: nn.Module, ids: torch.Tensor, steps: int) -> float:
        if self.kind == "prefill":
            return prefill_seconds(model, ids)
        return decode_step_seconds(model, ids, steps)


def measures(settings: EvalSettings, available: int) -> list[Measure]:
    """The workloads of a latency report: prefill at 2-3 lengths, decode at 2 batches
    (decode after a prompt of prompt_len tokens, or what is at hand)."""
    out = [Measure("prefill", n, 1) for n in prefill_lengths(settings, available)]
    ctx = min(settings.prompt_len, available)
    return out + [Measure("decode", ctx, b) for b in DECODE_BATCHES]


# --- the baseline's weights, swapped in and out ----------------------------------------


class ModuleSwap:
    """Two states of one model: ``use(BASELINE)`` puts the original modules and tensors in,
    ``use(COMPRESSED)`` the compressed ones back. Holds references only."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], tensors: dict) -> None:
        self.model = model
        self.states: dict[str, tuple[dict[str, nn.Module], dict[str, torch.Tensor]]] = {
            BASELINE: (modules, tensors),
            COMPRESSED: (
                {n: model.get_submodule(n) for n in modules},
                {n: _tensor_of(model, n).data for n in tensors},
            ),
        }
        self.current = COMPRESSED

    @property
    def empty(self) -> bool:
        mods, tensors = self.states[BASELINE]
        return not mods and not tensors

    def use(self, state: str) -> None:
        if state == self.current:
            return
        mods, tensors = self.states[state]
        for name, mod in mods.items():
            replace_module(self.model, name, mod)
        for name, t in tensors.items():
            _tensor_of(self.model, name).data = t
        self.current = state

    @contextmanager
    def restoring(self) -> Iterator[ModuleSwap]:
        """The compressed state again on the way out, whatever happened."""
        try:
            yield self
        finally:
            self.use(COMPRESSED)


def _tensor_of(model: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    mod = model.get_submodule(owner) if owner else model
    return getattr(mod, attr)


def _as_linear(state: dict[str, torch.Tensor], name: str, device: torch.device) -> nn.Linear:
    w = state[f"{name}.weight"]
    b = state.get(f"{name}.bias")
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta", dtype=w.dtype)
    lin.weight = nn.Parameter(w.to(device), requires_grad=False)
    if b is not None:
        lin.bias = nn.Parameter(b.to(device), requires_grad=False)
    return lin


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())


class BaselineCopy:
    """The uncompressed model's parameters and buffers in a temporary file (named by
    ``core.paths.temp_path``, so ``workers gc`` removes it if the worker dies)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def save(cls, model: nn.Module, folder: Path) -> BaselineCopy:
        folder.mkdir(parents=True, exist_ok=True)
        path = temp_path(folder / "baseline-weights", ".pt")
        state = {k: v.detach().cpu() for k, v in model.state_dict(keep_vars=False).items()}
        torch.save(state, path)
        return cls(path)

    def swap_for(self, model: nn.Module) -> ModuleSwap:
        """The swap between the (compressed) ``model`` and the saved originals: the
        linears that differ from their saved weights and any other tensor changed in
        place. Raises KeyError where a replaced linear has no saved weight."""
        state = torch.load(self.path, mmap=True, weights_only=True)
        device = next(model.parameters()).device
        modules: dict[str, nn.Module] = {}
        for name, mod in find_linears(model).items():
            w = state[f"{name}.weight"]
            if isinstance(mod, nn.Linear) and _same(mod.weight, w):
                continue
            modules[name] = _as_linear(state, name, device)
        tensors = {}
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name in state and not any(name.startswith(m + ".") for m in modules):
                if not _same(t.data, state[name]):
                    tensors[name] = state[name].to(t.device)
        return ModuleSwap(model, modules, tensors)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# --- the report ------------------------------------------------------------------------


def machine_load() -> dict[str, float]:
    """Load averages (1, 5, 15 min), CPU use in percent over 0.2 s, the CPUs they cover,
    and the counters :func:`load_factor` takes differences of: the machine's busy CPU
    seconds (all processes), this process's CPU seconds, a monotonic clock."""
    out: dict[str, float] = {"cpus": float(os.cpu_count() or 1), "wall_s": time.monotonic()}
    try:
        out.update(zip(("load1", "load5", "load15"), os.getloadavg(), strict=True))
    except OSError:  # not on this platform
        pass
    try:
        import psutil

        out["cpu_percent"] = float(psutil.cpu_percent(interval=0.2))
        t = psutil.cpu_times()._asdict()  # Linux counts guest time in user time too
        idle = ("idle", "iowait", "guest", "guest_nice")
        out["busy_s"] = sum(v for k, v in t.items() if k not in idle)
        own = psutil.Process().cpu_times()
        out["own_s"] = own.user + own.system
        out["wall_s"] = time.monotonic()
    except ImportError:
        pass
    return out


def load_factor(before: dict[str, float], after: dict[str, float], threads: int) -> float:
    """How many times over the machine's CPUs were asked for around the timing (>= 1):
    a round can be slowed by up to this factor by the load alone, so a pair ratio within
    [1 / factor, factor] could be the load's doing. The largest of

    - the 1-minute load average before and after, over the CPUs (it counts the timed
      threads too, so above 1 more threads wanted a CPU than there were), and
    - during the timing: the timed threads plus the CPUs other processes kept busy
      (the machine's busy CPU seconds less this process's, per second), over the CPUs."""
    cpus = max(1.0, after.get("cpus") or before.get("cpus") or 1.0)
    factor = 1.0
    for d in (before, after):
        if "load1" in d:
            factor = max(factor, d["load1"] / cpus)
    counters = ("busy_s", "own_s", "wall_s")
    if all(k in before and k in after for k in counters):
        wall = after["wall_s"] - before["wall_s"]
        busy = after["busy_s"] - before["busy_s"]
        own = after["own_s"] - before["own_s"]
        if wall > 0:
            others = max(0.0, busy - own) / wall
            factor = max(factor, (threads + others) / cpus)
    return factor


@dataclass
class MeasureResult:
    name: str
    kind: str
    seq_len: int
    batch: int
    compressed: Spread  # ms (prefill) or tokens/s (decode)
    baseline: Spread | None
    speedup: Spread | None  # per-round pair ratios (above 1: faster than the baseline)
    verdict: str
    load: float = 1.0  # how much the load could move a round (load_factor)

    @property
    def direction(self) -> Direction | None:
        return direction(self.speedup, load=self.load) if self.speedup else None

    def judged(self, load: float) -> MeasureResult:
        """The same measurement, its verdict given the machine's load factor."""
        return replace(self, load=load, verdict=verdict_text(self.name, self.speedup, load=load))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"direction": self.direction}


def _as_reported(m: Measure, seconds: Spread) -> Spread:
    """Prefill in ms; decode in tokens per second (batch x steps per second)."""
    return seconds.scaled(1000.0) if m.kind == "prefill" else seconds.inverted(m.batch)


def run_measure(
    model: nn.Module,
    m: Measure,
    prompt: torch.Tensor,
    settings: EvalSettings,
    swap: ModuleSwap | None,
) -> MeasureResult:
    device = next(model.parameters()).device
    ids = m.inputs(prompt, device)
    variants = [BASELINE, COMPRESSED] if swap is not None else [COMPRESSED]

    def once(variant: str) -> float:
        if swap is not None:
            swap.use(variant)
        return m.seconds(model, ids, settings.decode_tokens)

    times = interleaved(once, variants, max(MIN_REPEATS, settings.repeats))
    comp = Spread.of(times[COMPRESSED])
    base = Spread.of(times[BASELINE]) if swap is not None else None
    ratio = Spread.of(pair_ratios(times[BASELINE], times[COMPRESSED])) if base else None
    return MeasureResult(
        m.name,
        m.kind,
        m.seq_len,
        m.batch,
        _as_reported(m, comp),
        _as_reported(m, base) if base else None,
        ratio,
        verdict_text(m.name, ratio),
    )


@dataclass
class LatencyReport:
    measures: list[MeasureResult]
    repeats: int
    warmup: int
    threads: int
    device: str
    interleaved: bool
    load_before: dict[str, float]
    load_after: dict[str, float]
    prompt_len: int
    note: str = ""
    load: float = 1.0  # load_factor around the timing: the verdicts take it into account

    def headline(self, kind: str) -> MeasureResult:
        """The measure the run's headline numbers come from: prefill of the longest prompt
        up to prompt_len (``prompt_len``), decode at batch 1."""
        of_kind = [m for m in self.measures if m.kind == kind]
        if kind == "decode":
            return min(of_kind, key=lambda m: m.batch)
        upto = [m for m in of_kind if m.seq_len <= self.prompt_len] or of_kind
        return max(upto, key=lambda m: m.seq_len)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["measures"] = [m.to_dict() for m in self.measures]
        return d


def measure_latency_report(
    model: nn.Module,
    prompt: torch.Tensor,
    settings: EvalSettings,
    swap: ModuleSwap | None = None,
    *,
    device_name: str = "",
    note: str = "",
    on_progress: Callable[[float, str], None] = lambda f, m: None,
    probe: Callable[[], dict[str, float]] = machine_load,
) -> LatencyReport:
    """Every measure of :func:`measures`, interleaving the baseline (through ``swap``)
    and the model as it is; without a swap only the model as it is is timed. ``probe``
    reads the machine's load before and after; the verdicts take it into account. Kernel
    tuning still running in the background is waited for first: it times kernels on every
    core, unseen by the load probe (same process)."""
    if ops.tuning_in_progress():
        on_progress(0.0, "waiting for kernel tuning")
        ops.wait_for_tuning()
    before = probe()
    todo = measures(settings, len(prompt))
    results = []
    with swap.restoring() if swap is not None else _nothing():
        for i, m in enumerate(todo):
            on_progress(i / len(todo), f"timing {m.name}")
            results.append(run_measure(model, m, prompt, settings, swap))
    after, threads = probe(), torch.get_num_threads()
    factor = load_factor(before, after, threads)
    return LatencyReport(
        [r.judged(factor) for r in results],
        max(MIN_REPEATS, settings.repeats),
        WARMUP,
        threads,
        device_name or str(next(model.parameters()).device),
        swap is not None,
        before,
        after,
        settings.prompt_len,
        note,
        factor,
    )


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# --- two reports timed apart (when the baseline could not be kept to swap) --------------


def _ratio_apart(m: Measure | MeasureResult, base: Spread, comp: Spread) -> Spread:
    """Speed-up of the compressed model from two spreads timed apart: the median of each
    divided, the quartiles crossed (the widest middle half the two allow)."""
    if m.kind == "prefill":  # ms: baseline / compressed
        return Spread(
            base.median / comp.median,
            base.q1 / comp.q3,
            base.q3 / comp.q1,
            base.lo / comp.hi,
            base.hi / comp.lo,
            min(base.n, comp.n),
        )
    return Spread(  # tokens/s: compressed / baseline
        comp.median / base.median,
        comp.q1 / base.q3,
        comp.q3 / base.q1,
        comp.lo / base.hi,
        comp.hi / base.lo,
        min(base.n, comp.n),
    )


def combine_apart(base: LatencyReport, comp: LatencyReport) -> LatencyReport:
    """One report from the baseline's and the compressed model's, timed at different
    moments (no pairs: the spread of the speed-up is the crossed quartiles)."""
    by_name = {m.name: m for m in base.measures}
    factor = max(base.load, comp.load)  # either timing may have been moved by the load
    out = []
    for m in comp.measures:
        b = by_name.get(m.name)
        ratio = _ratio_apart(m, b.compressed, m.compressed) if b else None
        bs = b.compressed if b else None
        one = MeasureResult(m.name, m.kind, m.seq_len, m.batch, m.compressed, bs, ratio, "")
        out.append(one.judged(factor))
    note = "; ".join(n for n in (base.note, comp.note) if n)
    return LatencyReport(
        out,
        comp.repeats,
        comp.warmup,
        comp.threads,
        comp.device,
        False,
        base.load_before,
        comp.load_after,
        comp.prompt_len,
        note,
        factor,
    )


# --- a run's result fields ----------------------------------------------------------------


def _speedup(m: MeasureResult) -> float | None:
    """The median pair ratio where the spread allows a number, else None."""
    if m.speedup is None or m.direction == "unmeasurable":
        return None
    return m.speedup.median


def _quartiles(s: Spread | None, q1: Any, q3: Any) -> dict[str, float | None]:
    return {q1.key: s.q1 if s else None, q3.key: s.q3 if s else None}


def result_fields(
    report: LatencyReport, weight_bytes: int, base_weight_bytes: int
) -> dict[str, Any]:
    """The RunResult fields of a latency report: headline medians (prefill at prompt_len,
    decode at batch 1), their quartiles, speed-ups only where measurable, the verdicts,
    the whole report and the conditions it was measured under."""
    pre, dec = report.headline("prefill"), report.headline("decode")
    slower = any(m.speedup is not None and is_slower(m.speedup, load=m.load) for m in (pre, dec))
    base_pre = pre.baseline or pre.compressed  # without a recipe: the measurement itself
    base_dec = dec.baseline or dec.compressed
    return {
        cat.PREFILL_MS.key: pre.compressed.median,
        cat.DECODE_TOK_S.key: dec.compressed.median,
        cat.BASELINE_PREFILL_MS.key: base_pre.median,
        cat.BASELINE_DECODE_TOK_S.key: base_dec.median,
        cat.PREFILL_SPEEDUP.key: _speedup(pre) if pre.baseline else 1.0,
        cat.DECODE_SPEEDUP.key: _speedup(dec) if dec.baseline else 1.0,
        cat.SMALLER_BUT_SLOWER.key: bool(weight_bytes < base_weight_bytes and slower),
        **_quartiles(pre.compressed, cat.PREFILL_MS_Q1, cat.PREFILL_MS_Q3),
        **_quartiles(dec.compressed, cat.DECODE_TOK_S_Q1, cat.DECODE_TOK_S_Q3),
        **_quartiles(base_pre, cat.BASELINE_PREFILL_MS_Q1, cat.BASELINE_PREFILL_MS_Q3),
        **_quartiles(base_dec, cat.BASELINE_DECODE_TOK_S_Q1, cat.BASELINE_DECODE_TOK_S_Q3),
        **_quartiles(pre.speedup, cat.PREFILL_SPEEDUP_Q1, cat.PREFILL_SPEEDUP_Q3),
        **_quartiles(dec.speedup, cat.DECODE_SPEEDUP_Q1, cat.DECODE_SPEEDUP_Q3),
        cat.LATENCY_VERDICT.key: "; ".join(m.verdict for m in report.measures if m.speedup) or None,
        cat.LATENCY_REPORT.key: [m.to_dict() for m in report.measures],
        cat.LATENCY_REPEATS.key: report.repeats,
        cat.LATENCY_THREADS.key: report.threads,
        cat.LATENCY_DEVICE.key: report.device,
        cat.LATENCY_INTERLEAVED.key: report.interleaved,
        cat.LOAD_BEFORE.key: report.load_before.get("load1"),
        cat.LOAD_AFTER.key: report.load_after.get("load1"),
    }


# --- the job's stages call these -----------------------------------------------------------


def keep_baseline(job: Job, report: Callable[[float, str], None]) -> None:
    """Before compressing: the original weights to a temporary file, to time the baseline
    against later; where that fails (disk), the baseline is timed now, apart."""
    assert job.loaded is not None
    report(1.0, "keeping the original weights to time against")
    try:
        job.baseline_copy = BaselineCopy.save(job.loaded.model, job.cache_dir)
    except (OSError, RuntimeError) as e:
        log.warning("baseline weights not kept (%s): timing the baseline apart", e)
        job.base_report = measure_latency_report(
            job.loaded.model,
            job.prompt,
            job.spec.eval,
            device_name=device_name(job.device),
            note=f"baseline timed before compressing, not interleaved ({e})",
        )


def _swap(job: Job) -> tuple[ModuleSwap | None, str]:
    """The swap to the saved originals, or (None, why not)."""
    assert job.loaded is not None
    if job.baseline_copy is None:
        return None, ""
    try:
        return job.baseline_copy.swap_for(job.loaded.model), ""
    except (KeyError, OSError, RuntimeError) as e:
        return None, f"the original weights could not be swapped back in ({e!r}): timed apart"


def measure_job(job: Job, report: Callable[[float, str], None]) -> LatencyReport:
    """The job's latency report: interleaved with the baseline when its weights were
    kept, else against the baseline timed before compressing (or alone, no recipe)."""
    assert job.loaded is not None
    swap, why = _swap(job)
    try:
        rep = measure_latency_report(
            job.loaded.model,
            job.prompt,
            job.spec.eval,
            swap,
            device_name=device_name(job.device),
            note=why,
            on_progress=report,
        )
    finally:
        discard_baseline(job)
    if swap is None and job.base_report is not None:
        rep = combine_apart(job.base_report, rep)
    return rep


def discard_baseline(job: Job) -> None:
    if job.baseline_copy is not None:
        job.baseline_copy.remove()
        job.baseline_copy = None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from core.kernels.tune import cpu_model

    return cpu_model() or platform.processor() or platform.machine()
