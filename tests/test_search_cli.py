"""``python -m workers search``: bad input exits 2 with nothing queued; missing scores are
queued as ordinary scoring jobs (one sweep per candidate), each compressing one layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from db import queue
from db.session import session_factory
from runs import catalogue as cat
from runs import search as S
from workers.cli import main


@pytest.mark.parametrize(
    "args",
    [
        ["--budget-bits", "4", "--candidates", "gptq-9bit"],
        ["--budget-bits", "-1"],
        ["--budget-bits", "4", "--budget-mb", "1"],
        [],
        ["--budget-mb", "abc"],
        [
            "--budget-bits",
            "4",
            "--candidates",
            "x",
            "--candidate",
            'x=[{"method": "rtn", "bits": 99}]',
        ],
        ["--budget-bits", "4", "--candidate", "no-equals-sign"],
    ],
)
def test_bad_input_exits_2_before_queueing(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    rc = main(["search", "--model", "tiny-random", "--db", url, *args])
    assert rc == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "q.db").exists() or queue.queue_counts(session_factory(url)) == {}


def test_missing_scores_are_queued_as_scoring_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    argv = ["search", "--model", "tiny-random", "--db", url, "--budget-bits", "5", "--json"]
    rc = main([*argv, "--candidates", "rtn-int8,gptq-4bit-g128"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sf = session_factory(url)
    jobs = queue.list_jobs(sf)
    assert out["scoring_jobs_queued"] == len(jobs) == 2 * 14  # tiny Llama: 2 blocks x 7
    assert len(out["sweeps"]) == 2
    cands = S.parse_candidates(["rtn-int8", "gptq-4bit-g128"])
    for job in jobs:
        recipe = json.loads(job.spec_json)["recipe"]
        targets = {t for step in recipe for t in step["targets"]}
        assert len(targets) == 1  # one layer per job
        (layer,) = targets
        assert recipe in [S.scoring_recipe(c, layer) for c in cands]


def test_latency_budget_here_times_layers_and_the_whole_models(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--budget-ms: the layers are timed on this machine, the choice's predicted linear
    time is within the budget, the verification run carries it, and the whole models are
    timed at the same shape (no timing asserted beyond sanity)."""
    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path))
    url = f"sqlite:///{tmp_path / 'q.db'}"
    small = ["--eval-tokens", "64", "--ctx", "32", "--calib-samples", "2", "--calib-seq-len", "32"]
    argv = ["search", "--model", "tiny-random", "--db", url, "--here", "--json", *small]
    rc = main([*argv, "--budget-ms", "1000,1e-9", "--latency-repeats", "1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ms = cat.PREDICTED_LINEAR_MS.key
    (row,) = out["front"]
    assert 0 < row[ms] <= 1000 and out["nothing_fits"] == [1e-9]
    assert out["layer_timing"]["m"] == 1 and out["layer_timing"]["measured"] > 0
    (run,) = out["runs"]
    assert run["status"] == "succeeded" and run[ms] == pytest.approx(row[ms])
    rows = {r["model"]: r for r in out["model_latency"]["rows"]}
    assert {"float (as loaded)", "budget 1000"} <= set(rows)
    assert all(r["measured_model_ms"] > 0 for r in rows.values())
    assert rows["budget 1000"]["predicted_linear_ms"] == pytest.approx(row[ms])
    assert rows["float (as loaded)"]["predicted_linear_ms"] > 0  # the float linears' sum


def test_latency_settings_out_of_range_exit_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    rc = main(
        ["search", "--model", "tiny-random", "--db", url, "--budget-ms", "5", "--latency-m", "0"]
    )
    assert rc == 2
