"""End to end, for real: the New run page's submit function queues a job, a worker runs it
on the tiny random Llama, and the Compare and Weights pages show the result."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.recipe import NAMED_RECIPES
from db import queue
from tests.plotly_data import values
from ui.frames import runs_frame
from ui.shell import COMPARE, WEIGHTS
from ui.submit import submit_run
from workers.runner import Runner

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.mark.slow
def test_submit_run_work_compare(sf, tmp_path: Path) -> None:
    job_id = submit_run(
        sf,
        "tiny-random",
        NAMED_RECIPES["rtn-int8"],
        "rtn-int8",
        "stdlib-code",
        "stdlib-heldout",
        {"ctx": 64, "eval_tokens": 256, "prompt_len": 16, "decode_tokens": 4, "repeats": 1},
        {"n_samples": 4, "seq_len": 32},
    )
    assert Runner(sf, cache_dir=tmp_path / "baselines").serve(poll_s=0.05, max_jobs=1) == 1
    job = queue.get_job(sf, job_id)
    assert job.status == "succeeded", job.error

    df = runs_frame(queue.finished_runs(sf))
    row = df[df["id"] == job_id].iloc[0]
    assert row["recipe"] == "rtn-int8" and row["method"] == "rtn"
    assert math.isfinite(row["perplexity"]) and row["perplexity"] > 1
    # int8 weights plus fp16 scales: well under the float32 size of the same parameters.
    assert row["weight_mb"] * 1e6 < 4 * job.result["n_params"]

    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page(COMPARE).run()
    assert not at.exception
    assert at.dataframe[0].value["id"].tolist() == [job_id]
    memory = json.loads(at.get("plotly_chart")[0].proto.spec)
    xs = [x for t in memory["data"] if t.get("name") == "rtn" for x in values(t["x"])]
    assert xs == pytest.approx([row["weight_mb"]])

    at.switch_page(WEIGHTS).run()
    assert not at.exception
    layers = at.selectbox(key="w_layer").options
    assert len(layers) == len(queue.layer_stats(sf, job_id)) > 0
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["yaxis"]["type"] == "log"
