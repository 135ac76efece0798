"""Pure builders of the analysis views: leaderboard frame and 3-objective Pareto, heatmap,
channel / activation / smoothing figures, comparison figures, sensitivity chart, the New run
pre-fill, permalink ids and the side-by-side metrics table."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from core.actstats import ActStats, smoothed_ranges, summarize, update_act_stats
from core.stats import before_after
from runs.records import bits_label
from ui import compare_view, forms, frames, shell
from ui.figures_layers import (
    activation_figure,
    channel_figure,
    heatmap_figure,
    layer_from_selection,
    smoothing_figure,
)
from ui.figures_runs import layer_error_curves, overlaid_histograms, sensitivity_figure

# --- leaderboard frame -------------------------------------------------------------


def _job(i: int, steps: list[dict], ppl: float, mb: float, ms: float, **kw) -> SimpleNamespace:
    fp = {"recipe": steps, "calib_set": {"name": "stdlib-code"} if steps else None}
    return SimpleNamespace(
        id=i,
        model=kw.get("model", "m"),
        recipe_label=kw.get("label", f"r{i}"),
        result={
            "perplexity": ppl,
            "weight_bytes": mb * 1e6,
            "prefill_ms": ms,
            "nominal_bits": [4.0] if steps else [32.0],
        },
        fingerprint=fp,
        spec={"eval_set": "e", "eval": {"ctx": 8, "eval_tokens": 64}, "calib": "stdlib-code"},
        fingerprint_hash=f"{i:032d}",
        origin=kw.get("origin", "local"),
        finished_at=None,
    )


def test_bits_come_from_the_stored_formats_and_sparsity_from_the_recipe() -> None:
    assert bits_label({"nominal_bits": [4.0]}) == "4"
    assert bits_label({"nominal_bits": [8.0, 4.0]}) == "4/8"
    assert bits_label({"nominal_bits": [32.0]}) == "32"
    # Rows written before the formats were recorded: read back from effective bits.
    assert bits_label({"compressed_bits_per_weight": 4.125, "bits_per_weight": 4.2}) == "4"
    assert bits_label({"compressed_bits_per_weight": None, "bits_per_weight": 32.0}) == "32"
    assert bits_label({}) == "?"
    assert frames.recipe_sparsity([{"method": "wanda", "pattern": "2:4"}]) == 0.5
    assert (
        frames.recipe_sparsity([{"method": "magnitude", "sparsity": 0.3, "pattern": None}]) == 0.3
    )
    assert frames.recipe_sparsity([{"method": "rtn", "bits": 4}]) == 0.0


def test_leaderboard_frame_columns_and_origin() -> None:
    jobs = [
        _job(1, [], 10.0, 8.0, 5.0),
        _job(2, [{"method": "rtn", "bits": 4}], 11.0, 2.0, 6.0, origin="alice@lab"),
    ]
    df = frames.leaderboard_frame(jobs)
    assert df["bits"].tolist() == ["32", "4"] and df["calib"].tolist() == ["none", "stdlib-code"]
    assert df["origin"].tolist() == ["local", "alice@lab"]
    assert df["fingerprint"].str.len().tolist() == [12, 12]


def test_pareto_mask_three_objectives_per_group() -> None:
    df = pd.DataFrame(
        {
            "model": ["a", "a", "a", "a", "b"],
            "mem": [1.0, 2.0, 2.0, 1.0, 9.0],
            "lat": [5.0, 1.0, 2.0, 5.0, 9.0],
            "ppl": [10.0, 10.0, 11.0, 10.0, 99.0],
        }
    )
    obj = {"mem": "lower", "lat": "lower", "ppl": "lower"}
    mask = frames.pareto_mask(df, obj)
    # Row 2 is beaten by row 1 on all three; rows 0 and 3 tie exactly (both stay);
    # model b's only run is its own front however bad.
    assert mask.tolist() == [True, True, False, True, True]
    assert frames.pareto_mask(df, obj, group=None).tolist() == [True, True, False, True, False]
    higher = frames.pareto_mask(df.assign(lat=-df["lat"]), {**obj, "lat": "higher"})
    assert higher.tolist() == mask.tolist()
    nan = df.assign(ppl=[float("nan"), 10.0, 11.0, 10.0, 99.0])
    assert not frames.pareto_mask(nan, obj)[0]


def test_most_interesting_layer_prefers_activation_outliers() -> None:
    rows = {
        "a": {"rel_error": 0.5, "act": {"n_above": 0}},
        "b": {"rel_error": 0.1, "act": {"n_above": 30}},
        "c": {"rel_error": 0.9},
    }
    assert frames.most_interesting(rows) == "b"
    assert (
        frames.most_interesting({k: {"rel_error": v} for k, v in (("x", 0.1), ("y", 0.2))}) == "y"
    )


# --- outlier explorer figures ------------------------------------------------------


def _rows() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i, name in enumerate(["model.layers.0.q", "model.layers.0.down", "lm_head"]):
        w = torch.randn(8, 6, generator=g)
        row = {"name": name, "rel_error": 0.01 * 10**i, **before_after(w, w.round())}
        if name != "lm_head":
            x = torch.randn(20, 6, generator=g) * (1 + 10 * i)
            row["act"] = summarize(update_act_stats(ActStats(), x))
        rows.append(row)
    return rows


def test_heatmap_normalises_each_column_and_carries_layer_names() -> None:
    table = frames.layers_frame(_rows(), 3.0)
    fig = heatmap_figure(table, 3.0, selected="model.layers.0.down")
    heat, cells = fig.data[0], fig.data[1]
    assert list(heat.y) == ["q", "down", "lm_head"]  # the shared prefix dropped
    labels = list(heat.x)
    assert any("Activation" in x for x in labels) and any("3σ" in x for x in labels)
    z = np.asarray(heat.z, dtype=float)
    err = labels.index("Layer output<br>error")
    assert z[:, err].tolist() == pytest.approx([0.0, 0.5, 1.0])  # log scale: 0.01, 0.1, 1
    act = [i for i, x in enumerate(labels) if x.startswith("Activation<br>")][0]
    assert math.isnan(z[2, act])  # lm_head recorded no activations here
    assert heat.text[2][err] == "1"
    assert cells.customdata[len(labels)][0] == "model.layers.0.down"  # first cell of row 2
    assert fig.layout.shapes[0].y0 == 0.5  # the selected row outlined
    assert fig.layout.xaxis.title.text == "Metric" and fig.layout.yaxis.title.text
    assert fig.layout.clickmode == "event+select"


def test_layer_from_selection() -> None:
    sel = {"selection": {"points": [{"customdata": ["model.layers.0.q", "x", "1"]}]}}
    assert layer_from_selection(sel) == "model.layers.0.q"
    assert layer_from_selection({"selection": {"points": []}}) is None
    assert layer_from_selection(None) is None


def test_channel_activation_and_smoothing_figures() -> None:
    rows = _rows()
    fig = channel_figure(rows[0]["before"]["channel_absmax"], rows[0]["after"]["channel_absmax"])
    assert [t.name for t in fig.data] == [
        "before",
        "after",
    ] and "channel" in fig.layout.xaxis.title.text
    act = {**rows[1]["act"], "channel_absmax": [1.0, 7.0, 2.0], "threshold": 6.0}
    afig = activation_figure(act)
    assert list(afig.data[0].marker.color).count(afig.data[0].marker.color[1]) == 1  # only ch 1 red
    assert afig.layout.shapes[0].y0 == 6.0 and afig.layout.yaxis.title.text
    sm = smoothed_ranges([1.0, 40.0, 2.0], [0.1, 0.1, 0.4], 0.5)
    sfig = smoothing_figure(sm, 0.5)
    assert len(sfig.data) == 4 and sfig.layout.yaxis.type == "log"
    assert "α = 0.5" in sfig.layout.title.text
    assert np.allclose(sfig.data[1].y, sm.act_after.numpy())


# --- comparison and sensitivity figures --------------------------------------------


def test_overlaid_histograms_and_error_curves() -> None:
    rows = _rows()
    fig = overlaid_histograms([("#1", rows[0]["after"]), ("#2", None)], rows[0]["before"])
    assert [t.name for t in fig.data] == ["uncompressed", "#1"] and fig.layout.yaxis.type == "log"
    curves = layer_error_curves(
        {
            "#1": pd.DataFrame({"layer": ["m.l.0.q", "m.l.1.q"], "rel_error": [0.1, 0.2]}),
            "#2": pd.DataFrame({"layer": ["m.l.1.q", "m.l.0.q"], "rel_error": [0.4, 0.3]}),
        }
    )
    assert list(curves.data[1].x) == ["0.q", "1.q"]  # model order, whatever the row order
    assert list(curves.data[1].y) == [0.3, 0.4]
    assert curves.layout.yaxis.type == "log" and curves.layout.xaxis.title.text


def test_sensitivity_figure_marks_kept_units_and_pending_ones() -> None:
    pts = [
        {"unit": "m.l.1.*", "delta_ppl": 2.0, "perplexity": 12.0, "rel_cost": 0.2},
        {"unit": "m.l.0.*", "delta_ppl": 0.5, "perplexity": 10.5, "rel_cost": 0.05},
        {"unit": "m.l.2.*", "delta_ppl": float("nan"), "perplexity": float("nan"), "rel_cost": 0},
    ]
    fig = sensitivity_figure(pts, keep=["m.l.1.*"])
    bar = fig.data[0]
    assert list(bar.x) == ["1.*", "0.*"] and list(bar.y) == [2.0, 0.5]
    assert bar.marker.color[0] != bar.marker.color[1]
    assert "1 unit(s) not finished" in fig.layout.title.subtitle.text
    assert fig.layout.xaxis.type == "category" and "Perplexity" in fig.layout.yaxis.title.text
    assert sensitivity_figure([]).layout.annotations  # says there is nothing yet


# --- page helpers ------------------------------------------------------------------


def test_a_kept_prefill_is_taken_only_through_its_link_parameter() -> None:
    state: dict = {}
    forms.prefill_new_run(state, model="demo", steps=[{"method": "rtn"}], source="s", slot="x")
    assert forms.apply_prefill(state) is None  # kept, not pending: New run opened plainly
    params = {forms.PREFILL_PARAM: "x"}
    assert forms.take_prefill_param(state, params) is None and not params
    assert forms.apply_prefill(state) == "s" and state["model_kind"] == "demo"
    assert forms.take_prefill_param(state, {}) is None  # no parameter: nothing to say
    for name in ("other", "x" * 10_000):  # kept in another session, or nonsense
        params = {forms.PREFILL_PARAM: name}
        why = forms.take_prefill_param(state, params)
        assert why and "another browser tab or session" in why and not params
        assert forms.apply_prefill(state) is None


def test_prefill_writes_the_new_run_widget_keys() -> None:
    state: dict = {}
    steps = [{"method": "rtn", "bits": 4}]
    forms.prefill_new_run(
        state,
        model="org/model",
        steps=steps,
        source="a sweep",
        calib="stdlib-code",
        eval_set="stdlib-heldout",
        eval={"ctx": 64, "eval_tokens": 512},
        calib_settings={"n_samples": 4, "seq_len": 32, "seed": 1},
    )
    assert forms.apply_prefill(state) == "a sweep"
    assert forms.PREFILL_KEY not in state and forms.apply_prefill(state) is None
    assert state["model_kind"] == "hub" and state["hub_other"] == "org/model"
    assert state["recipe_mode"] == "JSON" and json_steps(state) == steps
    assert (state["ctx"], state["eval_tokens"]) == (64, 512)
    assert (state["calib_samples"], state["seq_len"], state["seed"]) == (4, 32, 1)
    for model, kind in (("demo", "demo"), ("tiny-random", "tiny-random"), ("/m", "folder")):
        s: dict = {}
        forms.prefill_new_run(s, model=model, steps=[], source="x")
        forms.apply_prefill(s)
        assert s["model_kind"] == kind


def json_steps(state: dict) -> list:
    import json

    return json.loads(state["recipe_json"])


def test_query_ids_and_side_by_side() -> None:
    assert shell.query_ids("12") == [12]
    assert shell.query_ids("12,15, x,12,,-3") == [12, 15]
    assert shell.query_ids(None) == []
    jobs = [
        SimpleNamespace(id=1, recipe_label="a", model="m", origin="local", spec={},
                        result={"perplexity": 10.0, "weight_bytes": 2_000_000}),
        SimpleNamespace(id=2, recipe_label="b", model="m", origin="alice",
                        result={"perplexity": 11.0}, spec={}),
    ]  # fmt: skip
    df = compare_view.side_by_side(jobs).set_index("metric")
    assert list(df.columns) == ["unit", "#1 a", "#2 b"]
    assert df.loc["Perplexity", "#2 b"] == "11"
    assert df.loc["Weight memory", "#2 b"] == "-"  # not recorded by run 2
    assert df.loc["Origin"].tolist() == ["", "local", "alice"]
