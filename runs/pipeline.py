"""One job as named stages: load, baseline, calibrate, compress, evaluate, measure speed,
store. :data:`STAGES` declares them in order with their share of the progress bar.

Pure of the database: the runner passes callbacks for progress and cancellation and
a resolver for text sets, and stores what comes back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.actstats import collect_activation_stats
from core.calib import calibration_batches
from core.data import TextSet
from core.kernels.ops import path_log, reset_path_log
from core.metrics import (
    EvalResult,
    LogprobStore,
    PeakMemory,
    WeightMemory,
    eval_windows,
    evaluate,
    weight_memory,
)
from core.models import LoadedModel, load_model
from core.modes import IN_MEMORY, ModePeaks, device_budget, load_in_mode, plan
from core.onload import all_blocks_loaded, close_store, streaming
from core.recipe import Recipe
from core.save import save_compressed
from core.walk import apply_recipe
from runs import (
    assemble,
    baseline_cache,
    calib_check,
    generations,
    kv_eval,
    latency,
    storage_notes,
    tasks,
)
from runs.preflight import check_cache_quota, check_cache_room, quota_problem
from runs.progress import STAGES, Progress, StageProgress
from runs.records import LayerRow, RunResult
from runs.spec import JobSpec

log = logging.getLogger(__name__)

__all__ = ["STAGES", "JobResult", "Progress", "run_job"]


@dataclass
class JobResult:
    """What a job hands the database: typed records, written as the JSON rows hold."""

    result: RunResult
    layer_rows: list[LayerRow]
    fingerprint: dict[str, Any]  # what it takes to reproduce the numbers

    @property
    def metrics(self) -> dict[str, Any]:
        return self.result.to_dict()

    @property
    def layers(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.layer_rows]


@dataclass
class Job:
    """One job's inputs and everything its stages measured so far."""

    spec: JobSpec
    recipe: Recipe
    cache_dir: Path
    resolve_text: Callable[[str], TextSet]
    should_cancel: Callable[[], bool]
    save_dir: Path | None
    device: torch.device
    peak: PeakMemory
    host_peak: PeakMemory = field(default_factory=lambda: PeakMemory(torch.device("cpu")))
    modes: ModePeaks | None = None  # the estimate a device budget picked the mode by
    loaded: LoadedModel | None = None
    eval_text: TextSet | None = None
    windows: list[torch.Tensor] = field(default_factory=list)
    logprobs: LogprobStore | None = None
    base: dict[str, Any] = field(default_factory=dict)  # baseline perplexity, bits/byte
    before: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_mem: WeightMemory | None = None
    base_latency: tuple[float, float] | None = None
    baseline_copy: latency.BaselineCopy | None = None  # original weights, to time against
    base_report: latency.LatencyReport | None = None  # the baseline timed apart (fallback)
    calib_text: TextSet | None = None
    batches: list[torch.Tensor] | None = None
    acts: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, float | None] = field(default_factory=dict)
    compress_s: float = 0.0
    compress_cpu_s: float = 0.0
    calib_set_tokens: int | None = None  # tokens of the calibration set (runs.calib_check)
    res: EvalResult | None = None
    latency: tuple[float, float] | None = None
    latency_report: latency.LatencyReport | None = None
    kernel_paths: list[Any] = field(default_factory=list)
    mem: WeightMemory | None = None
    saved: Path | None = None
    notes: list[str] = field(default_factory=list)  # in the result's extra "notes"
    out: JobResult | None = None
    base_generations: list[Any] = field(default_factory=list)  # runs/generations.py
    # Result fields the generations and task stages measured (catalogue keys).
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def compresses(self) -> bool:
        return bool(self.recipe.steps)

    @property
    def prompt(self) -> torch.Tensor:
        return torch.cat(self.windows)

    @property
    def data_folders(self) -> list[Path]:
        """The folders under the data quota: baseline caches and kept models."""
        return [self.cache_dir] + ([self.save_dir.parent] if self.save_dir is not None else [])


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- the stages, in the order of STAGES ------------------------------------------


def resolve_inputs(job: Job) -> None:
    """The text sets (an upload that is gone fails here), before anything is loaded."""
    job.eval_text = job.resolve_text(job.spec.eval_set)
    tasks.check_before_loading(job)  # a hub task offline fails in seconds, not after loading
    if job.compresses:
        job.calib_text = job.resolve_text(job.spec.calib)


def load(job: Job, report: Progress) -> None:
    """The model and the evaluation windows; then the baseline cache's size is checked
    against its cap and the free disk (runs.preflight) before the baseline computes it."""
    report(0.0, f"loading model {job.spec.model}")
    job.loaded, job.modes = load_within_budget(job)
    calib_check.check_before_work(job)  # a set shorter than one window, before the baseline
    if job.eval_text is None:
        job.eval_text = job.resolve_text(job.spec.eval_set)
    job.windows = eval_windows(
        job.loaded.tokenizer, job.eval_text.text, job.spec.eval, job.spec.protocol
    )
    job.logprobs = baseline_cache.logprob_store(
        job.cache_dir,
        job.loaded,
        job.eval_text,
        job.spec.eval,
        len(job.windows),
        job.spec.protocol,
    )
    check_cache_room(job.logprobs, job.cache_dir)
    check_cache_quota(job.logprobs, job.data_folders)


def load_within_budget(job: Job) -> tuple[LoadedModel, ModePeaks | None]:
    """Without a device budget, the model in memory; with one, in the mode it picks."""
    budget = device_budget(job.spec.max_device_memory)
    if budget is None:
        return load_model(job.spec.model, device=job.device), None
    modes = plan(job.spec.model, job.recipe, job.spec.calib_settings, budget)
    return load_in_mode(job.spec.model, modes.mode or IN_MEMORY, job.device), modes


def baseline(job: Job, report: Progress) -> None:
    """The uncompressed model: its log-probs (cached), weight statistics, memory and, when
    a recipe follows, its latency, measured in this job to compare against."""
    assert job.loaded is not None and job.logprobs is not None
    job.base = baseline_cache.ensure_baseline(
        job.loaded, job.windows, job.logprobs, job.should_cancel, report
    )
    job.before = baseline_cache.stats_before(job.loaded.model)
    job.base_mem = weight_memory(job.loaded.model)
    if job.compresses:  # timed later, in alternation with the compressed model
        latency.keep_baseline(job, report)


def calibrate(job: Job, report: Progress) -> None:
    """Calibration batches and the uncompressed model's input activations on them."""
    if not job.compresses:
        return
    assert job.loaded is not None
    if job.calib_text is None:
        job.calib_text = job.resolve_text(job.spec.calib)
    job.batches = calibration_batches(
        job.loaded.tokenizer, job.calib_text.text, job.spec.calib_settings, job.spec.protocol
    )
    job.acts = collect_activation_stats(
        job.loaded.model, job.batches, should_cancel=job.should_cancel, on_progress=report
    )


def compress(job: Job, report: Progress) -> None:
    if not job.compresses:
        return
    assert job.loaded is not None
    t0, c0 = time.perf_counter(), time.process_time()
    reports = apply_recipe(
        job.loaded.model,
        job.recipe,
        on_progress=report,
        should_cancel=job.should_cancel,
        calib_batches=job.batches,
    )
    job.compress_s = time.perf_counter() - t0
    job.compress_cpu_s = time.process_time() - c0
    job.notes.extend(storage_notes.sparse_quant_notes(job.loaded.model, job.recipe))
    job.errors = {r.name: r.rel_error for r in reports}


def evaluate_compressed(job: Job, report: Progress) -> None:
    assert job.loaded is not None and job.logprobs is not None
    report(0.0, "evaluating the compressed model")
    reset_path_log()
    job.res = evaluate(
        job.loaded.model,
        job.loaded.tokenizer,
        job.windows,
        baseline=job.logprobs.reader(),
        should_cancel=job.should_cancel,
        on_progress=report,
    )


def measure_speed(job: Job, report: Progress) -> None:
    assert job.loaded is not None
    report(0.0, "measuring latency")
    with job.peak.paused():  # the baseline's weights swapped in are not the run's memory
        job.latency_report = latency.measure_job(job, report)
    pre, dec = (job.latency_report.headline(k).compressed for k in ("prefill", "decode"))
    job.latency = (pre.median, dec.median)
    job.kernel_paths = path_log()  # the integer kernel paths that really ran
    job.mem = weight_memory(job.loaded.model)


def store(job: Job, report: Progress) -> None:
    """Keep the compressed model when the spec asks and the data quota has room (else a
    note says why not), and write the run's records (the runner puts them in the
    database)."""
    assert job.loaded is not None
    if job.spec.save_model and job.compresses and job.save_dir is not None:
        with all_blocks_loaded(job.loaded.model):  # onloaded: the compressed blocks, spilled
            _keep_model(job, report)
    rows = assemble.layer_rows(job)
    result = assemble.run_result(job, rows)
    for key, value in job.outputs.items():  # generations and task scores
        setattr(result, key, value)
    if job.notes:
        result.extra["notes"] = list(job.notes)
    job.out = JobResult(result, rows, assemble.fingerprint(job))


def _keep_model(job: Job, report: Progress) -> None:
    """Save the compressed model where the data quota has room, else say why not."""
    assert job.loaded is not None and job.save_dir is not None
    problem = quota_problem(
        job.data_folders, state_bytes(job.loaded.model), "keeping the compressed model"
    )
    if problem:
        job.notes.append(f"the compressed model was not kept: {problem}")
        return
    report(0.0, "saving the compressed model")
    job.saved = save_compressed(
        job.loaded.model.cpu(), job.save_dir, job.recipe, job.loaded.tokenizer
    )


def state_bytes(model: torch.nn.Module) -> int:
    """About what saving ``model`` writes: its state dict's bytes (tied tensors once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


STAGE_FUNCTIONS: dict[str, Callable[[Job, Progress], None]] = {
    "load": load,
    "baseline": baseline,
    "baseline outputs": generations.baseline_outputs,
    "calibrate": calibrate,
    "compress": compress,
    "evaluate": evaluate_compressed,
    "outputs": generations.run_outputs,
    "kv cache": kv_eval.evaluate_kv,
    "measure speed": measure_speed,
    "store": store,
}


def run_job(
    spec: JobSpec,
    *,
    cache_dir: Path,
    resolve_text: Callable[[str], TextSet],
    on_progress: Progress = lambda f, m: None,
    should_cancel: Callable[[], bool] = lambda: False,
    save_dir: Path | None = None,
) -> JobResult:
    """Run one job; raises ModelLoadError / ConfigError / DataError / Cancelled on failure.

    With ``spec.save_model`` and a recipe, the compressed model is saved to ``save_dir``."""
    recipe = spec.parsed_recipe()  # refuse a bad recipe (or target) before loading anything
    device = pick_device()
    job = Job(
        spec, recipe, cache_dir, resolve_text, should_cancel, save_dir, device, PeakMemory(device)
    )
    resolve_inputs(job)  # an upload that is not stored fails before any expensive work
    torch.manual_seed(spec.calib_settings.seed)
    progress = StageProgress(on_progress)
    *work, (last, _) = STAGES
    try:
        try:
            # peak memory of the work, not of saving the model afterwards
            with job.peak.track(), job.host_peak.track():
                for name, _ in work:
                    with streaming(job.loaded.model) if job.loaded else nullcontext():
                        STAGE_FUNCTIONS[name](job, progress.stage(name))
        finally:
            latency.discard_baseline(job)  # the temporary copy of the original weights
        STAGE_FUNCTIONS[last](job, progress.stage(last))  # store
    finally:  # done, failed or cancelled: an onloaded model's spilled blocks go
        close_store(job.loaded.model if job.loaded else None)
    progress.done()
    assert job.out is not None
    return job.out
