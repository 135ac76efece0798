"""One job, start to finish: load, baseline, calibrate, compress, measure, fingerprint.

Pure of the database: the runner passes callbacks for progress and cancellation and
a resolver for text sets, and stores what comes back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.actstats import collect_activation_stats
from core.calib import calibration_batches
from core.data import TextSet
from core.jobspec import JobSpec
from core.kernels.ops import path_log, reset_path_log
from core.metrics import (
    EvalSettings,
    LogprobStore,
    PeakMemory,
    eval_windows,
    evaluate,
    measure_latency,
    speed_vs_baseline,
    weight_memory,
)
from core.models import LoadedModel, load_model
from core.save import folder_bytes, save_compressed
from core.stats import layer_weight, weight_stats
from core.walk import apply_recipe, find_linears

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class JobResult:
    metrics: dict[str, Any]  # the numbers of the run (keys as in core.metrics.DEFINITIONS)
    layers: list[dict[str, Any]]  # per linear: name, scheme, rel_error, before/after stats
    fingerprint: dict[str, Any]  # what it takes to reproduce the numbers


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "bitsandbytes", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _baseline_key(loaded: LoadedModel, eval_text: TextSet, settings: EvalSettings) -> str:
    raw = f"{loaded.model_id}|{loaded.revision}|{eval_text.sha256}|{settings.ctx}|{settings.eval_tokens}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def _vocab_size(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def _ensure_baseline(
    loaded: LoadedModel,
    windows: list[torch.Tensor],
    store: LogprobStore,
    should_cancel: Callable[[], bool],
    on_progress: Progress,
) -> dict[str, Any]:
    """The uncompressed model's log-probs on the evaluation windows, computed once per
    (model, revision, evaluation set, ctx, eval_tokens) and reused by later jobs."""
    if store.exists():
        return store.summary()
    mm = store.writer()
    res = evaluate(
        loaded.model,
        loaded.tokenizer,
        windows,
        record=mm,
        should_cancel=should_cancel,
        on_progress=lambda f, m: on_progress(f, f"baseline: {m}"),
    )
    summary = {"perplexity": res.perplexity, "bits_per_byte": res.bits_per_byte}
    store.commit(mm, summary)
    return summary


def _stats_before(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {n: weight_stats(layer_weight(m)).to_dict() for n, m in find_linears(model).items()}


def _layer_rows(
    model: nn.Module,
    before: dict[str, dict[str, Any]],
    errors: dict[str, float | None],
    acts: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for name, mod in find_linears(model).items():
        b = before.get(name)
        lo, hi = (b["edges"][0], b["edges"][-1]) if b else (None, None)
        after = weight_stats(layer_weight(mod), lo, hi).to_dict()
        scheme = mod.scheme() if hasattr(mod, "scheme") else str(mod.weight.dtype)
        rows.append(
            {
                "name": name,
                "scheme": scheme.replace("torch.", ""),
                "rel_error": errors.get(name),
                "before": b,
                "after": after,
                # Input activations of the uncompressed model on the calibration set.
                "act": (acts or {}).get(name),
            }
        )
    return rows


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
    recipe = spec.parsed_recipe()  # refuse a bad recipe before loading anything
    device = pick_device()
    torch.manual_seed(spec.calib_settings.seed)
    peak = PeakMemory(device)
    with peak.track():
        on_progress(0.01, f"loading model {spec.model}")
        loaded = load_model(spec.model, device=device)
        eval_text = resolve_text(spec.eval_set)
        windows = eval_windows(loaded.tokenizer, eval_text.text, spec.eval)
        store = LogprobStore(
            cache_dir / f"{_baseline_key(loaded, eval_text, spec.eval)}.f16",
            len(windows),
            spec.eval.ctx,
            _vocab_size(loaded.model),
        )
        base = _ensure_baseline(
            loaded, windows, store, should_cancel, lambda f, m: on_progress(0.05 + 0.25 * f, m)
        )
        before = _stats_before(loaded.model)
        prompt = torch.cat(windows)
        base_mem = weight_memory(loaded.model)
        base_latency = None
        if recipe.steps:  # the uncompressed model's speed, measured in this job to compare
            on_progress(0.3, "measuring the baseline's latency")
            base_latency = measure_latency(loaded.model, prompt, spec.eval)
        calib_text, batches, compress_s, errors, acts = None, None, 0.0, {}, {}
        if recipe.steps:
            calib_text = resolve_text(spec.calib)
            batches = calibration_batches(loaded.tokenizer, calib_text.text, spec.calib_settings)
            acts = collect_activation_stats(
                loaded.model,
                batches,
                should_cancel=should_cancel,
                on_progress=lambda f, m: on_progress(0.3, m),
            )
            t0 = time.perf_counter()
            reports = apply_recipe(
                loaded.model,
                recipe,
                on_progress=lambda f, m: on_progress(0.3 + 0.4 * f, m),
                should_cancel=should_cancel,
                calib_batches=batches,
            )
            compress_s = time.perf_counter() - t0
            errors = {r.name: r.rel_error for r in reports}
        on_progress(0.7, "evaluating the compressed model")
        reset_path_log()
        res = evaluate(
            loaded.model,
            loaded.tokenizer,
            windows,
            baseline=store.reader(),
            should_cancel=should_cancel,
            on_progress=lambda f, m: on_progress(0.7 + 0.2 * f, m),
        )
        on_progress(0.9, "measuring latency")
        prefill_ms, decode_tok_s = measure_latency(loaded.model, prompt, spec.eval)
        kernel_paths = path_log()  # the integer kernel paths that really ran
        mem = weight_memory(loaded.model)
    base_prefill_ms, base_decode_tok_s = base_latency or (prefill_ms, decode_tok_s)
    speed = speed_vs_baseline(
        mem.weight_bytes,
        prefill_ms,
        decode_tok_s,
        base_mem.weight_bytes,
        base_prefill_ms,
        base_decode_tok_s,
    )
    saved = None
    if spec.save_model and recipe.steps and save_dir is not None:
        on_progress(0.95, "saving the compressed model")
        saved = save_compressed(loaded.model.cpu(), save_dir, recipe, loaded.tokenizer)
    layer_rows = _layer_rows(loaded.model, before, errors, acts)
    errs = [e for e in errors.values() if e is not None]
    metrics = {
        "perplexity": res.perplexity,
        "bits_per_byte": res.bits_per_byte,
        "kl_to_baseline": res.kl_to_baseline,
        "top1_agreement": res.top1_agreement,
        "baseline_perplexity": base["perplexity"],
        "baseline_bits_per_byte": base["bits_per_byte"],
        "weight_bytes": mem.weight_bytes,
        "bits_per_weight": mem.bits_per_weight,
        "compressed_bits_per_weight": mem.compressed_bits_per_weight,
        "linear_weights": mem.linear_weights,
        "n_params": loaded.n_params,
        "peak_mem_bytes": peak.peak,
        "prefill_ms": prefill_ms,
        "decode_tok_s": decode_tok_s,
        "baseline_weight_bytes": base_mem.weight_bytes,
        "baseline_prefill_ms": base_prefill_ms,
        "baseline_decode_tok_s": base_decode_tok_s,
        **speed,
        "compress_s": compress_s,
        "mean_layer_error": sum(errs) / len(errs) if errs else None,
        "eval_tokens_used": res.n_tokens,
        "eval_bytes_used": res.n_bytes,
        "model_note": loaded.note,
        "kernel_paths": kernel_paths,
        "saved_model": str(saved) if saved else None,
        "saved_model_bytes": folder_bytes(saved) if saved else None,
    }
    fingerprint = {
        "model": loaded.model_id,
        "revision": loaded.revision,
        "recipe": json.loads(recipe.to_json()),
        "recipe_name": recipe.name,
        "eval_set": {
            "name": eval_text.name,
            "sha256": eval_text.sha256,
            "bytes": eval_text.n_bytes,
        },
        "calib_set": None
        if calib_text is None
        else {"name": calib_text.name, "sha256": calib_text.sha256, "bytes": calib_text.n_bytes},
        "eval_settings": spec.eval.to_dict(),
        "calib_settings": spec.calib_settings.to_dict(),
        "seed": spec.calib_settings.seed,
        "packages": package_versions(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    on_progress(1.0, "done")
    return JobResult(metrics=metrics, layers=layer_rows, fingerprint=fingerprint)
