"""What a run stores, typed: the result (one field per catalogued metric), one row per
linear layer, and the fingerprint.

Each record writes the JSON the database has always held (same keys) and reads rows
written by earlier versions: a missing key reads as None, an unknown one is kept.
The recipe is stored once, in the job's spec; the fingerprint holds a reference to it
(its SHA-256), and old fingerprints that copied the steps still read.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from runs import catalogue as cat


def as_float(value: Any, *, finite: bool = False) -> float:
    """A stored number as a float; NaN for None, text, booleans (and, with ``finite``,
    for infinities), so a missing metric is an empty cell, never an error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value) if not finite or math.isfinite(value) else float("nan")


def _known(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the keys ``cls`` has fields for, everything else) of a stored dict."""
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in names}, {
        k: v for k, v in data.items() if k not in names
    }


@dataclass
class LayerRow:
    """One linear layer of a finished run: how it is stored and what compression did."""

    name: str
    scheme: str = ""  # the stored format's detailed label, e.g. int4-sym-g128
    format: str | None = None  # stored format, e.g. "affine-int", "dense" (None: old row)
    bits: float | None = None  # nominal bits per stored weight value
    weight_bytes: int | None = None  # bytes of the module's tensors as stored
    n_weights: int | None = None
    rel_error: float | None = None  # ||WX - W'X|| / ||WX|| on calibration inputs
    before: dict[str, Any] | None = None  # weight statistics of the uncompressed layer
    after: dict[str, Any] | None = None  # the same of the stored weights
    act: dict[str, Any] | None = None  # input activations on the calibration set
    sparsity_reached: float | None = None  # exact zeros / weights as stored (None: old row)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerRow:
        known, extra = _known(cls, data)
        return cls(**{"name": "?", **known}, extra=extra)


@dataclass
class RunResult:
    """The numbers of one run; field names are the catalogue's keys (a test checks)."""

    perplexity: float | None = None
    baseline_perplexity: float | None = None
    bits_per_byte: float | None = None
    baseline_bits_per_byte: float | None = None
    kl_to_baseline: float | None = None
    top1_agreement: float | None = None
    weight_bytes: int | None = None
    bits_per_weight: float | None = None
    compressed_bits_per_weight: float | None = None
    sparsity_reached: float | None = None  # zeros / weights of compressed linears (assemble)
    nominal_bits: list[float] | None = None
    peak_mem_bytes: int | None = None
    peak_host_rss_bytes: int | None = None  # core/onload.py, core/modes.py
    memory_mode: str | None = None
    estimated_peak_bytes: int | None = None
    prefill_ms: float | None = None
    decode_tok_s: float | None = None
    prefill_speedup: float | None = None
    decode_speedup: float | None = None
    smaller_but_slower: bool | None = None
    baseline_weight_bytes: int | None = None
    baseline_prefill_ms: float | None = None
    baseline_decode_tok_s: float | None = None
    compress_s: float | None = None
    mean_layer_error: float | None = None
    n_params: int | None = None
    linear_weights: int | None = None
    eval_tokens_used: int | None = None
    eval_bytes_used: int | None = None
    model_note: str | None = None
    kernel_paths: list[Any] | None = None
    saved_model: str | None = None
    saved_model_bytes: int | None = None
    task_scores: list[dict[str, Any]] | None = None  # runs/tasks.py
    baseline_task_scores: list[dict[str, Any]] | None = None
    generations: list[dict[str, Any]] | None = None  # runs/generations.py
    # latency spread and conditions (runs/latency.py); absent from older runs
    prefill_ms_q1: float | None = None
    prefill_ms_q3: float | None = None
    decode_tok_s_q1: float | None = None
    decode_tok_s_q3: float | None = None
    baseline_prefill_ms_q1: float | None = None
    baseline_prefill_ms_q3: float | None = None
    baseline_decode_tok_s_q1: float | None = None
    baseline_decode_tok_s_q3: float | None = None
    prefill_speedup_q1: float | None = None
    prefill_speedup_q3: float | None = None
    decode_speedup_q1: float | None = None
    decode_speedup_q3: float | None = None
    latency_verdict: str | None = None
    latency_report: list[Any] | None = None
    latency_repeats: int | None = None
    latency_threads: int | None = None
    latency_device: str | None = None
    latency_interleaved: bool | None = None
    load_before: float | None = None
    load_after: float | None = None
    compress_cpu_s: float | None = None
    calib_tokens_used: int | None = None
    calib_set_tokens: int | None = None
    predicted_kl: float | None = None  # a search's prediction (runs/search.py)
    predicted_bytes: int | None = None
    predicted_linear_ms: float | None = None
    kv_policy: str | None = None  # runs/kv_eval.py
    kv_bytes_per_token: float | None = None
    kv_bytes_per_token_analytic: float | None = None
    kv_peak_bytes: int | None = None
    kv_stream_tokens: int | None = None
    kv_perplexity: float | None = None
    kv_ref_perplexity: float | None = None
    kv_kl: float | None = None
    kv_top1_agreement: float | None = None
    kv_by_position: list[dict[str, Any]] | None = None
    kv_decode_tok_s: float | None = None
    kv_decode_speedup: float | None = None
    kv_passkey: list[dict[str, Any]] | None = None
    kv_attention: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON: every catalogued key in catalogue order, then the rest."""
        return {**{m.key: getattr(self, m.key) for m in cat.RESULT}, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunResult:
        known, extra = _known(cls, data or {})
        return cls(**known, extra=extra)


def nominal_bits(layer_bits: Sequence[float]) -> list[float]:
    """The distinct nominal bit widths of some layers, ascending."""
    return sorted({float(b) for b in layer_bits})


def _fmt_bits(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else f"{b:g}"


def bits_label(result: dict[str, Any]) -> str:
    """The Leaderboard's bit width of a run: "4", "4/8" (mixed), "32" (uncompressed).

    From the stored formats' ``nominal_bits``; a row written before they were recorded
    reads it back from its effective bits per compressed weight (scales and zero points
    add a fraction, so 4.125 reads as 4), else from the bits over all linears."""
    widths = result.get(cat.NOMINAL_BITS.key)
    if isinstance(widths, list) and widths:
        return "/".join(_fmt_bits(b) for b in nominal_bits(widths))
    for m in (cat.COMPRESSED_BITS_PER_WEIGHT, cat.BITS_PER_WEIGHT):
        effective = as_float(result.get(m.key), finite=True)
        if effective > 0:
            return _fmt_bits(math.floor(effective + 1e-9))
    return "?"


# --- the fingerprint --------------------------------------------------------------


def recipe_ref(steps: list[dict[str, Any]]) -> dict[str, str]:
    """What the fingerprint stores for the recipe: a reference to the spec's steps (their
    canonical JSON's SHA-256), so the steps are stored once and still identify the run."""
    canonical = json.dumps(steps, sort_keys=True)
    return {"in": "spec", "sha256": hashlib.sha256(canonical.encode()).hexdigest()}


def recipe_steps(fingerprint: dict[str, Any] | None, spec: dict[str, Any] | None) -> list:
    """The recipe steps a job ran: an old fingerprint's copy, else the spec's steps."""
    fp_recipe = (fingerprint or {}).get("recipe")
    if isinstance(fp_recipe, list):
        return fp_recipe
    return list((spec or {}).get("recipe") or [])
