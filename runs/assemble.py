"""A finished job's records: the result, one row per linear (bit width, bytes and
format read from the stored modules), and the fingerprint."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from core.modes import IN_MEMORY
from core.onload import each_linear
from core.save import folder_bytes
from core.stats import layer_weight, weight_stats
from core.storage import storage_info
from runs import catalogue as cat
from runs import latency
from runs.records import LayerRow, RunResult, nominal_bits, recipe_ref

if TYPE_CHECKING:
    from runs.pipeline import Job


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "bitsandbytes", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _layer_row(name: str, mod: nn.Module, job: Job) -> LayerRow:
    b = job.before.get(name)
    lo, hi = (b["edges"][0], b["edges"][-1]) if b else (None, None)
    info = storage_info(mod)
    after = weight_stats(layer_weight(mod), lo, hi).to_dict()
    return LayerRow(
        name=name,
        scheme=info.scheme,
        format=info.format,
        bits=info.bits,
        weight_bytes=info.weight_bytes,
        n_weights=info.n_weights,
        rel_error=job.errors.get(name),
        before=b,
        after=after,
        act=job.acts.get(name),  # input activations of the uncompressed model
        sparsity_reached=after["zeros"],
    )


def layer_rows(job: Job) -> list[LayerRow]:
    assert job.loaded is not None
    return [_layer_row(n, m, job) for n, m in each_linear(job.loaded.model)]


def run_nominal_bits(rows: list[LayerRow], compressed: set[str]) -> list[float]:
    """Bit widths of the layers the recipe compressed; of every layer if it compressed none."""
    chosen = [r for r in rows if r.name in compressed] or rows
    return nominal_bits([r.bits for r in chosen if r.bits is not None])


def run_sparsity(rows: list[LayerRow], compressed: set[str]) -> float | None:
    """Exact zeros / weights over the layers the recipe compressed (every layer if none),
    from the rows' per-layer sparsity; None without counted rows."""
    chosen = [r for r in rows if r.name in compressed] or rows
    counted = [
        (r.sparsity_reached, r.n_weights)
        for r in chosen
        if r.sparsity_reached is not None and r.n_weights
    ]
    total = sum(n for _, n in counted)
    return sum(z * n for z, n in counted) / total if total else None


def _speed(job: Job) -> dict[str, Any]:
    """Latency, its spread and the speed-ups (only where measurable) from the job's
    latency report; without a recipe the baseline is this very measurement."""
    assert job.mem and job.base_mem and job.latency_report
    return latency.result_fields(
        job.latency_report, job.mem.weight_bytes, job.base_mem.weight_bytes
    )


def run_result(job: Job, rows: list[LayerRow]) -> RunResult:
    assert job.res and job.mem and job.base_mem and job.latency and job.loaded
    errs = [e for e in job.errors.values() if e is not None]
    return RunResult(
        perplexity=job.res.perplexity,
        bits_per_byte=job.res.bits_per_byte,
        kl_to_baseline=job.res.kl_to_baseline,
        top1_agreement=job.res.top1_agreement,
        baseline_perplexity=job.base[cat.PERPLEXITY.key],
        baseline_bits_per_byte=job.base[cat.BITS_PER_BYTE.key],
        weight_bytes=job.mem.weight_bytes,
        bits_per_weight=job.mem.bits_per_weight,
        compressed_bits_per_weight=job.mem.compressed_bits_per_weight,
        nominal_bits=run_nominal_bits(rows, set(job.errors)),
        sparsity_reached=run_sparsity(rows, set(job.errors)),
        linear_weights=job.mem.linear_weights,
        n_params=job.loaded.n_params,
        peak_mem_bytes=job.peak.peak,
        peak_host_rss_bytes=job.host_peak.peak,
        memory_mode=job.modes.mode if job.modes else IN_MEMORY,
        estimated_peak_bytes=job.modes.peak if job.modes else None,
        baseline_weight_bytes=job.base_mem.weight_bytes,
        **_speed(job),
        compress_s=job.compress_s,
        compress_cpu_s=job.compress_cpu_s if job.compresses else None,
        calib_tokens_used=sum(b.numel() for b in job.batches) if job.batches else None,
        calib_set_tokens=job.calib_set_tokens,
        mean_layer_error=sum(errs) / len(errs) if errs else None,
        eval_tokens_used=job.res.n_tokens,
        eval_bytes_used=job.res.n_bytes,
        model_note=job.loaded.note,
        kernel_paths=job.kernel_paths,
        saved_model=str(job.saved) if job.saved else None,
        saved_model_bytes=folder_bytes(job.saved) if job.saved else None,
        predicted_kl=job.spec.prediction.get(cat.PREDICTED_KL.key),
        predicted_bytes=job.spec.prediction.get(cat.PREDICTED_BYTES.key),
        predicted_linear_ms=job.spec.prediction.get(cat.PREDICTED_LINEAR_MS.key),
    )


def _text_facts(text: Any) -> dict[str, Any] | None:
    return (
        None if text is None else {"name": text.name, "sha256": text.sha256, "bytes": text.n_bytes}
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def fingerprint(job: Job) -> dict[str, Any]:
    """What it takes to reproduce the numbers. The recipe is a reference to the spec's
    steps (stored there, once), which still tells two recipes apart in the hash."""
    assert job.loaded is not None
    return {
        "model": job.loaded.model_id,
        "revision": job.loaded.revision,
        "recipe": recipe_ref(job.recipe.to_list()),
        "recipe_name": job.recipe.name,
        "eval_set": _text_facts(job.eval_text),
        "calib_set": _text_facts(job.calib_text),
        "eval_settings": job.spec.eval.to_dict(),
        "calib_settings": job.spec.calib_settings.to_dict(),
        "seed": job.spec.calib_settings.seed,
        "protocol": job.spec.protocol,
        "packages": package_versions(),
        "device": str(job.device),
        "device_name": _device_name(job.device),
        "threads": torch.get_num_threads(),
    }
