"""The metric catalogue: each metric once, and no metric key typed anywhere else in the
packages that read results (a typo there would be a silent NaN column)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from runs import catalogue as cat
from runs.records import RunResult

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("runs", "workers", "ui", "app_pages")
CATALOGUE = ROOT / "runs" / "catalogue.py"


def _names() -> set[str]:
    """Every stored key and runs-frame column the catalogue defines."""
    return {m.key for m in cat.BY_KEY.values()} | {m.col for m in cat.RESULT}


def stray_literals(text: str, names: set[str]) -> list[str]:
    """Quoted strings that are exactly a metric key or column."""
    quoted = re.findall(r"""(?<![A-Za-z0-9_])(["'])([A-Za-z0-9_]+)\1""", text)
    return [word for _, word in quoted if word in names]


def test_no_metric_key_outside_the_catalogue() -> None:
    names = _names()
    found = []
    for pkg in SCANNED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == CATALOGUE:
                continue
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                for word in stray_literals(line, names):
                    found.append(f"{path.relative_to(ROOT)}:{lineno}: {word!r}")
    assert not found, "metric keys typed outside runs/catalogue.py:\n" + "\n".join(found)


def test_the_grep_sees_a_stray_key() -> None:
    names = _names()
    assert stray_literals('r.get("perplexity")', names) == ["perplexity"]
    assert stray_literals("df['weight_mb']", names) == ["weight_mb"]
    assert stray_literals('"perplexity of the model"', names) == []


def test_each_metric_once_with_what_the_ui_needs() -> None:
    keys = [m.key for m in cat.RESULT]
    assert len(keys) == len(set(keys))
    cols = [m.col for m in cat.RESULT]
    assert len(cols) == len(set(cols))
    for m in (*cat.RESULT, cat.LAYER_ERROR):
        assert m.label and m.definition, m.key
        assert m.better in (None, "lower", "higher")
    for m in cat.RUN_TABLE + cat.SUMMARY + cat.LATENCY + cat.PARETO:
        assert m in cat.RESULT
    assert all(m.axis and m.better for m in cat.LATENCY + cat.PARETO)


def test_result_record_fields_are_the_catalogue_keys() -> None:
    fields = [f.name for f in dataclasses.fields(RunResult) if f.name != "extra"]
    assert fields == [m.key for m in cat.RESULT]


def test_keys_of_earlier_databases_are_kept() -> None:
    """The keys main db52d58 wrote (tests/data/compresslab_v0.db.gz) still mean the same."""
    old = {
        "perplexity",
        "bits_per_byte",
        "kl_to_baseline",
        "top1_agreement",
        "baseline_perplexity",
        "baseline_bits_per_byte",
        "weight_bytes",
        "bits_per_weight",
        "compressed_bits_per_weight",
        "linear_weights",
        "n_params",
        "peak_mem_bytes",
        "prefill_ms",
        "decode_tok_s",
        "baseline_weight_bytes",
        "baseline_prefill_ms",
        "baseline_decode_tok_s",
        "prefill_speedup",
        "decode_speedup",
        "smaller_but_slower",
        "compress_s",
        "mean_layer_error",
        "eval_tokens_used",
        "eval_bytes_used",
        "model_note",
        "kernel_paths",
        "saved_model",
        "saved_model_bytes",
    }
    assert old <= set(cat.BY_KEY)
