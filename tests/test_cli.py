"""The headless interface: python -m workers run | list-methods, and its error lines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.tiny import workers_cli

JSON_KEYS = {
    "run_id",
    "status",
    "perplexity",
    "bits_per_byte",
    "kl_to_baseline",
    "top1_agreement",
    "weight_bytes",
    "bits_per_weight",
    "peak_mem_bytes",
    "prefill_ms",
    "decode_tok_s",
    "compress_s",
}


def _cli(*args: str, db_url: str, data: Path) -> subprocess.CompletedProcess:
    return workers_cli(*args, env={"DATABASE_URL": db_url, "COMPRESSLAB_DATA": str(data)})


@pytest.mark.parametrize(
    "recipe, message",
    [
        ('[{"method": "rtn", "bits": 99}]', "bits=99 is out of range: a value in [2, 8]"),
        ('[{"method": "nope"}]', "unknown method 'nope'; registered methods:"),
        ("no-such-recipe", "unknown recipe 'no-such-recipe'"),
    ],
)
def test_bad_recipe_exits_non_zero_with_one_line(recipe, message, db_url, tmp_path) -> None:
    p = _cli("run", "--model", "tiny-random", "--recipe", recipe, db_url=db_url, data=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in p.stderr


def test_unknown_text_set_is_refused(db_url, tmp_path) -> None:
    p = _cli(
        "run",
        "--model",
        "tiny-random",
        "--recipe",
        "baseline",
        "--calib",
        "nope",
        db_url=db_url,
        data=tmp_path,
    )
    assert p.returncode == 2 and "unknown calibration set 'nope'; available:" in p.stderr


def test_run_json_prints_a_result_and_records_it(db_url, tmp_path) -> None:
    args = [
        "run",
        "--model",
        "tiny-random",
        "--recipe",
        "rtn-int8",
        "--eval-tokens",
        "512",
        "--ctx",
        "64",
    ]
    p = _cli(
        *args,
        "--calib-samples",
        "4",
        "--calib-seq-len",
        "64",
        "--json",
        "--save",
        db_url=db_url,
        data=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(out) >= JSON_KEYS
    assert out["status"] == "succeeded" and out["perplexity"] > 1 and out["weight_bytes"] > 0
    from db import queue
    from db.session import session_factory

    job = queue.get_job(session_factory(db_url), out["run_id"])
    assert job.status == "succeeded" and job.result["perplexity"] == out["perplexity"]
    # --save kept the compressed model in the data folder
    saved = Path(out["saved_model"])
    assert saved == tmp_path / "models" / f"run-{out['run_id']}"
    assert (saved / "compresslab_quant.json").is_file() and (saved / "model.safetensors").is_file()


def test_missing_model_is_refused_before_queueing(db_url, tmp_path) -> None:
    p = _cli(
        "run",
        "--model",
        "./no/such/folder",
        "--recipe",
        "baseline",
        "--json",
        db_url=db_url,
        data=tmp_path,
    )
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == "error: model not found: folder './no/such/folder' does not exist"
    from db import queue
    from db.session import session_factory

    assert queue.queue_counts(session_factory(db_url)) == {}


def test_list_methods_json_has_params_ranges_and_cards(db_url, tmp_path) -> None:
    p = _cli("list-methods", "--json", db_url=db_url, data=tmp_path)
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    bits = next(x for x in rows["rtn"]["params"] if x["name"] == "bits")
    assert (bits["min"], bits["max"], bits["default"]) == (2, 8, 8)
    assert set(rows["rtn"]["card"]) >= {
        "calibration",
        "static_or_dynamic",
        "scope",
        "parameters",
        "hardware",
        "memory",
        "speed",
    }
