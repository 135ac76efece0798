"""Runs you can name, find, diff and clone, and charts on axes you choose (issue 18), on
the pages under AppTest with fixture runs pushed through the real queue."""

from __future__ import annotations

import json

import pandas as pd

from db import queue
from tests.test_ui_pages import BASE_BYTES, BASE_PREFILL_MS, _app, _finished, _follow_link
from ui import figures, frames
from ui.shell import COMPARE, NEW_RUN, RUN, RUNS


def _two(sf) -> tuple[int, int]:
    return (
        _finished(sf, "baseline", 12.0, BASE_BYTES, BASE_PREFILL_MS, 0),
        _finished(sf, "rtn-int8", 12.3, 2_100_000, 9.0, 2),
    )


def _history_ids(at) -> list[int]:
    return at.dataframe[-1].value["id"].tolist()  # the history is the Runs page's last grid


def test_name_tag_filter_archive_restore_on_the_runs_page(sf, db_url) -> None:
    base, rtn = _two(sf)
    at = _app(RUNS)
    at.selectbox(key="hist_open").set_value(rtn).run()
    form = [t for t in at.text_input if t.label == "Name"][0]
    form.set_value("int8 try")
    [t for t in at.text_input if t.label == "Tags (comma-separated)"][0].set_value("Paper, int8")
    [t for t in at.text_area if t.label == "Notes"][0].set_value("first one")
    [b for b in at.button if b.label == "Save name, tags and notes"][0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job = queue.get_job(sf, rtn)
    assert (job.name, job.tags, job.notes) == ("int8 try", ["paper", "int8"], "first one")
    table = at.dataframe[-1].value
    row = table[table["id"] == rtn].iloc[0]
    assert row["name"] == "int8 try" and row["tags"] == "paper, int8"
    assert row["details"] == "rtn(bits=8, per-channel)" and row["open"] == f"run?run={rtn}"

    at.multiselect(key="hist_tag").set_value(["paper"]).run()
    assert _history_ids(at) == [rtn]
    at.multiselect(key="hist_tag").set_value([]).run()
    at.text_input(key="hist_params").set_value("bits=8").run()
    assert _history_ids(at) == [rtn]
    at.text_input(key="hist_params").set_value("method=rtn, bits>=9").run()
    assert _history_ids(at) == []
    at.text_input(key="hist_params").set_value("").run()

    at.selectbox(key="hist_open").set_value(rtn).run()
    at.button(key=f"arch_hist_{rtn}").click().run()
    assert queue.get_job(sf, rtn).archived and _history_ids(at) == [base]
    at.toggle(key="hist_archived").set_value(True).run()
    assert set(_history_ids(at)) == {base, rtn}
    at.selectbox(key="hist_open").set_value(rtn).run()
    at.button(key=f"rest_hist_{rtn}").click().run()
    assert not queue.get_job(sf, rtn).archived


def test_clone_opens_new_run_with_the_recipe(sf, db_url) -> None:
    _, rtn = _two(sf)
    at = _app(RUNS)
    at.selectbox(key="hist_open").set_value(rtn).run()
    _follow_link(at, "Clone into New run", NEW_RUN)
    assert not at.exception, [e.message for e in at.exception]
    assert at.radio(key="recipe_mode").value == "JSON"
    steps = json.loads(at.text_area(key="recipe_json").value)
    assert [s["method"] for s in steps] == ["rtn"] and steps[0]["bits"] == 8
    assert any(f"run #{rtn}" in i.value for i in at.info)
    assert "clone" not in at.query_params  # read once: a reload keeps what was typed since
    at.text_area(key="recipe_json").set_value('[{"method": "rtn", "bits": 4}]').run()
    at.run()
    assert json.loads(at.text_area(key="recipe_json").value)[0]["bits"] == 4


def test_a_bad_clone_link_says_why_and_prefills_nothing(sf, db_url) -> None:
    _two(sf)
    for raw, why in (
        ("abc", "clone=abc is not a run number"),
        ("99999", "There is no run #99999"),
        ("9" * 5000, "is not a run number"),  # refused without echoing it whole
    ):
        at = _app()
        at.query_params["clone"] = raw
        at.switch_page(NEW_RUN).run()
        assert not at.exception, [e.message for e in at.exception]
        warnings = [w.value for w in at.warning]
        assert any(why in w for w in warnings) and max(map(len, warnings)) < 500, warnings
        assert not any("Pre-filled" in i.value for i in at.info)
        assert "clone" not in at.query_params


def test_the_run_page_shows_only_the_settings_that_differ(sf, db_url) -> None:
    base, rtn = _two(sf)
    at = _app()
    at.query_params["run"] = f"{base},{rtn}"
    at.switch_page(RUN).run()
    assert not at.exception
    diff = next(d for d in at.dataframe if "setting" in d.value.columns).value
    assert "step 1" in diff["setting"].tolist()  # the baseline has no step
    assert "step 1 rtn.bits" in diff["setting"].tolist()
    assert "model" not in diff["setting"].tolist() and "eval.ctx" not in diff["setting"].tolist()


def test_compare_axes_are_chosen_from_the_catalogue(sf, db_url) -> None:
    _two(sf)
    at = _app(COMPARE)
    n = len(at.get("plotly_chart"))
    at.toggle(key="cmp_explore").set_value(True).run()
    assert "Decode throughput (tokens/s, median)" in at.selectbox(key="cmp_x").options
    at.selectbox(key="cmp_x").set_value("decode_tok_s").run()
    at.selectbox(key="cmp_y").set_value("kl_to_baseline").run()
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == n + 2
    custom = charts[n]
    assert "tokens/s" in custom["layout"]["xaxis"]["title"]["text"]
    assert "KL" in custom["layout"]["yaxis"]["title"]["text"]
    assert charts[n + 1]["data"][0]["type"] == "parcoords"


def test_overlapping_runs_are_drawn_apart_and_hover_the_stored_value() -> None:
    df = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "recipe": ["a", "b", "c"],
            "model": ["m"] * 3,
            "method": ["rtn"] * 3,
            "weight_mb": [2.0, 2.0, 4.0],
            "perplexity": [12.0, 12.0, 13.0],
        }
    )
    x = figures.spread_overlaps(df, "weight_mb", "perplexity")
    assert x[0] != x[1] and (x[0] + x[1]) / 2 == 2.0 and x[2] == 4.0
    fig = figures.tradeoff_figure(df, "weight_mb")
    points = fig.data[0]
    assert sorted(c[3] for c in points.customdata) == [2.0, 2.0, 4.0]  # hover: stored x
    front = next(t for t in fig.data if t.name == "Pareto front")
    assert front.line.dash is None and front.line.width == 3  # a solid, visible line


def test_config_diff_and_parameter_filters_are_pure() -> None:
    class J:
        def __init__(self, i, steps, ctx):
            self.id, self.model, self.recipe_label = i, "demo", "r"
            self.spec = {"recipe": steps, "eval": {"ctx": ctx}}
            self.fingerprint = {}

    a = J(1, [{"method": "rtn", "bits": 4, "group_size": 128, "granularity": "group"}], 256)
    b = J(2, [{"method": "rtn", "bits": 8, "group_size": 128, "granularity": "group"}], 256)
    diff = frames.config_diff([a, b], ["#1", "#2"])
    assert diff.to_dict("records") == [{"setting": "step 1 rtn.bits", "#1": "4", "#2": "8"}]
    assert frames.recipe_details(a.spec["recipe"]) == "rtn(bits=4, group_size=128)"
    assert frames.matches_params(a, frames.parse_param_filter("bits<=4, group_size=128"))
    assert not frames.matches_params(b, frames.parse_param_filter("bits<=4"))
