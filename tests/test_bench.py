"""The benchmark scripts still run and report what they promise (no timing is asserted)."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench import int8_gemm


def test_int8_gemm_row_has_every_column_and_the_llm_int8_comparison() -> None:
    torch.manual_seed(0)
    args = argparse.Namespace(quick=False, m=[3], k=[128], repeats=1, max_call_s=2.0, clock="wall")
    (row,) = int8_gemm.run(args)
    for key in ("fp32_ms", "w8a8_ms", "int8_weight_only_ms", "int4_weight_only_ms", "llm_int8_ms"):
        assert row[key] > 0, key
    # the op columns are the ops' own calls: their path is the one the dispatcher took
    assert row["w8a8_path"] in int8_gemm.CANDIDATES["int8_linear"]
    assert row["int4_weight_only_path"] in int8_gemm.CANDIDATES["int4_weight_only_linear"]
    # the ceilings, timed in the same round
    assert row["ceiling_int_ms"] > 0 and row["ceiling_bytes_ms"] > 0
    assert row["ceiling_int_ms"] <= row["int_mm_ms"]
    for name in ("w8a8", "int8_weight_only", "int4_weight_only"):
        assert row[f"{name}_pct_ceiling"] is not None, name
    # decode sizes are also timed in sequence over distinct weights, against their own fp32
    for name in ("fp32", "stream_i4", "int8_weight_only", "int4_weight_only"):
        assert row[f"seq_{name}_ms"] > 0, name
    want = round(row["seq_fp32_ms"] / row["seq_int4_weight_only_ms"], 3)
    assert row["seq_int4_weight_only_x_fp32"] == want
    assert row["seq_int4_weight_only_pct_ceiling"] > 0
    assert "ceilings int" in int8_gemm.format_row(row)
    assert "in sequence" in int8_gemm.format_row(row)
    # outlier features: the decomposition keeps the error at int8 level
    assert 0 < row["llm_int8_rel_err"] < 0.02
    if "bnb_int8_outliers_rel_err" in row:
        assert row["bnb_int8_outliers_rel_err"] < 0.02
    assert "llm_int8" in int8_gemm.format_row(row)
    x = torch.randn(3, 128)
    assert int8_gemm.with_outliers(x).abs().amax(0).gt(6).sum() >= 1


def test_sequences_read_distinct_weights_enough_to_fill_the_cache_twice() -> None:
    torch.manual_seed(2)
    cell = int8_gemm.Cell(256, 64)
    x = torch.randn(1, 256)
    seqs = cell.sequences(x, cache_bytes=64 * 1024)
    # int4: 8 KiB a copy -> 16 copies for 128 KiB; fp32: 64 KiB -> the minimum of 2
    assert len(seqs["int4_weight_only"]) == 16 and len(seqs["fp32"]) == 2
    assert int8_gemm.copies_to_fill(10, 3) == 4 and int8_gemm.copies_to_fill(1, 100) == 2
    weights = {c.args[1].data_ptr() for c in seqs["int4_weight_only"]}
    assert len(weights) == 16  # every call its own copy
    want = cell.w4(x)
    for call in seqs["int4_weight_only"][:2]:
        assert torch.equal(call(), want)
    assert int8_gemm.last_level_cache_bytes() > 0


def test_kernel_alone_columns_compute_what_the_ops_compute() -> None:
    """The bench's kernel-alone variants (arguments prepared once) give the ops' outputs."""
    from core.kernels import cpu, ops

    if not cpu.native_available():
        pytest.skip("no native kernels here")
    torch.manual_seed(1)
    cell = int8_gemm.Cell(256, 40)
    x = torch.randn(3, 256)
    fns = cell.variants(x)
    w8, w4 = cell.w8, cell.w4
    with ops.use_path("native"):
        want8 = ops.int8_weight_only_linear(x, w8.w_int8, w8.w_scale, None)
        want4 = ops.int4_weight_only_linear(x, w4.qweight, w4.scale, w4.zero, w4.group_size, None)
    assert torch.equal(fns["wo8_kernel"](), want8)
    assert torch.equal(fns["wo4_kernel"](), want4)


@pytest.mark.both_backends
def test_queue_load_drains_every_job_and_prints_a_row_per_round(db_url: str) -> None:
    from bench import queue_load

    rows = queue_load.run([db_url], n_jobs=12, workers=[1, 2])
    assert [(r["workers"], r["jobs"]) for r in rows] == [(1, 12), (2, 12)]
    assert all(r["claims_s"] > 0 and 0 < r["median_ms"] <= r["p99_ms"] for r in rows)
    assert rows[0]["x1"] == 1.0
    table = queue_load.format_table(rows)
    assert "claims/s" in table and len(table.splitlines()) == 4


def test_model_speed_quick_reports_every_variant_against_fp32() -> None:
    from bench import model_speed

    result = model_speed.run(quick=True, variants=["fp32", "w8a8", "int4-weight-only", "gptq-4bit"])
    assert set(result) == {"machine", "sizes", "rows"}
    assert {"cpu", "flags", "cores", "threads", "torch"} <= set(result["machine"])
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "w8a8", "int4-weight-only", "gptq-4bit"]
    for r in rows.values():
        for key in ("prefill_tok_s", "decode_tok_s", "prefill_x_fp32", "decode_x_fp32"):
            assert r[key] > 0, (r["variant"], key)
    assert rows["fp32"]["prefill_x_fp32"] == 1.0 and rows["fp32"]["kernel_paths"] == []
    # the compressed models ran on the project's kernels: GPTQ 4-bit on the int4 op
    assert any(p.startswith("int8_linear:") for p in rows["w8a8"]["kernel_paths"])
    assert any(p.startswith("int4_weight_only_linear:") for p in rows["gptq-4bit"]["kernel_paths"])
    assert "| gptq-4bit |" in model_speed.format_table(result)
