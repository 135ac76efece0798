"""Workers running real (tiny) jobs: results, readable failures, cancel, signals, kills."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from core.calib import CalibSettings
from core.data import get_text_set
from core.metrics import EvalSettings, eval_windows, evaluate, weight_memory
from core.recipe import parse_recipe
from core.save import archive, folder_bytes, load_compressed
from db import queue
from db.models import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED
from runs.spec import JobSpec
from workers.runner import Runner

ROOT = Path(__file__).resolve().parent.parent
SMALL_EVAL = EvalSettings(ctx=64, eval_tokens=512, prompt_len=32, decode_tokens=4, repeats=2)
SMALL_CALIB = CalibSettings(n_samples=4, seq_len=64)


def _spec(model: str = "tiny-random", recipe: str = "rtn-int8", **kw) -> JobSpec:
    r = parse_recipe(recipe)
    kw.setdefault("eval", SMALL_EVAL)
    return JobSpec(
        model=model, recipe=r.to_list(), recipe_name=r.name, calib_settings=SMALL_CALIB, **kw
    )


def _submit(sf, spec: JobSpec) -> int:
    return queue.submit(
        sf, model=spec.model, recipe_label=spec.recipe_name, spec_json=spec.to_json()
    )


def _wait(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_a_failed_model_does_not_stop_the_worker(sf, tmp_path: Path) -> None:
    bad = _submit(sf, _spec(model="no-such-org/no-such-model"))
    good = _submit(sf, _spec())
    runner = Runner(sf, cache_dir=tmp_path / "cache")
    assert runner.serve(poll_s=0.05, max_jobs=2) == 2
    failed = queue.get_job(sf, bad)
    assert failed.status == FAILED
    assert failed.error.startswith("hub unreachable (offline?)")
    done = queue.get_job(sf, good)
    assert done.status == SUCCEEDED, done.error
    r = done.result
    assert r["compressed_bits_per_weight"] == pytest.approx(
        8 + 16 / 64, rel=0.05
    )  # int8 + fp16 scale per row
    assert r["perplexity"] > 1 and 0 <= r["kl_to_baseline"] < 0.01 and r["top1_agreement"] > 0.5
    layers = queue.layer_stats(sf, good)
    assert len(layers) == 15  # 2 blocks x 7 linears + lm_head
    q_proj = layers[0].data
    assert q_proj["scheme"].startswith("int8-sym") and 0 < q_proj["rel_error"] < 0.05
    assert sum(q_proj["before"]["counts"]) == sum(q_proj["after"]["counts"]) == 64 * 64
    assert done.fingerprint["calib_set"]["name"] == "stdlib-code"


def test_the_baseline_is_computed_once_and_reused(sf, tmp_path: Path) -> None:
    runner = Runner(sf, cache_dir=tmp_path / "cache")
    for recipe in ("baseline", "rtn-int8"):
        _submit(sf, _spec(recipe=recipe))
    runner.serve(poll_s=0.05, max_jobs=2)
    files = list((tmp_path / "cache").glob("*.f16"))
    assert len(files) == 1
    base, quant = (j.result for j in queue.finished_runs(sf))
    assert quant["baseline_perplexity"] == pytest.approx(base["perplexity"])
    # Against its own cached (float16) log-probs the baseline agrees exactly.
    assert base["kl_to_baseline"] == 0.0 and base["top1_agreement"] == 1.0
    assert base["compress_s"] == 0.0
    # Speed against the uncompressed model, measured in the same job.
    assert base["prefill_speedup"] == 1.0 and base["smaller_but_slower"] is False
    assert quant["weight_bytes"] < quant["baseline_weight_bytes"] == base["weight_bytes"]
    # Speed-ups: the median of the per-round pair ratios (runs/latency.py), inside their
    # stored middle half, or no number where the spread makes it not measurable.
    for key in ("prefill_speedup", "decode_speedup"):
        if quant[key] is None:
            assert "not measurable on this machine at this load" in quant["latency_verdict"]
        else:
            assert quant[f"{key}_q1"] <= quant[key] <= quant[f"{key}_q3"]
    assert quant["latency_interleaved"] is True


@pytest.mark.parametrize("recipe", ["rtn-int8", "baseline"])
def test_a_kept_model_downloads_and_loads_back_with_the_same_perplexity(
    sf, tmp_path: Path, recipe: str
) -> None:
    steps = [{"method": "gptq", "bits": 4, "group_size": 32}] if recipe != "baseline" else []
    spec = dataclasses.replace(_spec(recipe=recipe), recipe=steps, save_model=True)
    job_id = _submit(sf, spec)
    Runner(sf, cache_dir=tmp_path / "cache").serve(poll_s=0.05, max_jobs=1)
    result = queue.get_job(sf, job_id).result
    if recipe == "baseline":  # nothing compressed, nothing to keep
        assert result["saved_model"] is None
        return
    folder = Path(result["saved_model"])
    assert folder == tmp_path / "models" / f"run-{job_id}"
    assert result["saved_model_bytes"] == folder_bytes(folder)
    with zipfile.ZipFile(archive(folder)) as z:
        z.extractall(tmp_path / "download")
    loaded = load_compressed(tmp_path / "download")
    windows = eval_windows(loaded.tokenizer, get_text_set(spec.eval_set).text, spec.eval)
    got = evaluate(loaded.model, loaded.tokenizer, windows).perplexity
    assert got == pytest.approx(result["perplexity"], rel=1e-6)
    assert weight_memory(loaded.model).weight_bytes == result["weight_bytes"]


def test_cancel_a_running_job(sf, tmp_path: Path) -> None:
    spec = _spec(
        eval=EvalSettings(ctx=32, eval_tokens=20_000, prompt_len=16, decode_tokens=2, repeats=1)
    )
    jid = _submit(sf, spec)
    runner = Runner(sf, cache_dir=tmp_path / "cache", heartbeat_s=0.1)
    t = threading.Thread(target=runner.serve, kwargs={"poll_s": 0.05, "max_jobs": 1})
    t.start()
    _wait(lambda: queue.get_job(sf, jid).progress > 0.05)
    assert queue.request_cancel(sf, jid) == "cancel requested"
    t.join(timeout=60)
    assert queue.get_job(sf, jid).status == CANCELLED


def _serve(db_url: str, data: Path) -> subprocess.Popen:
    env = os.environ | {"DATABASE_URL": db_url, "COMPRESSLAB_DATA": str(data)}
    return subprocess.Popen(
        [sys.executable, "-m", "workers", "serve", "--poll", "0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _long_job(sf) -> int:
    return _submit(
        sf,
        _spec(
            eval=EvalSettings(ctx=32, eval_tokens=40_000, prompt_len=16, decode_tokens=2, repeats=1)
        ),
    )


def test_sigterm_requeues_the_running_job(sf, db_url: str, tmp_path: Path) -> None:
    jid = _long_job(sf)
    proc = _serve(db_url, tmp_path / "data")
    try:
        _wait(lambda: queue.get_job(sf, jid).status == RUNNING)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    job = queue.get_job(sf, jid)
    assert job.status == QUEUED and "requeued: worker stopped (SIGTERM)" in job.message
    assert queue.alive_workers(sf) == []


def test_a_killed_worker_loses_nothing(sf, db_url: str, tmp_path: Path) -> None:
    spec = _spec()
    jid = _long_job(sf)
    proc = _serve(db_url, tmp_path / "data")
    try:
        _wait(lambda: queue.get_job(sf, jid).status == RUNNING)
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert queue.get_job(sf, jid).status == RUNNING
    assert queue.recover_stale(sf, stale_s=0.0) == [jid]
    assert queue.get_job(sf, jid).status == QUEUED
    # Another worker picks the recovered job up (make it short: same id, cheaper spec).
    with sf.begin() as s:
        from db.models import Job

        s.get(Job, jid).spec_json = spec.to_json()
    Runner(sf, cache_dir=tmp_path / "cache").serve(poll_s=0.05, max_jobs=1)
    job = queue.get_job(sf, jid)
    assert job.status == SUCCEEDED and job.attempts == 2
