"""run_job as named stages: the table of stages and weights, a progress bar that only moves
forward and ends at 1, and typed records read from the stored modules."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest

from core.data import get_text_set
from runs import catalogue as cat
from runs.pipeline import STAGE_FUNCTIONS, run_job
from runs.progress import STAGES, StageProgress, stage_spans
from runs.records import LayerRow, RunResult, bits_label
from runs.spec import JobSpec
from tests.tiny import tiny_spec

V0_DB = Path(__file__).resolve().parent / "data" / "compresslab_v0.db.gz"
NAMES = (
    "load",
    "baseline",
    "baseline outputs",
    "calibrate",
    "compress",
    "evaluate",
    "outputs",
    "kv cache",
    "measure speed",
    "store",
)


def _spec(recipe: str) -> JobSpec:
    return tiny_spec(recipe)


def test_the_stages_are_declared_once_with_weights_summing_to_one() -> None:
    assert tuple(name for name, _ in STAGES) == NAMES
    assert set(STAGE_FUNCTIONS) == set(NAMES)
    assert sum(w for _, w in STAGES) == pytest.approx(1.0)
    spans = stage_spans()
    assert spans["load"][0] == 0.0
    assert sum(spans["store"]) == pytest.approx(1.0)


def test_stage_progress_never_goes_back() -> None:
    seen: list[float] = []
    p = StageProgress(lambda f, m: seen.append(f))
    p.stage("compress")(0.5, "half")
    p.stage("compress")(0.1, "a step restarts its count")
    p.stage("evaluate")(2.0, "clamped")
    p.done()
    assert seen == sorted(seen) and seen[-1] == 1.0


@pytest.mark.parametrize("recipe", ["rtn-int8", "baseline"])
def test_a_job_reports_monotone_progress_to_one(tmp_path: Path, recipe: str) -> None:
    calls: list[tuple[float, str]] = []
    res = run_job(
        _spec(recipe),
        cache_dir=tmp_path,
        resolve_text=get_text_set,
        on_progress=lambda f, m: calls.append((f, m)),
    )
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] < 0.05
    messages = " | ".join(m for _, m in calls)
    for said in ("loading model", "evaluating the compressed model", "measuring latency"):
        assert said in messages
    assert set(res.metrics) >= {m.key for m in cat.RESULT}


def test_layer_rows_and_bits_come_from_the_stored_modules(tmp_path: Path) -> None:
    res = run_job(_spec("rtn-int8"), cache_dir=tmp_path, resolve_text=get_text_set)
    rows = {r.name: r for r in res.layer_rows}
    q = rows["model.layers.0.self_attn.q_proj"]
    assert q.bits == 8.0 and q.format != "dense" and q.weight_bytes and q.n_weights
    assert rows["lm_head"].format == "dense"  # the named recipe leaves the head alone
    assert res.result.nominal_bits == [8.0]
    assert bits_label(res.metrics) == "8"
    assert LayerRow.from_dict(q.to_dict()) == q
    assert RunResult.from_dict(res.metrics) == res.result


def test_rows_written_by_an_earlier_version_read_back(tmp_path: Path) -> None:
    path = tmp_path / "v0.db"
    path.write_bytes(gzip.decompress(V0_DB.read_bytes()))
    con = sqlite3.connect(path)
    result_json, layer_json = con.execute(
        "SELECT j.result_json, l.data_json FROM jobs j JOIN layer_stats l ON l.job_id = j.id "
        "WHERE j.id = 1 LIMIT 1"
    ).fetchone()
    con.close()
    old = json.loads(result_json)
    rr = RunResult.from_dict(old)
    assert rr.perplexity == old[cat.PERPLEXITY.key] and rr.nominal_bits is None
    assert rr.to_dict()[cat.WEIGHT_BYTES.key] == old[cat.WEIGHT_BYTES.key]
    assert bits_label(old) == "4"  # gptq 4-bit: 4.125 effective bits per weight
    row = LayerRow.from_dict(json.loads(layer_json))
    assert row.name and row.scheme and row.format is None and row.before
