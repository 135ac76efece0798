"""The search's layer times: every layer x candidate gets a positive time through the
module a run would call (no timing is asserted beyond sanity), the cache is keyed by
machine and reused, and the whole model is timed at the same shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.models import tiny_llama
from core.sensitivity import model_layers
from core.storage import CastLinear
from runs import search as S
from runs import search_latency as SL

QUICK = SL.LatencySettings(m=1, repeats=2, warmup=0, min_sample_s=1e-4)


def _setup():
    model = tiny_llama(hidden=64, layers=2).eval()
    names, path = model_layers(model)
    layers = [n for n in names if n.startswith(path + ".")]
    cands = S.parse_candidates(["fp16", "rtn-int8", "gptq-4bit-g128", "2:4+int4"])
    return model, layers, cands


def test_every_layer_and_candidate_gets_a_positive_time_and_the_cache_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path))
    model, layers, cands = _setup()
    seconds, how = SL.layer_seconds(model, layers, cands, QUICK)
    assert set(seconds) == set(layers)
    for row in seconds.values():
        assert set(row) == {c.name for c in cands}
        assert all(0 < t < 1 for t in row.values())
    groups = SL.shapes(model, layers)
    # the float layers as loaded are timed too, as a reference
    assert how["measured"] == len(groups) * (len(cands) + 1) and how["cached"] == 0
    assert how["as_loaded_ms"] > 0
    assert how["m"] == 1 and how["threads"] == torch.get_num_threads()
    # layers of one shape share the representative's time
    for names in groups.values():
        assert len({tuple(seconds[n].values()) for n in names}) == 1
    # same machine: the cache answers, nothing is timed again
    again, how2 = SL.layer_seconds(model, layers, cands, QUICK)
    assert again == seconds and how2["measured"] == 0
    # another shape (m) is measured anew; a table with times solves a time budget
    _, how3 = SL.layer_seconds(model, layers, cands[:1], SL.LatencySettings(m=4, repeats=1))
    assert how3["measured"] == 2 * len(groups)  # the candidate and the float reference
    table = S.ScoreTable(layers, [c.name for c in cands])
    for la in layers:
        for k, c in enumerate(cands):
            table.set(la, c.name, 1.0 / (k + 1), 100 * (4 - k), 64)
    table.set_seconds(seconds, how)
    budget = sum(min(r.values()) for r in seconds.values()) * 1.5
    sol = S.solve(table, budget, S.SECONDS)
    assert sol is not None and sol.seconds is not None and sol.seconds <= budget


def test_the_keep_candidate_is_timed_as_the_run_holds_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path))
    model, layers, cands = _setup()
    mods = SL.compressed_layers(model, layers[:1], cands[0])
    assert isinstance(mods[layers[0]], CastLinear)
    assert mods[layers[0]].weight.dtype == torch.float16


def test_whole_model_time_at_the_shape_is_positive() -> None:
    model, _, _ = _setup()
    for m in (1, 8):
        s = SL.LatencySettings(m=m, repeats=1, warmup=0)
        out = SL.model_seconds({"float": model}, s, context=8)
        assert 0 < out["float"] < 10


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="latency m"):
        SL.LatencySettings(m=0)
    with pytest.raises(ValueError, match="repeats"):
        SL.LatencySettings(repeats=0)
