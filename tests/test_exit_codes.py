"""``python -m workers run`` exit codes: bad input exits 2 with one ``error:`` line before
anything is queued or loaded (and, when the database is not needed to refuse it, before
the database file is created); a failure at run time exits 1 with a failed job.

All offline: HF_HUB_OFFLINE=1 and an empty Hugging Face cache."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.tiny import workers_cli


def _run(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {
        "DATABASE_URL": f"sqlite:///{tmp / 'jobs.db'}",
        "COMPRESSLAB_DATA": str(tmp / "data"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf"),  # an empty cache: nothing is cached
        "COMPRESSLAB_AUTH": "none",
    }
    clean = {k: v for k, v in os.environ.items() if k != "COMPRESSLAB_MODEL_ROOTS"}
    return workers_cli("run", *args, env=base | env, base=clean)


def _one_error_line(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in p.stderr
    return lines[0]


def _job_count(tmp: Path) -> int:
    with sqlite3.connect(tmp / "jobs.db") as con:
        return con.execute("SELECT count(*) FROM jobs").fetchone()[0]


def _refused_early(p: subprocess.CompletedProcess, tmp: Path, message: str) -> None:
    """Exit 2, one line with ``message``, and no database file at all."""
    assert p.returncode == 2, p.stderr
    assert message in _one_error_line(p)
    assert not (tmp / "jobs.db").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recipe", '[{"method": "nope"}]'], "unknown method 'nope'"),
        (["--recipe", "baseline", "--calib", "nope"], "unknown calibration set 'nope'"),
        (["--recipe", "rtn-int8", "--sweep", "bits=2:8:0"], "sweep"),
    ],
)
def test_bad_input_exits_2_before_the_database(tmp_path, args, message) -> None:
    p = _run(tmp_path, "--model", "tiny-random", *args)
    _refused_early(p, tmp_path, message)


@pytest.mark.parametrize(
    "model, message",
    [
        ("./no/such/folder", "model not found: folder './no/such/folder' does not exist"),
        ("a/b/c", "model not found: 'a/b/c' is neither a folder nor a hub id"),
        ("org/bad--name", "is neither a folder nor a hub id"),
        (
            "nobody/not-cached",
            "hub unreachable (offline?): HF_HUB_OFFLINE=1; 'nobody/not-cached' is not in the "
            "local Hugging Face cache",
        ),
    ],
)
def test_a_wrong_model_exits_2_and_queues_nothing(tmp_path, model, message) -> None:
    """Was: exit 1 with a failed job left in the database."""
    p = _run(tmp_path, "--model", model, "--recipe", "baseline", "--json")
    _refused_early(p, tmp_path, message)
    assert p.stdout == ""


def test_a_folder_without_config_exits_2(tmp_path) -> None:
    folder = tmp_path / "empty-model"
    folder.mkdir()
    p = _run(tmp_path, "--model", str(folder), "--recipe", "baseline")
    _refused_early(p, tmp_path, "has no config.json")


def test_team_mode_refuses_a_folder_outside_the_roots(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    missing = tmp_path / "missing"
    roots = str(tmp_path / "data")
    env = {"COMPRESSLAB_AUTH": "password", "COMPRESSLAB_MODEL_ROOTS": roots}
    lines = []
    for folder in (outside, missing):
        p = _run(tmp_path, "--model", str(folder), "--recipe", "baseline", **env)
        _refused_early(p, tmp_path, "is not allowed: local models must be folders under")
        lines.append(_one_error_line(p).replace(str(folder), "X"))
    assert lines[0] == lines[1]  # the same words whether the folder exists or not
    assert roots in lines[0]


def test_missing_upload_exits_2_before_anything_is_queued(tmp_path) -> None:
    p = _run(tmp_path, "--model", "tiny-random", "--recipe", "baseline", "--calib", "upload:nope")
    assert p.returncode == 2
    assert "calibration set 'upload:nope' is not in the database" in _one_error_line(p)
    assert _job_count(tmp_path) == 0


def test_a_model_that_fails_to_load_exits_1_with_a_failed_job(tmp_path) -> None:
    """A runtime failure: the folder looks like a model but does not load."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "no-such-architecture"}')
    p = _run(tmp_path, "--model", str(folder), "--recipe", "baseline", "--json")
    assert p.returncode == 1, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["status"] == "failed"
    assert "cannot load a causal LM from folder" in p.stderr
    assert _job_count(tmp_path) == 1
