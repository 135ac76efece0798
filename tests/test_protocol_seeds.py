"""Seed groups (one recipe over several calibration seeds, one sweep) and their summary;
the reached sparsity a run stores."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pandas as pd
import pytest

from core.data import get_text_set
from core.registry import ConfigError
from runs import catalogue as cat
from runs.pipeline import run_job
from runs.sweep import seed_group_summary, seed_specs
from tests.tiny import tiny_spec
from ui.figures_seeds import seed_spread_figure


def _records(sweep_id: str, spec, ppls: list[float], kls: list[float]) -> list[dict]:
    specs = seed_specs(spec, "wanda", len(ppls))
    return [
        {
            "sweep_id": sweep_id,
            "label": label,
            "spec": json.loads(s.to_json()),
            "metrics": {cat.PERPLEXITY.key: p, cat.KL_TO_BASELINE.key: k},
        }
        for (label, s), p, k in zip(specs, ppls, kls, strict=True)
    ]


def test_seed_specs_differ_only_in_the_seed() -> None:
    spec = tiny_spec()
    spec = dataclasses.replace(
        spec, calib_settings=dataclasses.replace(spec.calib_settings, seed=3)
    )
    specs = seed_specs(spec, "rtn", 4)
    assert [s.calib_settings.seed for _, s in specs] == [3, 4, 5, 6]
    assert [label for label, _ in specs][0] == "rtn seed=3"
    assert all(dataclasses.replace(s, calib_settings=spec.calib_settings) == spec for _, s in specs)
    with pytest.raises(ConfigError, match="2..20"):
        seed_specs(spec, "rtn", 1)


def test_group_summary_is_mean_and_sample_spread() -> None:
    spec = tiny_spec()
    ppls, kls = [67.1, 70.4, 74.9, 69.0, 76.2], [0.31, 0.35, 0.40, 0.33, 0.41]
    rows = seed_group_summary(_records("g1", spec, ppls, kls))
    assert len(rows) == 1
    row = rows[0]
    assert row["n"] == 5 and row["seeds"] == [0, 1, 2, 3, 4] and row["label"] == "wanda"
    assert row[f"{cat.PERPLEXITY.key}_mean"] == pytest.approx(statistics.fmean(ppls))
    assert row[f"{cat.PERPLEXITY.key}_std"] == pytest.approx(statistics.stdev(ppls))
    assert row[f"{cat.KL_TO_BASELINE.key}_max"] == 0.41
    fig = seed_spread_figure(pd.DataFrame(rows), cat.PERPLEXITY)
    point = [t for t in fig.data if t.type == "scatter"][0]
    assert list(point.error_y.array) == pytest.approx([statistics.stdev(ppls)])


def test_a_sweep_over_something_else_is_not_a_seed_group() -> None:
    spec = tiny_spec()
    recs = _records("g2", spec, [1.0, 2.0], [0.1, 0.2])
    recs[1]["spec"]["recipe"] = [{"method": "rtn", "bits": 4}]  # a parameter sweep
    assert seed_group_summary(recs) == []
    same_seed = _records("g3", spec, [1.0, 2.0], [0.1, 0.2])
    same_seed[1]["spec"]["calib_settings"]["seed"] = 0
    assert seed_group_summary(same_seed) == []


def test_a_pruning_run_stores_the_sparsity_it_reached(tmp_path: Path) -> None:
    spec = tiny_spec('[{"method": "magnitude", "sparsity": 0.5}]')
    res = run_job(spec, cache_dir=tmp_path, resolve_text=get_text_set)
    rows = {r.name: r for r in res.layer_rows}
    pruned = [r for n, r in rows.items() if n != "lm_head"]
    assert all(r.sparsity_reached == pytest.approx(0.5, abs=1e-3) for r in pruned)
    assert res.result.sparsity_reached == pytest.approx(0.5, abs=1e-3)
    assert res.metrics[cat.SPARSITY.key] == res.result.sparsity_reached
    dense = run_job(tiny_spec(), cache_dir=tmp_path, resolve_text=get_text_set)
    assert dense.result.sparsity_reached is not None and dense.result.sparsity_reached < 0.05
