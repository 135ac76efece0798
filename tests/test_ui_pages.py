"""Every page rendered headless (streamlit.testing AppTest), on an empty database and on one
holding runs. The runs are a FIXTURE: jobs pushed through the real queue operations
(submit / claim / complete / fail / heartbeat) with fabricated but plausible metrics and
real weight statistics of random matrices; nothing is compressed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.calib import CalibSettings
from core.estimate import estimate_memory
from core.metrics import speed_vs_baseline
from core.models import tiny_llama
from core.recipe import NAMED_RECIPES, parse_recipe
from core.save import QUANT_CONFIG
from core.stats import before_after
from db import queue
from db.models import Job
from runs.catalogue import PERPLEXITY
from tests.plotly_data import values
from ui.frames import fmt_bytes
from ui.shell import COMPARE, HOME, NEW_RUN, RUNS, WEIGHTS
from ui.submit import submit_run, submit_sweep_run

APP = str(Path(__file__).resolve().parent.parent / "app.py")
WORKER = "fixture-worker"
LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")


BASE_BYTES, BASE_PREFILL_MS = 8_000_000, 5.0  # the baseline fixture run's


def _metrics(ppl: float, weight_bytes: int, prefill_ms: float) -> dict:
    speed = speed_vs_baseline(
        weight_bytes, prefill_ms, 1000 / prefill_ms, BASE_BYTES, BASE_PREFILL_MS, 200.0
    )
    return {
        "perplexity": ppl,
        "bits_per_byte": ppl / 10,
        "kl_to_baseline": (ppl - 12.0) / 100,
        "top1_agreement": 0.99,
        "baseline_perplexity": 12.0,
        "weight_bytes": weight_bytes,
        "bits_per_weight": weight_bytes * 8 / 2_000_000,
        "compressed_bits_per_weight": 8.2,
        "peak_mem_bytes": 600_000_000,
        "prefill_ms": prefill_ms,
        "decode_tok_s": 1000 / prefill_ms,
        "baseline_weight_bytes": BASE_BYTES,
        "baseline_prefill_ms": BASE_PREFILL_MS,
        "baseline_decode_tok_s": 200.0,
        **speed,
        "compress_s": 1.5,
        "mean_layer_error": 0.01,
        "n_params": 2_000_000,
        "model_note": "fixture",
    }


def _layers(seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, name in enumerate(LAYERS):
        w = torch.randn(48, 32, generator=g) * 0.02
        w[i, 0] = 0.5  # an outlier far beyond 3 std
        stats = before_after(w, (w * 127 / w.abs().max()).round() * w.abs().max() / 127)
        rows.append(
            {"name": name, "scheme": "int8-sym-channel", "rel_error": 0.01 * (i + 1), **stats}
        )
    return rows


def _finished(sf, name: str, ppl: float, weight_bytes: int, prefill_ms: float, seed: int) -> int:
    job_id = submit_run(
        sf, "tiny-random", NAMED_RECIPES[name], name, "stdlib-code", "stdlib-heldout", None, None
    )
    queue.claim(sf, WORKER, job_id=job_id)
    spec = queue.get_job(sf, job_id).spec
    fingerprint = {
        "model": "tiny-random",
        "revision": "seed:0",
        "recipe": spec["recipe"],
        "eval_settings": spec["eval"],
        "seed": 0,
        "device": "cpu",
    }
    assert queue.complete(
        sf, job_id, WORKER, _metrics(ppl, weight_bytes, prefill_ms), _layers(seed), fingerprint
    )
    return job_id


@pytest.fixture
def runs(sf) -> dict[str, int]:
    """Three finished runs, one failed, one running, one queued."""
    ids = {
        "baseline": _finished(sf, "baseline", 12.0, BASE_BYTES, BASE_PREFILL_MS, 0),
        "fp16": _finished(sf, "fp16", 12.01, 4_000_000, 6.0, 1),
        "rtn-int8": _finished(sf, "rtn-int8", 12.3, 2_100_000, 9.0, 2),
    }
    ids["failed"] = queue.submit(
        sf, model="/no/such/model", recipe_label="baseline", spec_json="{}"
    )
    queue.claim(sf, WORKER, job_id=ids["failed"])
    queue.fail(sf, ids["failed"], WORKER, "model not found: folder '/no/such/model' does not exist")
    ids["running"] = queue.submit(sf, model="tiny-random", recipe_label="rtn-int8", spec_json="{}")
    queue.claim(sf, WORKER, job_id=ids["running"])
    queue.heartbeat(sf, ids["running"], WORKER, 0.4, "block 1/2: rtn")
    ids["queued"] = queue.submit(sf, model="tiny-random", recipe_label="fp16", spec_json="{}")
    return ids


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    if page and page != HOME:
        at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _follow_link(at: AppTest, label: str, page: str) -> AppTest:
    """Open the page link ``label`` as the browser does: ``page`` (which the link must
    name) with the link's query string."""
    link = next(e.proto for e in at.get("page_link") if e.proto.label == label)
    assert Path(page).stem in link.page, (link.page, page)
    for k, v in parse_qsl(link.query_string):
        at.query_params[k] = v
    return at.switch_page(page).run()


# --- empty database ----------------------------------------------------------------


@pytest.mark.parametrize("page", [HOME, NEW_RUN, RUNS, COMPARE, WEIGHTS])
def test_every_page_renders_on_an_empty_database(db_url, page) -> None:
    at = _app(page)
    titles = {
        HOME: "CompressLab",
        NEW_RUN: "New run",
        RUNS: "Runs",
        COMPARE: "Compare",
        WEIGHTS: "Weights",
    }
    assert at.title[0].value == titles[page]
    sidebar = _texts(at.sidebar.markdown)
    assert "no worker alive" in sidebar and "**0** queued" in sidebar
    if page in (COMPARE, WEIGHTS, HOME):
        assert "No finished runs yet" in _texts(at.info)  # the empty state says what to do
        assert not at.get("plotly_chart")


# --- with runs ---------------------------------------------------------------------


def test_home_shows_latest_results(runs) -> None:
    at = _app(HOME)
    assert [m.value for m in at.metric][:4] == ["3", "1", "1", "1"]
    table = at.dataframe[0].value
    assert table["id"].tolist() == [runs["rtn-int8"], runs["fp16"], runs["baseline"]]
    assert "**1** queued · **1** running" in _texts(at.sidebar.markdown)


def test_runs_page_progress_error_and_cancel(sf, runs) -> None:
    at = _app(RUNS)
    assert "Active (1 running, 1 queued)" in _texts(at.subheader)
    assert "block 1/2: rtn" in _texts(at.markdown) + str([p.proto for p in at.get("progress")])
    assert any("model not found" in e.value for e in at.error)  # readable error of the failed job
    history = at.dataframe[0].value
    assert sorted(history["status"]) == ["failed", "succeeded", "succeeded", "succeeded"]

    at.button(key=f"cancel{runs['queued']}").click().run()
    assert queue.get_job(sf, runs["queued"]).status == "cancelled"
    at.button(key=f"cancel{runs['running']}").click().run()
    job = queue.get_job(sf, runs["running"])
    assert job.status == "running" and job.cancel_requested  # the worker stops between layers
    assert at.button(key=f"cancel{runs['running']}").disabled


def test_runs_page_and_sidebar_show_each_worker(sf) -> None:
    import socket

    queue.register_worker(sf, "gpu-host-1-77-abcdef", device="NVIDIA H100 80GB HBM3")
    queue.register_worker(sf, "cpu-host-2-78-abcdef", device="cpu")
    queue.register_worker(sf, "gone-3-79-abcdef", device="cpu")
    queue.worker_stopped(sf, "gone-3-79-abcdef")  # stopped: not listed
    at = _app(RUNS)
    assert "Workers (2 alive)" in _texts(at.subheader)
    table = at.dataframe[0].value
    assert sorted(table["device"]) == ["NVIDIA H100 80GB HBM3", "cpu"]
    assert set(table["host"]) == {socket.gethostname()} and set(table["job"]) == {"idle"}
    assert all(age.endswith(" s ago") for age in table["heartbeat"])  # by the database clock
    sidebar = _texts(at.sidebar.caption)
    assert "NVIDIA H100 80GB HBM3 · idle · beat" in sidebar
    assert "2 workers alive" in _texts(at.sidebar.markdown)


def test_compare_page_charts_table_and_details(runs) -> None:
    at = _app(COMPARE)
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    memory = json.loads(charts[0].proto.spec)
    names = [t.get("name") for t in memory["data"]]
    assert {"baseline", "cast", "rtn", "Pareto front"} <= set(names)
    assert "MB" in memory["layout"]["xaxis"]["title"]["text"]
    table = at.dataframe[0].value
    assert len(table) == 3 and table["perplexity"].is_monotonic_increasing
    # fp16 and rtn-int8 are smaller than the baseline and slower (6 and 9 ms against 5)
    flagged = dict(zip(table["id"], table["smaller_but_slower"], strict=True))
    assert flagged == {runs["baseline"]: False, runs["fp16"]: True, runs["rtn-int8"]: True}
    warning = at.warning[0].value  # the page's; the run details add their own below
    assert "not a speed-up" in warning
    assert f"#{runs['fp16']}" in warning and f"#{runs['baseline']}," not in warning

    at.selectbox(key="cmp_detail").set_value(runs["rtn-int8"]).run()
    assert not at.exception
    assert any(f"Run #{runs['rtn-int8']}" in s.value for s in at.subheader)
    metrics = at.table[0].value
    assert PERPLEXITY.definition in metrics["definition"].tolist()
    assert "2.10 MB" in " ".join(metrics["value"])
    assert any("prefill 0.56x" in w.value for w in at.warning)  # 5 ms / 9 ms, in the details
    assert any('"revision"' in j.proto.body for j in at.json)  # the fingerprint


def test_run_details_offer_the_kept_model_for_download(sf, db_url, tmp_path: Path) -> None:
    folder = tmp_path / "run-kept"
    folder.mkdir()
    (folder / QUANT_CONFIG).write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 3000)
    kept = _finished(sf, "rtn-int8", 12.3, 2_100_000, 9.0, 2)
    _finished(sf, "fp16", 12.01, 4_000_000, 6.0, 1)  # not kept
    with sf() as s:  # the worker's result of a run that kept its model
        job = s.get(Job, kept)
        job.result_json = json.dumps({**job.result, "saved_model": str(folder)})
        s.commit()
    at = _app(COMPARE)
    assert any("was not kept" in c.value for c in at.caption)  # the newest run, fp16
    at.selectbox(key="cmp_detail").set_value(kept).run()
    (button,) = at.get("download_button")
    assert button.proto.label == "Download the compressed model (.zip, 3.00 kB)"
    assert any("load_compressed" in c.value for c in at.caption)
    with sf() as s:  # the same record imported from a teammate: their path, not ours
        s.get(Job, kept).origin = "alice@gpu-box"
        s.commit()
    at = _app(COMPARE)
    at.selectbox(key="cmp_detail").set_value(kept).run()
    assert not at.get("download_button")
    assert any("stays with alice@gpu-box" in c.value for c in at.caption)


def test_compare_page_latency_axis_switch(runs) -> None:
    at = _app(COMPARE)
    at.radio(key="cmp_latency").set_value("decode_tok_s").run()
    spec = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert "tokens/s" in spec["layout"]["xaxis"]["title"]["text"]


def test_weights_page_histogram_and_outlier_counts(sf, runs) -> None:
    at = _app(WEIGHTS)
    at.selectbox(key="w_run").set_value(runs["rtn-int8"]).run()
    at.selectbox(key="w_layer").set_value(LAYERS[1]).run()
    data = {r.name: r.data for r in queue.layer_stats(sf, runs["rtn-int8"])}[LAYERS[1]]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Outliers before (>3σ)"] == f"{data['before']['outliers']['3.0']:,}"
    assert metrics["Outliers after (>3σ)"] == f"{data['after']['outliers']['3.0']:,}"
    hist = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert hist["layout"]["yaxis"]["type"] == "log"

    at.select_slider(key="w_k").set_value(1.0).run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Outliers before (>1σ)"] == f"{data['before']['outliers']['1.0']:,}"
    assert int(metrics["Outliers before (>1σ)"].replace(",", "")) > int(
        data["before"]["outliers"]["3.0"]
    )


def test_new_run_queues_a_named_recipe(sf, db_url) -> None:
    at = _app(NEW_RUN)
    at.radio(key="model_kind").set_value("tiny-random").run()
    _button(at, "Queue run").click().run()
    assert not at.error, _texts(at.error)
    jobs = queue.list_jobs(sf)
    assert len(jobs) == 1 and jobs[0].recipe_label == "rtn-int8" and jobs[0].model == "tiny-random"
    assert any(f"#{jobs[0].id}" in s.value for s in at.success)


def test_new_run_states_the_calibration_memory(sf, db_url) -> None:
    at = _app(NEW_RUN)
    at.radio(key="model_kind").set_value("tiny-random").run()
    metrics = {m.label: m.value for m in at.metric}
    want = estimate_memory(tiny_llama(), parse_recipe("rtn-int8"), CalibSettings(32, 256))
    assert metrics["Calibration memory, besides the model"] == fmt_bytes(want.calibration_bytes)
    assert metrics["Model weights (float32, as loaded)"] == fmt_bytes(want.weight_bytes)
    assert want.calibration_bytes == 0  # RTN needs no calibration data (issue 18)
    assert any("needs no calibration data" in c.value for c in at.caption)
    at.radio(key="recipe_mode").set_value("JSON").run()
    at.text_area(key="recipe_json").input("[{").run()  # not JSON yet: no estimate, no error
    assert not at.exception
    assert any("once the model and the recipe are valid" in c.value for c in at.caption)


def test_new_run_queues_a_parameter_sweep_as_one_submission(sf, db_url) -> None:
    at = _app(NEW_RUN)
    at.radio(key="model_kind").set_value("tiny-random").run()  # named recipe rtn-int8
    assert at.selectbox(key="sweep_param:0:rtn").value == "bits"
    assert any("7 run(s): bits = 2, 3, 4, 5, 6, 7, 8" in c.value for c in at.caption)
    at.number_input(key="sweep:0:rtn:bits:start").set_value(1.0).run()
    _button(at, "Queue sweep").click().run()
    assert "bits=1" in _texts(at.error) and "[2, 8]" in _texts(at.error)
    assert queue.list_jobs(sf) == []  # one bad value: nothing queued
    at.number_input(key="sweep:0:rtn:bits:start").set_value(4.0).run()
    _button(at, "Queue sweep").click().run()
    assert not at.error, _texts(at.error)
    jobs = queue.list_jobs(sf)
    assert len(jobs) == 5 and len({j.sweep_id for j in jobs}) == 1 and jobs[0].sweep_id
    assert sorted(j.spec["recipe"][0]["bits"] for j in jobs) == [4, 5, 6, 7, 8]
    assert any("sweep of 5 runs over bits" in m.value for m in at.success)


def test_compare_draws_a_sweep_per_method(sf, runs) -> None:
    for method, ppls in (("magnitude", (13.0, 15.0, 30.0)), ("wanda", (12.5, 14.0, 20.0))):
        steps = [{"method": method, "sparsity": 0.5}]
        sweep_id, n = submit_sweep_run(
            sf,
            "tiny-random",
            steps,
            "",
            "stdlib-code",
            "stdlib-heldout",
            None,
            None,
            step_index=0,
            param="sparsity",
            values=[0.3, 0.5, 0.7],
        )
        for job, ppl in zip(queue.sweep_jobs(sf, sweep_id), ppls, strict=True):
            queue.claim(sf, WORKER, job_id=job.id)
            fingerprint = {"recipe": job.spec["recipe"], "eval_settings": job.spec["eval"]}
            queue.complete(sf, job.id, WORKER, _metrics(ppl, 4_000_000, 6.0), [], fingerprint)
    at = _app(COMPARE)
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 3
    sweep = json.loads(charts[2].proto.spec)
    lines = {t["name"]: (values(t["x"]), values(t["y"])) for t in sweep["data"]}
    assert lines == {
        "magnitude": ([0.3, 0.5, 0.7], [13.0, 15.0, 30.0]),
        "wanda": ([0.3, 0.5, 0.7], [12.5, 14.0, 20.0]),
    }
    assert sweep["layout"]["xaxis"]["title"]["text"] == "sparsity (swept)"


def test_new_run_refuses_an_out_of_range_parameter(sf, db_url) -> None:
    at = _app(NEW_RUN)
    at.radio(key="recipe_mode").set_value("JSON").run()
    at.text_area(key="recipe_json").input('[{"method": "rtn", "bits": 99}]').run()
    errors = _texts(at.error)  # under the text area, before any click
    assert "rtn: bits=99 is out of range: a value in [2, 8]" in errors
    assert "RTNConfig" not in errors
    assert _button(at, "Queue run").disabled
    assert queue.list_jobs(sf) == []


def test_new_run_group_size_7_is_refused_under_its_field(sf, db_url) -> None:
    at = _app(NEW_RUN)
    at.radio(key="recipe_mode").set_value("Build steps").run()
    at.selectbox(key="step0:rtn:granularity").set_value("group").run()
    field = at.number_input(key="step0:rtn:group_size")
    assert "a power of two in [32, 256]" in field.help
    assert not _button(at, "Queue run").disabled
    field.set_value(7).run()
    assert "group_size=7 is out of range: a power of two in [32, 256]" in _texts(at.error)
    assert _button(at, "Queue run").disabled
    at.number_input(key="step0:rtn:group_size").set_value(96).run()
    assert "group_size=96 is not a power of two" in _texts(at.error)
    at.number_input(key="step0:rtn:group_size").set_value(64).run()
    assert not at.error and not _button(at, "Queue run").disabled


def test_new_run_builds_steps_from_config_widgets(sf, db_url) -> None:
    at = _app(NEW_RUN)
    at.radio(key="recipe_mode").set_value("Build steps").run()
    bits = at.number_input(key="step0:rtn:bits")
    assert "a value in [2, 8]" in bits.help  # the range comes from the config
    bits.set_value(99).run()  # unbounded widget: the config's rule refuses it at once
    assert "bits=99" in _texts(at.error) and "[2, 8]" in _texts(at.error)
    assert _button(at, "Queue run").disabled
    assert queue.list_jobs(sf) == []
    assert at.selectbox(key="step0:rtn:granularity").options == ["tensor", "channel", "group"]
    assert any("Needs a calibration set" in m.value for m in at.markdown)  # the method card
    at.number_input(key="step0:rtn:bits").set_value(4).run()
    _button(at, "Add step").click().run()
    at.selectbox(key="step1:method").set_value("cast").run()
    _button(at, "Queue run").click().run()
    assert not at.error, _texts(at.error)
    spec = queue.list_jobs(sf)[0].spec
    assert [s["method"] for s in spec["recipe"]] == ["rtn", "cast"]
    assert spec["recipe"][0]["bits"] == 4


def test_new_run_upload_is_validated_before_it_is_stored(sf, db_url) -> None:
    at = _app(NEW_RUN)
    uploader = at.file_uploader(key="calib_set:upload")
    uploader.upload("bad.jsonl", b'{"x": 1}\n', "application/json").run()
    assert any('no "text"' in e.value for e in at.error)
    assert queue.list_texts(sf) == []

    at.file_uploader(key="calib_set:upload").set_value(
        ("mine.txt", b"def f():\n    return 42\n" * 20, "text/plain")
    ).run()
    stored = queue.list_texts(sf)
    assert len(stored) == 1 and stored[0].filename == "mine.txt"
    assert at.selectbox(key="calib_set").value == stored[0].name  # preselected for the run


def test_new_run_offline_hub_and_missing_folder(sf, db_url, tmp_path: Path) -> None:
    at = _app(NEW_RUN)
    at.radio(key="model_kind").set_value("hub").run()
    assert any("hub is unreachable" in w.value for w in at.warning)  # tests run offline
    assert "Another Hugging Face id..." in at.selectbox(key="hub_choice").options
    at.radio(key="model_kind").set_value("folder").run()
    at.text_input(key="folder_path").input(str(tmp_path / "nope")).run()
    assert any("is not a folder" in w.value for w in at.warning)
    (tmp_path / "m").mkdir()
    at.text_input(key="folder_path").input(str(tmp_path / "m")).run()
    assert any("no config.json" in w.value for w in at.warning)
