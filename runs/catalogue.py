"""Every metric of a run, once: its stored key, label, unit, definition, which direction
is better, and how tables, figures and the CLI show it.

The keys are those of the result JSON stored with each job. Never rename one:
databases written by earlier versions store results under these keys. Everything
else (the pipeline's result, the CLI's ``--json``, the Compare / Leaderboard / Run
tables, the figures) reads them from here; ``tests/test_runs_catalogue.py`` fails on
a metric key typed anywhere else in runs/, workers/, ui/ or app_pages/.
"""

from __future__ import annotations

from collections.abc import Iterable
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
SPARSITY = Metric(
    "sparsity_reached",
    "Sparsity reached",
    "fraction",
    "exact zeros / weights of the linears the recipe compressed (of every linear when it "
    "compressed none), counted on the stored weights after every step (a later "
    "quantization step can move a zero); per layer in its row",
    fmt="%.4f",
    short="sparsity",
    axis="Sparsity reached (fraction of zero weights)",
)
LAYER_SPARSITY = Metric(
    "sparsity_reached",
    "Layer sparsity reached",
    "fraction",
    "exact zeros / weights of one linear, counted on its stored weights",
    fmt="%.4f",
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
PEAK_HOST_RSS_BYTES = Metric(
    "peak_host_rss_bytes",
    "Peak host memory",
    "bytes",
    "peak RSS of the worker process sampled every 50 ms during the job, on every device "
    "(on the CPU the same as peak memory)",
    "lower",
    "%.0f",
    short="peak host (MB)",
    column="peak_host_mb",
    scale=1 / MB,
    kind="size",
)
MEMORY_MODE = Metric(
    "memory_mode",
    "Memory mode",
    "",
    "'in memory' (the whole model on the device) or 'onloaded' (decoder blocks left in "
    "their safetensors files, one on the device at a time), as the device budget picked "
    "(core/modes.py)",
    kind="text",
)
ESTIMATED_PEAK_BYTES = Metric(
    "estimated_peak_bytes",
    "Estimated peak memory",
    "bytes",
    "the peak the pre-run estimate gave for the mode that ran (core/modes.py); null "
    "without a device budget",
    "lower",
    "%.0f",
    short="est. peak (MB)",
    column="estimated_peak_mb",
    scale=1 / MB,
    kind="size",
)
PREFILL_MS = Metric(
    "prefill_ms",
    "Prefill latency",
    "ms",
    "median milliseconds of a forward pass over a prompt of prompt_len tokens, "
    "batch 1, after one warm-up round, over `repeats` rounds (at least 3) timed in "
    "alternation with the baseline (latency_report has 2-3 prompt lengths)",
    "lower",
    "%.1f",
    short="prefill (ms)",
    axis="Prefill latency (ms, median)",
)
DECODE_TOK_S = Metric(
    "decode_tok_s",
    "Decode throughput",
    "tokens/s",
    "1 / median seconds of one greedy decode step (batch 1) with a KV cache after the "
    "prompt; latency_report also has batch 4",
    "higher",
    "%.1f",
    short="decode (tok/s)",
    axis="Decode throughput (tokens/s, median)",
)
PREFILL_SPEEDUP = Metric(
    "prefill_speedup",
    "Prefill speed-up over the baseline",
    "x",
    "median over rounds of baseline prefill ms / this run's prefill ms, timed in "
    "alternation in the same job (above 1: faster than the uncompressed model); empty "
    "when not measurable on this machine at this load (see latency_verdict)",
    "higher",
    "%.2fx",
    short="prefill speed-up",
)
DECODE_SPEEDUP = Metric(
    "decode_speedup",
    "Decode speed-up over the baseline",
    "x",
    "median over rounds of this run's decode tokens/s / the baseline's, timed in "
    "alternation in the same job; empty when not measurable (see latency_verdict)",
    "higher",
    "%.2fx",
    short="decode speed-up",
)
SMALLER_BUT_SLOWER = Metric(
    "smaller_but_slower",
    "Smaller but slower",
    "",
    "weights smaller than the uncompressed model's, yet prefill or decode measurably "
    f"slower (see latency_verdict: the middle half of the pair ratios below 1 beyond the "
    f"load factor) and by more than "
    f"{round(100 * (1 - 1 / SLOWER_TOLERANCE))}%: a space saving is not a speed-up",
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
    "prefill_ms of the uncompressed model, timed in this job in alternation with the "
    "compressed one (older runs: timed before compressing)",
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
    "wall seconds spent applying the recipe (calibration included); see compress_cpu_s "
    "for the CPU time of the same span",
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
_TASK_DEF = (
    "lm-evaluation-harness on the model in memory, one row per task and metric "
    "{task, metric, value, stderr, n, higher_is_better}: acc = fraction of examples whose "
    "highest-log-likelihood choice is the gold one; acc_norm = the same with each choice's "
    "log-likelihood divided by its length in bytes; stderr = sample standard deviation of "
    "the per-example scores / sqrt(n) (bootstrap for perplexities); n = examples scored "
    "(the job's task_limit caps it)"
)
TASK_SCORES = Metric("task_scores", "Task scores", "", _TASK_DEF, kind="list")
BASELINE_TASK_SCORES = Metric(
    "baseline_task_scores",
    "Baseline task scores",
    "",
    "the same for the uncompressed model, in the same job before compressing (cached "
    "per model, tasks, limit, task data and lm-eval version)",
    kind="list",
)
GENERATIONS = Metric(
    "generations",
    "Generations",
    "",
    "greedy continuations (argmax, KV cache, fixed length, seed recorded) of each prompt by "
    "the uncompressed and the compressed model in the same job: {prompt, baseline, run, "
    "first_diff}, each side {ids, pieces, text}; first_diff = index of the first differing "
    "token (null: identical)",
    kind="list",
)
# Task metrics are runs-frame columns "task:<task>:<metric>", one per task score seen.
TASK_COLUMN_PREFIX = "task:"
_LOWER_IS_BETTER_TASK_METRICS = frozenset({"perplexity", "word_perplexity", "byte_perplexity"})


def task_column(task: str, metric: str) -> str:
    return f"{TASK_COLUMN_PREFIX}{task}:{metric}"


def task_metric(column: str) -> Metric | None:
    """The metric of a task column ("task:arc_easy:acc"), None for any other column."""
    if not column.startswith(TASK_COLUMN_PREFIX) or column.count(":") != 2:
        return None
    _, task, metric = column.split(":")
    better: Better = "lower" if metric in _LOWER_IS_BETTER_TASK_METRICS else "higher"
    return Metric(
        column,
        f"{task} {metric}",
        "" if better == "lower" else "fraction",
        f"{metric} of task {task}; " + _TASK_DEF,
        better,
        "%.3f",
        axis=f"{task}: {metric} (lm-eval)",
    )


# Per linear layer (a layer row's rel_error), not a run-level result key.
LAYER_ERROR = Metric("layer_error", "Layer error", "relative", _LAYER_ERROR_DEF, "lower", "%.2e")

# --- latency spread and the conditions it was measured under (runs/latency.py) -------
_IQR = "first / third quartile (middle half) over the timed rounds of "
_PAIRS = "of the per-round pair ratios (baseline time / compressed time, timed interleaved)"


def _quartile(of: Metric, which: str, what: str) -> Metric:
    """The first or third quartile of a latency measure, for error bars."""
    return Metric(
        f"{of.key}_{which}",
        f"{of.label} ({which.upper()})",
        of.unit,
        ("first" if which == "q1" else "third") + " quartile " + what,
        of.better,
        of.fmt,
        short=f"{of.header} {which}",
    )


PREFILL_MS_Q1 = _quartile(PREFILL_MS, "q1", "of prefill_ms over the timed rounds")
PREFILL_MS_Q3 = _quartile(PREFILL_MS, "q3", "of prefill_ms over the timed rounds")
DECODE_TOK_S_Q1 = _quartile(DECODE_TOK_S, "q1", "of decode_tok_s over the timed rounds")
DECODE_TOK_S_Q3 = _quartile(DECODE_TOK_S, "q3", "of decode_tok_s over the timed rounds")
BASELINE_PREFILL_MS_Q1 = _quartile(BASELINE_PREFILL_MS, "q1", "of the baseline's prefill_ms")
BASELINE_PREFILL_MS_Q3 = _quartile(BASELINE_PREFILL_MS, "q3", "of the baseline's prefill_ms")
BASELINE_DECODE_TOK_S_Q1 = _quartile(BASELINE_DECODE_TOK_S, "q1", "of the baseline's tokens/s")
BASELINE_DECODE_TOK_S_Q3 = _quartile(BASELINE_DECODE_TOK_S, "q3", "of the baseline's tokens/s")
PREFILL_SPEEDUP_Q1 = _quartile(PREFILL_SPEEDUP, "q1", _PAIRS)
PREFILL_SPEEDUP_Q3 = _quartile(PREFILL_SPEEDUP, "q3", _PAIRS)
DECODE_SPEEDUP_Q1 = _quartile(DECODE_SPEEDUP, "q1", _PAIRS)
DECODE_SPEEDUP_Q3 = _quartile(DECODE_SPEEDUP, "q3", _PAIRS)
LATENCY_VERDICT = Metric(
    "latency_verdict",
    "Speed verdict",
    "",
    "per timed workload: the median speed-up with its middle half; faster / slower when "
    "the middle half of the pair ratios lies on one side of 1 beyond the load factor (how "
    "much the machine's load could slow a round: load average and others' CPU use over "
    "the CPUs) and the median exceeds the pairs' spread (q3/q1); no measurable difference "
    f"when the middle half lies within {round(100 * (SLOWER_TOLERANCE - 1))}% of 1 on a "
    "quiet machine; else 'not measurable on this machine at this load' (and no speed-up "
    "number is stored)",
    kind="text",
)
LATENCY_REPORT = Metric(
    "latency_report",
    "Latency report",
    "",
    "every timed workload (prefill at 2-3 prompt lengths, decode at batch 1 and 4): median, "
    "quartiles and min-max of the baseline and the compressed model (ms for prefill, "
    "tokens/s for decode) and of the pair ratios, and the verdict",
    kind="list",
)
LATENCY_REPEATS = Metric(
    "latency_repeats",
    "Latency rounds",
    "count",
    "timed rounds per workload after one discarded warm-up round; each round times the "
    "baseline and the compressed model back to back, the order alternating",
)
LATENCY_THREADS = Metric(
    "latency_threads", "Latency threads", "count", "torch.get_num_threads() while timing"
)
LATENCY_DEVICE = Metric(
    "latency_device",
    "Latency device",
    "",
    "the device (CPU model or GPU name) timed on",
    kind="text",
)
LATENCY_INTERLEAVED = Metric(
    "latency_interleaved",
    "Latency interleaved",
    "",
    "true: baseline and compressed model timed in alternation in the same stage (the "
    "baseline's original linears swapped in from a temporary copy); false: timed apart",
    kind="flag",
)
LOAD_BEFORE = Metric(
    "load_before",
    "Machine load before timing",
    "",
    "1-minute load average (runnable processes) just before the latency stage",
    "lower",
    "%.2f",
)
LOAD_AFTER = Metric(
    "load_after",
    "Machine load after timing",
    "",
    "1-minute load average just after the latency stage",
    "lower",
    "%.2f",
)
COMPRESS_CPU_S = Metric(
    "compress_cpu_s",
    "Compression CPU time",
    "s",
    "CPU seconds of the worker process (all threads) spent applying the recipe "
    "(time.process_time); compress_s is the wall time of the same span",
    "lower",
    "%.1f",
    short="compress CPU (s)",
    kind="duration",
)
CALIB_TOKENS_USED = Metric(
    "calib_tokens_used",
    "Calibration tokens used",
    "tokens",
    "tokens in the calibration batches the recipe really saw (samples x sequence length "
    "drawn from the set; fewer than requested when the set is short)",
)
CALIB_SET_TOKENS = Metric(
    "calib_set_tokens",
    "Calibration set tokens",
    "tokens",
    "tokens of the calibration set as tokenized (of the bounded prefix the windows are "
    "drawn from); when fewer than n_samples x seq_len the windows overlap",
)

PREDICTED_KL = Metric(
    "predicted_kl",
    "Predicted KL (search)",
    "nats/token",
    "for a recipe chosen by the budget search (runs/search.py): the sum over layers of "
    "each chosen candidate's KL to the baseline when only that layer is compressed so "
    "(additivity assumed); compare with kl_to_baseline, measured on the same windows",
    "lower",
    "%.2e",
    short="predicted KL",
)
PREDICTED_BYTES = Metric(
    "predicted_bytes",
    "Predicted bytes (search)",
    "bytes",
    "for a recipe chosen by the budget search: the sum of the chosen candidates' stored "
    "bytes of the searched layers, as the scoring runs measured them",
    "lower",
    "%.4g",
    short="predicted bytes",
    kind="size",
)
PREDICTED_LINEAR_MS = Metric(
    "predicted_linear_ms",
    "Predicted linear time (search)",
    "ms",
    "for a recipe chosen under a latency budget: the sum of the chosen candidates' op "
    "times of the searched linears at the search's target shape (latency_m tokens), each "
    "timed alone on the searching machine (median of interleaved repeats); leaves out "
    "attention, norms, embeddings, lm_head and the framework's overhead",
    "lower",
    "%.3g",
    short="predicted linear ms",
)

# How a job draws its calibration and evaluation windows (JobSpec.protocol,
# core.calib.PROTOCOLS): name -> definition, shown beside the New run option.
PROTOCOLS: dict[str, str] = {
    "default": "evaluation: the first eval_tokens tokens of the set, tokenized without "
    "special tokens (no BOS), in windows of ctx (the last may be shorter); calibration: "
    "windows at offsets drawn by a torch generator seeded with the seed, over a bounded "
    "prefix of the set, without special tokens",
    "reference": "as IST-DASLab/gptq and locuslab/wanda do: evaluation: the set tokenized "
    "as the model's tokenizer does by default (BOS first where it adds one), its first "
    "eval_tokens tokens in whole windows of ctx only; calibration: the whole set tokenized "
    "the same way, then random.seed(seed) and, per sample, "
    "i = random.randint(0, n - seq_len - 1), window tokens [i, i + seq_len)",
}

# A seed group (one recipe repeated over calibration seeds, queued as one sweep): the
# metrics whose mean and spread its summary reports (runs.sweep.seed_group_summary).
SEED_GROUP: tuple[Metric, ...] = (PERPLEXITY, KL_TO_BASELINE)
SEED_SPREAD_DEF = (
    "over the runs of one seed group (same recipe, calibration seeds seed, seed + 1, ...): "
    "mean, sample standard deviation (n - 1), minimum and maximum"
)

# Every run-level result key, in the order the Run page lists them.
# --- the key/value cache under a KV policy (runs/kv_eval.py, core/kv) -----------------
_KV_STREAM = (
    "decode-through-cache on one stream of the evaluation set (up to the model's trained "
    "length, 2048 tokens at most): a prefill of 64 tokens, then one token per forward "
    "pass through the cache; every later token is predicted from the cache as it stands"
)
KV_POLICY = Metric(
    "kv_policy",
    "KV cache policy",
    "",
    "the cache policy the recipe's KV steps chose (core.kv.cache.KVSpec), or none",
    kind="text",
)
KV_BYTES_PER_TOKEN = Metric(
    "kv_bytes_per_token",
    "KV bytes per token",
    "bytes",
    "bytes of every tensor the cache stores (codes, scales, zero points, full-precision "
    "residual) at the end of the stream / tokens it holds then; all layers, keys and values",
    "lower",
    "%.1f",
    short="KV B/token",
    axis="KV cache bytes per token",
)
KV_BYTES_PER_TOKEN_ANALYTIC = Metric(
    "kv_bytes_per_token_analytic",
    "KV bytes per token (formula)",
    "bytes",
    "2 x layers x KV heads x head dim x bits / 8, plus float16 scales (and zero points) per "
    "group; the per-channel keys' residual left out",
    "lower",
    "%.1f",
)
KV_PEAK_BYTES = Metric(
    "kv_peak_bytes",
    "KV cache peak",
    "bytes",
    "largest size of the cache's stored tensors over the stream",
    "lower",
    "%.4g",
    kind="size",
)
KV_STREAM_TOKENS = Metric(
    "kv_stream_tokens",
    "KV stream tokens",
    "tokens",
    "tokens of the stream " + _KV_STREAM,
    None,
    "%d",
)
KV_PERPLEXITY = Metric(
    "kv_perplexity",
    "Perplexity through the cache",
    "",
    "exp(mean NLL) of the stream's tokens after the prefill, " + _KV_STREAM,
    "lower",
    "%.3f",
    short="KV ppl",
    axis="Perplexity through the KV cache",
)
KV_REF_PERPLEXITY = Metric(
    "kv_ref_perplexity",
    "Perplexity through the plain cache",
    "",
    "the same with the plain "
    "(uncompressed, nothing evicted) cache, on the same model in the same job",
    "lower",
    "%.3f",
)
KV_KL = Metric(
    "kv_kl",
    "KL to the plain cache",
    "nats/token",
    "mean over the stream's predicted tokens "
    "of KL(plain cache || this cache) of the next-token distributions",
    "lower",
    "%.2e",
    short="KV KL",
    axis="KL to the plain cache (nats/token)",
)
KV_TOP1 = Metric(
    "kv_top1_agreement",
    "Top-1 agreement with the plain cache",
    "fraction",
    "fraction of predicted tokens whose argmax matches the plain cache's",
    "higher",
    "%.3f",
)
KV_BY_POSITION = Metric(
    "kv_by_position",
    "KV metrics by position",
    "",
    "per position bucket (<=256, <=512, "
    "<=1024, <=2048): mean NLL, KL and top-1 agreement through this cache and the plain one",
    kind="list",
)
KV_DECODE_TOK_S = Metric(
    "kv_decode_tok_s",
    "Decode through the cache",
    "tokens/s",
    "stream tokens decoded per second through this cache (prefill excluded)",
    "higher",
    "%.1f",
)
KV_DECODE_SPEEDUP = Metric(
    "kv_decode_speedup",
    "Decode speed-up vs plain cache",
    "x",
    "kv_decode_tok_s / the plain cache's, same stream, same job",
    "higher",
    "%.2f",
)
KV_PASSKEY = Metric(
    "kv_passkey",
    "Passkey retrieval",
    "",
    "a passkey line planted at 10%, 50% and 90% "
    "depth of a held-out context as long as the stream, asked for at the end (the context "
    "fed in 32-token chunks, evicting between them): found or not and the answer's NLL, "
    "with this cache and the plain one",
    kind="list",
)
KV_ATTENTION = Metric(
    "kv_attention",
    "Attention implementation (KV stage)",
    "",
    "eager when the policy needs attention weights (H2O), else the model's default",
    kind="text",
)
KV_METRICS: tuple[Metric, ...] = (
    KV_POLICY,
    KV_BYTES_PER_TOKEN,
    KV_BYTES_PER_TOKEN_ANALYTIC,
    KV_PEAK_BYTES,
    KV_STREAM_TOKENS,
    KV_PERPLEXITY,
    KV_REF_PERPLEXITY,
    KV_KL,
    KV_TOP1,
    KV_BY_POSITION,
    KV_DECODE_TOK_S,
    KV_DECODE_SPEEDUP,
    KV_PASSKEY,
    KV_ATTENTION,
)

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
    SPARSITY,
    NOMINAL_BITS,
    PEAK_MEM_BYTES,
    PEAK_HOST_RSS_BYTES,
    MEMORY_MODE,
    ESTIMATED_PEAK_BYTES,
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
    TASK_SCORES,
    BASELINE_TASK_SCORES,
    GENERATIONS,
    PREFILL_MS_Q1,
    PREFILL_MS_Q3,
    DECODE_TOK_S_Q1,
    DECODE_TOK_S_Q3,
    BASELINE_PREFILL_MS_Q1,
    BASELINE_PREFILL_MS_Q3,
    BASELINE_DECODE_TOK_S_Q1,
    BASELINE_DECODE_TOK_S_Q3,
    PREFILL_SPEEDUP_Q1,
    PREFILL_SPEEDUP_Q3,
    DECODE_SPEEDUP_Q1,
    DECODE_SPEEDUP_Q3,
    LATENCY_VERDICT,
    LATENCY_REPORT,
    LATENCY_REPEATS,
    LATENCY_THREADS,
    LATENCY_DEVICE,
    LATENCY_INTERLEAVED,
    LOAD_BEFORE,
    LOAD_AFTER,
    COMPRESS_CPU_S,
    CALIB_TOKENS_USED,
    CALIB_SET_TOKENS,
    PREDICTED_KL,
    PREDICTED_BYTES,
    PREDICTED_LINEAR_MS,
    *KV_METRICS,
)

# Metric column -> (its first, its third quartile): the error bars of the charts.
SPREAD: dict[str, tuple[Metric, Metric]] = {
    PREFILL_MS.col: (PREFILL_MS_Q1, PREFILL_MS_Q3),
    DECODE_TOK_S.col: (DECODE_TOK_S_Q1, DECODE_TOK_S_Q3),
    PREFILL_SPEEDUP.col: (PREFILL_SPEEDUP_Q1, PREFILL_SPEEDUP_Q3),
    DECODE_SPEEDUP.col: (DECODE_SPEEDUP_Q1, DECODE_SPEEDUP_Q3),
    BASELINE_PREFILL_MS.col: (BASELINE_PREFILL_MS_Q1, BASELINE_PREFILL_MS_Q3),
    BASELINE_DECODE_TOK_S.col: (BASELINE_DECODE_TOK_S_Q1, BASELINE_DECODE_TOK_S_Q3),
}

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
    SPARSITY,
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
    SPARSITY,
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
    """The metric of a result key or runs-frame column (task columns too), if catalogued."""
    return BY_KEY.get(key) or BY_COLUMN.get(key) or task_metric(key)


def axes(columns: Iterable[str] = ()) -> dict[str, tuple[str, Better]]:
    """Runs-frame column -> (axis title, better direction) of every plottable metric, and
    of the task columns among ``columns`` (a runs frame's columns)."""
    out = {m.col: (m.axis, m.better or "lower") for m in RESULT if m.axis}
    for col in columns:
        if (m := task_metric(col)) is not None:
            out[col] = (m.axis, m.better or "higher")
    return out
