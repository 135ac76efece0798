"""Every metric of a run, once: its stored key, label, unit, definition, which direction
is better, and how tables, figures and the CLI show it.

The keys are those of the result JSON stored with each job. Never rename one:
databases written by earlier versions store results under these keys. Everything
else (the pipeline's result, the CLI's ``--json``, the Compare / Leaderboard / Run
tables, the figures) reads them from here; ``tests/test_runs_catalogue.py`` fails on
a metric key typed anywhere else in runs/, workers/, ui/ or app_pages/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.metrics import SLOWER_TOLERANCE

Better = Literal["lower", "higher"]
# How a value reads: a number, a yes/no flag, text, a list, a size in bytes, seconds.
Kind = Literal["number", "flag", "text", "list", "size", "duration"]
MB = 1e6  # tables and charts use decimal megabytes (10^6 bytes)


@dataclass(frozen=True)
class Metric:
    """One measured number (or fact) of a run."""

    key: str  # key in the stored result JSON; never renamed (old databases use it)
    label: str  # full name, e.g. on the Run page's metric rows
    unit: str  # "" when dimensionless
    definition: str  # what exactly was measured, shown as help everywhere
    better: Better | None = None  # which direction is an improvement; None: neither
    fmt: str = "%.4g"  # printf format of a table column
    short: str = ""  # table column header (defaults to label)
    column: str = ""  # column of the runs frame (defaults to key)
    scale: float = 1.0  # frame value = stored value * scale (bytes -> MB)
    axis: str = ""  # figure axis title, with units; "" when not plotted
    kind: Kind = "number"

    @property
    def col(self) -> str:
        """The runs frame's column of this metric."""
        return self.column or self.key

    @property
    def header(self) -> str:
        return self.short or self.label


_LAYER_ERROR_DEF = "||WX - W'X|| / ||WX|| per linear on calibration inputs"

PERPLEXITY = Metric(
    "perplexity",
    "Perplexity",
    "",
    "exp(mean token NLL) over non-overlapping windows of ctx tokens (stride = ctx); "
    "the first token of each window is not predicted",
    "lower",
    "%.3f",
    short="perplexity",
    axis="Perplexity (exp of mean token NLL)",
)
BASELINE_PERPLEXITY = Metric(
    "baseline_perplexity",
    "Baseline perplexity",
    "",
    "perplexity of the uncompressed model on the same windows "
    "(computed once per model, evaluation set and settings, then reused)",
    "lower",
    "%.3f",
    short="baseline ppl",
)
BITS_PER_BYTE = Metric(
    "bits_per_byte",
    "Bits per byte",
    "bits/byte",
    "total NLL in bits / UTF-8 bytes of the predicted tokens' text",
    "lower",
    "%.4f",
    short="bits/byte",
    axis="Bits per byte",
)
BASELINE_BITS_PER_BYTE = Metric(
    "baseline_bits_per_byte",
    "Baseline bits per byte",
    "bits/byte",
    "bits per byte of the uncompressed model on the same windows",
    "lower",
)
KL_TO_BASELINE = Metric(
    "kl_to_baseline",
    "KL to baseline",
    "nats/token",
    "mean over evaluation tokens of KL(P_baseline || P_compressed) of the "
    "next-token distribution, in nats; both log-prob sets rounded to float16 (the baseline's "
    "cached precision), so the baseline against itself scores exactly 0",
    "lower",
    "%.2e",
    short="KL (nats)",
    axis="KL to baseline (nats/token)",
)
TOP1_AGREEMENT = Metric(
    "top1_agreement",
    "Top-1 agreement",
    "fraction",
    "fraction of evaluation tokens where both models' most likely next token "
    "agree (same float16 rounding; the baseline against itself scores exactly 1)",
    "higher",
    "%.3f",
    short="top-1 agree",
)
WEIGHT_BYTES = Metric(
    "weight_bytes",
    "Weight memory",
    "bytes",
    "bytes of every parameter and buffer of the model as stored (packed integers, "
    "scales, zero points, unquantized layers), tied tensors counted once",
    "lower",
    "%.3f",
    short="weights (MB)",
    column="weight_mb",
    scale=1 / MB,
    axis="Weight memory (MB, as stored)",
    kind="size",
)
BITS_PER_WEIGHT = Metric(
    "bits_per_weight",
    "Bits per weight (all linears)",
    "bits",
    "8 x storage bytes of all linear layers (compressed or not, biases "
    "excluded) / their number of weights",
    "lower",
    "%.2f",
    short="bits/weight",
    axis="Bits per weight (linear layers)",
)
COMPRESSED_BITS_PER_WEIGHT = Metric(
    "compressed_bits_per_weight",
    "Bits per weight (compressed linears)",
    "bits",
    "the same over the linear layers the recipe compressed",
    "lower",
    "%.2f",
    short="bits/weight (compressed)",
)
NOMINAL_BITS = Metric(
    "nominal_bits",
    "Nominal bit widths",
    "bits",
    "distinct bits per stored weight value of the linears the recipe compressed (of every "
    "linear when it compressed none), read from the stored formats; scales, zero points "
    "and indices not included",
    kind="list",
)
PEAK_MEM_BYTES = Metric(
    "peak_mem_bytes",
    "Peak memory",
    "bytes",
    "peak RSS of the worker process sampled every 50 ms during the job (CPU), or "
    "torch.cuda.max_memory_allocated (GPU)",
    "lower",
    "%.0f",
    short="peak mem (MB)",
    column="peak_mem_mb",
    scale=1 / MB,
    kind="size",
)
PREFILL_MS = Metric(
    "prefill_ms",
    "Prefill latency",
    "ms",
    "median milliseconds of a forward pass over a prompt of prompt_len tokens, "
    "batch 1, after one warm-up, over `repeats` runs",
    "lower",
    "%.1f",
    short="prefill (ms)",
    axis="Prefill latency (ms, median)",
)
DECODE_TOK_S = Metric(
    "decode_tok_s",
    "Decode throughput",
    "tokens/s",
    "1 / median seconds of one decode step with a KV cache after the prompt",
    "higher",
    "%.1f",
    short="decode (tok/s)",
    axis="Decode throughput (tokens/s, median)",
)
PREFILL_SPEEDUP = Metric(
    "prefill_speedup",
    "Prefill speed-up over the baseline",
    "x",
    "baseline prefill ms / this run's prefill ms, both measured in the same "
    "job on the same device (above 1: faster than the uncompressed model)",
    "higher",
    "%.2fx",
    short="prefill speed-up",
)
DECODE_SPEEDUP = Metric(
    "decode_speedup",
    "Decode speed-up over the baseline",
    "x",
    "this run's decode tokens/s / the baseline's, measured in the same job",
    "higher",
    "%.2fx",
    short="decode speed-up",
)
SMALLER_BUT_SLOWER = Metric(
    "smaller_but_slower",
    "Smaller but slower",
    "",
    "weights smaller than the uncompressed model's, yet prefill or decode "
    f"more than {round(100 * (1 - 1 / SLOWER_TOLERANCE))}% slower: a space saving is not a "
    "speed-up",
    short="smaller but slower",
    kind="flag",
)
BASELINE_WEIGHT_BYTES = Metric(
    "baseline_weight_bytes",
    "Baseline weight memory",
    "bytes",
    "weight_bytes of the uncompressed model as loaded in this job",
    "lower",
    kind="size",
)
BASELINE_PREFILL_MS = Metric(
    "baseline_prefill_ms",
    "Baseline prefill latency",
    "ms",
    "prefill_ms of the uncompressed model, measured in this job before compressing",
    "lower",
)
BASELINE_DECODE_TOK_S = Metric(
    "baseline_decode_tok_s",
    "Baseline decode throughput",
    "tokens/s",
    "decode_tok_s of the uncompressed model, measured in this job",
    "higher",
)
COMPRESS_S = Metric(
    "compress_s",
    "Compression time",
    "s",
    "wall seconds spent applying the recipe (calibration included)",
    "lower",
    "%.1f",
    short="compress (s)",
    kind="duration",
)
MEAN_LAYER_ERROR = Metric(
    "mean_layer_error",
    "Mean layer error",
    "relative",
    "mean over compressed linears of " + _LAYER_ERROR_DEF,
    "lower",
    "%.2e",
    short="layer error",
)
N_PARAMS = Metric(
    "n_params", "Parameters", "count", "parameters of the model as loaded (before compression)"
)
LINEAR_WEIGHTS = Metric(
    "linear_weights",
    "Linear-layer weights",
    "count",
    "weights of all linear layers (biases excluded)",
)
EVAL_TOKENS_USED = Metric(
    "eval_tokens_used",
    "Evaluation tokens used",
    "tokens",
    "tokens actually predicted (the first token of each window is context)",
)
EVAL_BYTES_USED = Metric(
    "eval_bytes_used",
    "Evaluation bytes used",
    "bytes",
    "UTF-8 bytes of the predicted tokens' text (denominator of bits per byte)",
)
MODEL_NOTE = Metric(
    "model_note",
    "Model note",
    "",
    "what to keep in mind about the model (e.g. random weights)",
    kind="text",
)
KERNEL_PATHS = Metric(
    "kernel_paths",
    "Kernel paths",
    "",
    "the path each compresslab:: integer op took while evaluating and timing "
    "(op, device, path, batch-size bucket, calls); empty when no integer op ran",
    kind="list",
)
SAVED_MODEL = Metric(
    "saved_model",
    "Saved model",
    "",
    "folder where the worker kept the compressed model (null: not kept)",
    kind="text",
)
SAVED_MODEL_BYTES = Metric(
    "saved_model_bytes",
    "Saved model size",
    "bytes",
    "size of that folder: weights as stored, configs, tokenizer",
    kind="size",
)
# Per linear layer (a layer row's rel_error), not a run-level result key.
LAYER_ERROR = Metric("layer_error", "Layer error", "relative", _LAYER_ERROR_DEF, "lower", "%.2e")

# Every run-level result key, in the order the Run page lists them.
RESULT: tuple[Metric, ...] = (
    PERPLEXITY,
    BASELINE_PERPLEXITY,
    BITS_PER_BYTE,
    BASELINE_BITS_PER_BYTE,
    KL_TO_BASELINE,
    TOP1_AGREEMENT,
    WEIGHT_BYTES,
    BITS_PER_WEIGHT,
    COMPRESSED_BITS_PER_WEIGHT,
    NOMINAL_BITS,
    PEAK_MEM_BYTES,
    PREFILL_MS,
    DECODE_TOK_S,
    PREFILL_SPEEDUP,
    DECODE_SPEEDUP,
    SMALLER_BUT_SLOWER,
    BASELINE_WEIGHT_BYTES,
    BASELINE_PREFILL_MS,
    BASELINE_DECODE_TOK_S,
    COMPRESS_S,
    MEAN_LAYER_ERROR,
    N_PARAMS,
    LINEAR_WEIGHTS,
    EVAL_TOKENS_USED,
    EVAL_BYTES_USED,
    MODEL_NOTE,
    KERNEL_PATHS,
    SAVED_MODEL,
    SAVED_MODEL_BYTES,
)

# Columns of the runs tables (Compare, Leaderboard), in display order.
RUN_TABLE: tuple[Metric, ...] = (
    PERPLEXITY,
    BASELINE_PERPLEXITY,
    BITS_PER_BYTE,
    KL_TO_BASELINE,
    TOP1_AGREEMENT,
    WEIGHT_BYTES,
    BITS_PER_WEIGHT,
    COMPRESSED_BITS_PER_WEIGHT,
    PREFILL_MS,
    DECODE_TOK_S,
    PREFILL_SPEEDUP,
    DECODE_SPEEDUP,
    SMALLER_BUT_SLOWER,
    PEAK_MEM_BYTES,
    COMPRESS_S,
    MEAN_LAYER_ERROR,
)

# What the CLI prints first for a run, and per run of a sweep.
SUMMARY: tuple[Metric, ...] = (
    PERPLEXITY,
    BITS_PER_BYTE,
    KL_TO_BASELINE,
    TOP1_AGREEMENT,
    WEIGHT_BYTES,
    BITS_PER_WEIGHT,
    PEAK_MEM_BYTES,
    PREFILL_MS,
    DECODE_TOK_S,
    COMPRESS_S,
)

# The latency measures Compare plots against perplexity.
LATENCY: tuple[Metric, ...] = (PREFILL_MS, DECODE_TOK_S)

# The Leaderboard's Pareto objectives: memory, latency, quality.
PARETO: tuple[Metric, ...] = (WEIGHT_BYTES, PREFILL_MS, PERPLEXITY)

BY_KEY: dict[str, Metric] = {m.key: m for m in (*RESULT, LAYER_ERROR)}
BY_COLUMN: dict[str, Metric] = {m.col: m for m in RESULT}


def definition(key: str) -> str:
    """The definition of a result key or runs-frame column ("" if unknown)."""
    m = BY_KEY.get(key) or BY_COLUMN.get(key)
    return m.definition if m else ""


def lookup(key: str) -> Metric | None:
    """The metric of a result key or runs-frame column, if catalogued."""
    return BY_KEY.get(key) or BY_COLUMN.get(key)


def axes() -> dict[str, tuple[str, Better]]:
    """Runs-frame column -> (axis title, better direction) of every plottable metric."""
    return {m.col: (m.axis, m.better or "lower") for m in RESULT if m.axis}
