"""The analysis pages rendered headless (AppTest): Leaderboard, Run, Outliers, Sensitivity and
Concepts, on an empty database and on one holding runs. The runs are a FIXTURE pushed through
the real queue operations, with real weight and activation statistics of random matrices;
nothing is compressed here (tests/test_ui_sensitivity_e2e.py runs a real sweep)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.actstats import ActStats, summarize, update_act_stats
from core.recipe import NAMED_RECIPES
from core.stats import before_after
from db import queue
from runs.sensitivity import sensitivity_recipes, sweep_units
from tests.test_ui_pages import _follow_link
from ui import bundle
from ui.shell import CONCEPTS, LEADERBOARD, NEW_RUN, OUTLIERS, RUN, SENSITIVITY
from ui.submit import build_spec, submit_run

APP = str(Path(__file__).resolve().parent.parent / "app.py")
WORKER = "fixture-worker"
LAYERS = (
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.1.self_attn.q_proj",
)
SMALL = (
    {"ctx": 64, "eval_tokens": 256, "prompt_len": 16, "decode_tokens": 2, "repeats": 1},
    {"n_samples": 2, "seq_len": 32},
)


def _metrics(ppl: float, weight_bytes: int, prefill_ms: float) -> dict:
    return {
        "perplexity": ppl,
        "baseline_perplexity": 12.0,
        "bits_per_byte": ppl / 10,
        "kl_to_baseline": (ppl - 12.0) / 100,
        "weight_bytes": weight_bytes,
        "prefill_ms": prefill_ms,
        "decode_tok_s": 1000 / prefill_ms,
        "mean_layer_error": 0.01,
    }


def _layers(seed: int, with_act: bool) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, name in enumerate(LAYERS):
        w = torch.randn(24, 16, generator=g) * 0.02
        w[i, 0] = 0.5  # a weight outlier
        step = w.abs().max() / 127
        row = {"name": name, "scheme": "int8-sym-channel", "rel_error": 0.01 * (i + 1)}
        row.update(before_after(w, (w / step).round() * step))
        if with_act:
            x = torch.randn(64, 16, generator=g)
            x[:, 3] *= 30  # an outlier channel, as in LLM.int8()'s emergent features
            row["act"] = summarize(update_act_stats(ActStats(), x))
        rows.append(row)
    return rows


def _finish(sf, job_id: int, metrics: dict, layers: list[dict], device: str = "cpu") -> None:
    queue.claim(sf, WORKER, job_id=job_id)
    spec = queue.get_job(sf, job_id).spec
    fingerprint = {
        "model": spec["model"],
        "revision": "seed:0",
        "recipe": spec["recipe"],
        "eval_set": {"name": spec["eval_set"]},
        "calib_set": {"name": spec["calib"]} if spec["recipe"] else None,
        "eval_settings": spec["eval"],
        "seed": 0,
        "device": device,
    }
    assert queue.complete(sf, job_id, WORKER, metrics, layers, fingerprint)


# What the stored formats of each named recipe report (runs.assemble.run_nominal_bits).
NOMINAL_BITS = {"baseline": [32.0], "fp16": [16.0], "rtn-int8": [8.0], "rtn-int8-zp": [8.0]}


def _run(sf, name: str, ppl: float, weight_bytes: int, prefill_ms: float, seed: int) -> int:
    job_id = submit_run(
        sf, "tiny-random", NAMED_RECIPES[name], name, "stdlib-code", "stdlib-heldout", *SMALL
    )
    metrics = _metrics(ppl, weight_bytes, prefill_ms) | {"nominal_bits": NOMINAL_BITS[name]}
    _finish(sf, job_id, metrics, _layers(seed, name != "baseline"))
    return job_id


RTN3 = {"method": "rtn", "bits": 3, "granularity": "group", "group_size": 32}


def _sweep(sf, costs: dict[str, float | None]) -> str:
    """A sensitivity sweep over ``costs`` (unit -> perplexity, None: still queued)."""
    units = sweep_units(list(costs), RTN3)
    jobs = []
    for u, steps in zip(units, sensitivity_recipes(RTN3, units), strict=True):
        spec, label = build_spec(
            sf, "tiny-random", steps, "", "stdlib-code", "stdlib-heldout", *SMALL
        )
        jobs.append((f"{label} only {u.label}", spec.to_json()))
    sweep_id = queue.submit_sweep(sf, model="tiny-random", jobs=jobs)
    for job, ppl in zip(queue.sweep_jobs(sf, sweep_id), costs.values(), strict=True):
        if ppl is not None:
            _finish(sf, job.id, _metrics(ppl, 1_000_000, 5.0), [])
    return sweep_id


@pytest.fixture
def runs(sf) -> dict[str, int]:
    return {
        "baseline": _run(sf, "baseline", 12.0, 8_000_000, 5.0, 0),
        "fp16": _run(sf, "fp16", 12.01, 4_000_000, 6.0, 1),
        "rtn-int8": _run(sf, "rtn-int8", 12.3, 2_100_000, 9.0, 2),
        "rtn-int8-zp": _run(sf, "rtn-int8-zp", 12.6, 2_200_000, 9.5, 3),  # dominated by rtn-int8
    }


def _app(page: str, query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    if query:
        at.query_params.update(query)
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _frame(at: AppTest, column: str):
    """The first table with ``column`` (plain st.dataframe tables expose no key in AppTest)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _ints(at: AppTest):
    """The concept page's integer matrix: the table of c0.. columns holding integers."""
    frames = [d.value for d in at.dataframe if "c0" in d.value.columns]
    return next(f for f in frames if all(str(t).startswith("int") for t in f.dtypes))


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


# --- empty database ----------------------------------------------------------------


@pytest.mark.parametrize("page", [LEADERBOARD, RUN, OUTLIERS, SENSITIVITY])
def test_analysis_pages_say_what_to_do_on_an_empty_database(db_url, page) -> None:
    at = _app(page)
    titles = {
        LEADERBOARD: "Leaderboard",
        RUN: "Run",
        OUTLIERS: "Outlier explorer",
        SENSITIVITY: "Sensitivity",
    }
    assert at.title[0].value == titles[page]
    info = _texts(at.info)
    assert "queue one on new run" in info.lower() or "start one above" in info
    assert not at.get("plotly_chart")


def test_concepts_page_encodes_values_and_quantizes_the_matrix(db_url) -> None:
    at = _app(CONCEPTS)
    assert at.title[0].value == "Concepts"
    enc = _frame(at, "what happened").set_index("format")
    assert enc.loc["INT8", "bits"] == "0 0000100"  # 0.1 with max|x| = 3.2 -> 4
    assert enc.loc["FP16", "stored value"] == pytest.approx(0.0999755859375)
    at.number_input(key="cx_value").set_value(70000.0).run()
    enc = _frame(at, "what happened").set_index("format")
    assert enc.loc["FP16", "what happened"] == "overflow: became infinity"

    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Storage"] == "48 B → 16 B"
    assert _ints(at).iloc[0, 0] == 4
    clean_levels = _texts(at.caption)
    at.toggle(key="cx_outlier").set_value(True).run()
    assert not at.exception, [e.message for e in at.exception]
    q = _ints(at)
    assert q.iloc[1, 2] == 127 and q.iloc[0, 0] == 0  # 0.1 is crushed to zero by the outlier
    assert _texts(at.caption) != clean_levels
    compare = _frame(at, "levels used by the others").set_index("scheme")
    per_row, one = compare.loc["one scale per row"], compare.loc["one scale, no clipping"]
    assert per_row["mean |error| without the largest"] < one["mean |error| without the largest"]
    at.radio(key="cx_granularity").set_value("row").run()
    assert len({m.label: m.value for m in at.metric}["Scales (one per row)"].split(",")) == 3
    assert len(at.get("plotly_chart")) == 2  # bit layouts and the level grid


# --- leaderboard -------------------------------------------------------------------


def test_leaderboard_filters_and_pareto(runs) -> None:
    at = _app(LEADERBOARD)
    table = _frame(at, "pareto")
    assert sorted(table["id"]) == sorted(runs.values())
    pareto = dict(zip(table["recipe"], table["pareto"], strict=True))
    assert pareto["rtn-int8"] and not pareto["rtn-int8-zp"]  # worse on all three axes
    assert set(table["origin"]) == {"local"} and set(table["bits"]) == {"32", "16", "8"}
    at.multiselect(key="lb_bits").set_value(["8"]).run()
    assert sorted(_frame(at, "pareto")["recipe"]) == ["rtn-int8", "rtn-int8-zp"]
    at.toggle(key="lb_front").set_value(True).run()
    assert _frame(at, "pareto")["recipe"].tolist() == ["rtn-int8"]
    at.multiselect(key="lb_method").set_value(["cast"]).run()  # fp16 is on the front, not 8-bit
    assert "No run matches these filters" in _texts(at.info)


def test_leaderboard_imports_a_bundle_once_with_its_origin(sf, runs, tmp_path: Path) -> None:
    teammate = bundle.make_bundle([queue.get_job(sf, runs["rtn-int8"])], None, origin="alice@lab")
    fresh = dict(teammate["runs"][0])
    fresh["fingerprint"] = {**fresh["fingerprint"], "device": "cuda"}  # measured on her GPU
    teammate["runs"].append(fresh)
    at = _app(LEADERBOARD)
    at.file_uploader(key="lb_import").upload(
        "bundle.json", bundle.bundle_bytes(teammate), "application/json"
    ).run()
    assert not at.exception
    assert any("Imported 1 run(s) exported by alice@lab" in s.value for s in at.success)
    assert "1 already here were skipped" in _texts(at.success)
    table = _frame(at, "pareto")
    assert table["origin"].tolist().count("alice@lab") == 1 and len(table) == 5
    at.run()  # the uploader still holds the file: no second import
    assert len(queue.finished_runs(sf)) == 5

    at.file_uploader(key="lb_import").upload("bad.json", b'{"runs": []}', "application/json").run()
    assert "not a CompressLab bundle" in _texts(at.error)


# --- run page ----------------------------------------------------------------------


def test_run_page_opens_a_permalink(runs) -> None:
    rid = runs["rtn-int8"]
    at = _app(RUN, {"run": str(rid)})
    assert at.multiselect(key="run_ids").value == [rid]
    assert any(f"Run #{rid}" in s.value for s in at.subheader)
    assert f"?run={rid}" in _texts(at.caption)
    assert at.get("plotly_chart")  # the layer error chart
    assert at.query_params["run"] == str(rid)


def test_run_page_compares_runs_side_by_side(runs) -> None:
    ids = [runs["rtn-int8"], runs["fp16"], 999]
    at = _app(RUN, {"run": ",".join(map(str, ids))})
    assert "#999" in _texts(at.warning)  # a link to a run this database does not have
    side = _frame(at, "metric")
    assert list(side.columns) == ["metric", "unit", f"#{ids[0]} rtn-int8", f"#{ids[1]} fp16"]
    assert "12.3" in side.set_index("metric").loc["Perplexity"].tolist()
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    hist, curves = (json.loads(c.proto.spec) for c in charts)
    assert {t["name"] for t in hist["data"]} == {
        "uncompressed",
        f"#{ids[0]} rtn-int8",
        f"#{ids[1]} fp16",
    }
    assert hist["layout"]["yaxis"]["type"] == "log"
    assert "Relative output error" in curves["layout"]["yaxis"]["title"]["text"]
    at.multiselect(key="run_ids").set_value([ids[1]]).run()
    assert at.query_params["run"] == str(ids[1])


# --- outlier explorer --------------------------------------------------------------


def test_outlier_explorer_heatmap_layer_and_smoothing(runs) -> None:
    rid = runs["rtn-int8"]
    at = _app(OUTLIERS, {"run": str(rid), "layer": LAYERS[1]})
    assert (
        at.selectbox(key="ox_run").value == rid and at.selectbox(key="ox_layer").value == LAYERS[1]
    )
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    heat = charts[0]
    assert "Activation<br>max |x|" in heat["data"][0]["x"] and len(heat["data"][0]["y"]) == 3
    assert heat["layout"]["yaxis"]["title"]["text"] == "Linear layer"
    assert len(charts) == 5  # heatmap, histogram, channel maxima, activations, smoothing
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Activations > 6"].replace(",", "")) > 0
    smooth = charts[4]
    at.slider(key="ox_alpha").set_value(0.9).run()
    smooth_09 = json.loads(at.get("plotly_chart")[4].proto.spec)
    assert smooth["layout"]["title"]["text"] != smooth_09["layout"]["title"]["text"]
    assert "α = 0.9" in smooth_09["layout"]["title"]["text"]


def test_outlier_explorer_without_activation_statistics(runs) -> None:
    at = _app(OUTLIERS, {"run": str(runs["baseline"])})
    assert "No activation statistics" in _texts(at.info)
    assert len(at.get("plotly_chart")) == 3


# --- sensitivity -------------------------------------------------------------------


UNITS = {LAYERS[0]: 12.5, LAYERS[1]: 14.0, LAYERS[2]: None}


def test_sensitivity_results_and_keep_recipe_prefill_new_run(sf, db_url) -> None:
    _sweep(sf, UNITS)
    at = _app(SENSITIVITY)
    assert "2/3 finished" in str([p.proto.text for p in at.get("progress")])
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(chart["data"][0]["x"]) == 2  # the queued unit is not drawn yet
    assert "Perplexity" in chart["layout"]["yaxis"]["title"]["text"]
    table = _frame(at, "delta_ppl")
    assert table["unit"].tolist()[:2] == [LAYERS[1], LAYERS[0]]  # most costly first

    at.number_input(key="sens_keep").set_value(1).run()
    _follow_link(at, "Open this recipe in New run", NEW_RUN)
    assert not at.exception
    assert at.title[0].value == "New run"
    assert "prefill" not in at.query_params  # read once: a reload keeps what was typed
    assert "sensitivity sweep" in _texts(at.info)
    steps = json.loads(at.text_area(key="recipe_json").value)
    assert steps[0]["bits"] == 3 and LAYERS[1] in steps[0]["ignore"]
    assert steps[1]["bits"] == 8 and steps[1]["targets"] == [LAYERS[1]]
    assert at.number_input(key="eval_tokens").value == SMALL[0]["eval_tokens"]
    _button(at, "Queue run").click().run()
    assert not at.error, _texts(at.error)
    assert any("Queued job" in s.value for s in at.success)
    queued = [j for j in queue.list_jobs(sf) if j.status == "queued" and not j.sweep_id]
    assert len(queued) == 1 and queued[0].spec["recipe"][1]["targets"] == [LAYERS[1]]


def test_sensitivity_page_queues_a_block_sweep(sf, db_url) -> None:
    at = _app(SENSITIVITY)
    at.radio(key="sens_model_kind").set_value("tiny-random").run()
    at.radio(key="sens_unit").set_value("block").run()
    assert "2 job(s), one per block" in _texts(at.caption)
    _button(at, "Queue sensitivity sweep").click().run()
    assert not at.error, _texts(at.error)
    jobs = [j for j in queue.list_jobs(sf) if j.sweep_id]
    assert len(jobs) == 2 and len({j.sweep_id for j in jobs}) == 1
    targets = sorted(j.spec["recipe"][0]["targets"][0] for j in jobs)
    assert targets == ["model.layers.0.*", "model.layers.1.*"]
    assert "0/2 finished" in str([p.proto.text for p in at.get("progress")])
