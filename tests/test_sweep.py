"""Sweeps: expansion and validation, queueing under one sweep id, plot rows, the figure."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from core.registry import ConfigError
from runs.sweep import (
    expand_sweep,
    numeric_params,
    parse_sweep_arg,
    sweep_points,
    sweep_values,
    swept_parameter,
)
from ui.figures_sweep import sweep_figure

CHAIN = [{"method": "wanda", "sparsity": 0.5}, {"method": "rtn", "bits": 8}]


def test_sparsity_sweep_expands_to_validated_recipes() -> None:
    values = sweep_values(0.1, 0.7, 0.1)
    assert values == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    recipes = expand_sweep(CHAIN, 0, "sparsity", values)
    assert [r[0]["sparsity"] for r in recipes] == values
    assert all(r[1] == recipes[0][1] and r[1]["bits"] == 8 for r in recipes)
    assert CHAIN[0]["sparsity"] == 0.5  # the base recipe is not modified
    assert swept_parameter(recipes) == (0, "sparsity")


def test_any_numeric_parameter_of_any_method() -> None:
    assert "bits" in numeric_params("rtn") and "symmetric" not in numeric_params("rtn")
    recipes = expand_sweep(CHAIN, 1, "bits", [2, 4.0, 8])
    assert [r[1]["bits"] for r in recipes] == [2, 4, 8]
    assert all(isinstance(r[1]["bits"], int) for r in recipes)
    assert swept_parameter(recipes) == (1, "bits")


@pytest.mark.parametrize(
    "steps, index, param, values, fragment",
    [
        (CHAIN, 0, "sparsity", [0.5, 1.0], "sweep value sparsity=1.0"),
        (CHAIN, 1, "bits", [4, 12], "out of range"),
        (CHAIN, 1, "bits", [4.5], "whole numbers"),
        (CHAIN, 1, "symmetric", [0, 1], "cannot be swept for rtn: numeric parameters are"),
        (CHAIN, 2, "bits", [4], "step_index=2 is out of range"),
        (CHAIN, 0, "sparsity", [], "at least one value"),
        (CHAIN, 0, "sparsity", [0.5, 0.5], "repeat"),
        ([{"method": "wanda", "pattern": "2:4"}], 0, "sparsity", [0.5], "exactly one of"),
    ],
)
def test_bad_sweeps_are_refused(steps, index, param, values, fragment) -> None:
    with pytest.raises(ConfigError) as e:
        expand_sweep(steps, index, param, values)
    assert fragment in str(e.value)


def test_parse_sweep_arg() -> None:
    assert parse_sweep_arg("sparsity=0.1:0.3:0.1") == ("sparsity", [0.1, 0.2, 0.3])
    assert parse_sweep_arg("bits=2,4,8") == ("bits", [2.0, 4.0, 8.0])
    for bad in ("sparsity", "sparsity=a:b:c", "=1,2", "sparsity=0.5:0.1:0.1"):
        with pytest.raises(ConfigError):
            parse_sweep_arg(bad)


def test_submit_sweep_queues_all_jobs_under_one_id(sf) -> None:
    from db import queue

    recipes = expand_sweep(CHAIN, 0, "sparsity", [0.2, 0.4])
    jobs = [(f"wanda {r[0]['sparsity']}", json.dumps({"recipe": r})) for r in recipes]
    sweep_id = queue.submit_sweep(sf, model="demo", jobs=jobs)
    rows = [j for j in queue.list_jobs(sf) if j.sweep_id == sweep_id]
    assert sorted(j.recipe_label for j in rows) == ["wanda 0.2", "wanda 0.4"]
    assert all(j.status == "queued" for j in rows)
    with pytest.raises(ValueError):
        queue.submit_sweep(sf, model="demo", jobs=[])


def _records() -> list[dict]:
    out = []
    for method, ppl in (("magnitude", (20.0, 40.0, 90.0)), ("wanda", (18.0, 25.0, 50.0))):
        base = [{"method": method, "sparsity": 0.5}]
        for r, p in zip(expand_sweep(base, 0, "sparsity", [0.3, 0.5, 0.7]), ppl, strict=True):
            out.append({"sweep_id": f"s-{method}", "recipe": r, "metrics": {"perplexity": p}})
    out.append({"sweep_id": None, "recipe": CHAIN, "metrics": {"perplexity": 1.0}})  # no sweep
    return out


def test_sweep_points_and_figure() -> None:
    rows = sweep_points(_records())
    df = pd.DataFrame(rows)
    assert len(df) == 6 and set(df["series"]) == {"magnitude", "wanda"}
    assert df[df.series == "wanda"]["perplexity"].tolist() == [18.0, 25.0, 50.0]
    fig = sweep_figure(df, baseline=12.0)
    assert [t.name for t in fig.data] == ["magnitude", "wanda"]
    assert list(fig.data[0].x) == [0.3, 0.5, 0.7] and list(fig.data[1].y) == [18.0, 25.0, 50.0]
    assert fig.layout.xaxis.title.text == "sparsity (swept)"
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.shapes[0].y0 == 12.0  # the uncompressed line
    empty = sweep_figure(pd.DataFrame(columns=["series", "param", "value", "perplexity"]))
    assert len(empty.data) == 0 and empty.layout.annotations
