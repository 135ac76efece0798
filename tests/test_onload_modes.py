"""The mode a device budget picks before a run, and the hub presets' estimated peaks."""

from __future__ import annotations

import pytest

from core.calib import CalibSettings
from core.models import tiny_llama
from core.modes import (
    BIG_PRESETS,
    IN_MEMORY,
    ONLOADED,
    mode_peaks,
    parse_bytes,
    preset_rows,
    preset_skeleton,
)
from core.recipe import parse_recipe

CALIB = CalibSettings(n_samples=16, seq_len=256)
GPTQ = parse_recipe("gptq-4bit-g128")


def test_budget_picks_in_memory_then_onloaded_then_refuses() -> None:
    model = tiny_llama(layers=4)
    free = mode_peaks(model, GPTQ, CALIB)
    assert free.mode == IN_MEMORY and free.onloaded < free.in_memory
    assert mode_peaks(model, GPTQ, CALIB, budget=free.in_memory).mode == IN_MEMORY
    tight = mode_peaks(model, GPTQ, CALIB, budget=free.onloaded)
    assert tight.mode == ONLOADED and tight.refusal() == ""
    too_small = mode_peaks(model, GPTQ, CALIB, budget=free.onloaded - 1)
    assert too_small.mode is None and "too small" in too_small.refusal()
    # more layers: the in-memory peak grows by a block each, the onloaded one does not
    more = mode_peaks(tiny_llama(layers=8), GPTQ, CALIB)
    assert more.in_memory - free.in_memory == 4 * free.block
    assert more.onloaded == free.onloaded


def test_parse_bytes_units_and_refusals() -> None:
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("6g") == 6 * 2**30 and parse_bytes("1.5GB") == 3 * 2**29
    for bad in ("lots", "-1G", "10k"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_presets_have_their_published_sizes_and_onloading_fits_them_smaller() -> None:
    published = {  # parameters (B) on the model cards
        "Qwen/Qwen2.5-0.5B": 0.49,
        "Qwen/Qwen2.5-1.5B": 1.54,
        "meta-llama/Llama-3.2-3B": 3.21,
        "Qwen/Qwen2.5-7B": 7.62,
        "meta-llama/Llama-3.1-8B": 8.03,
    }
    assert set(BIG_PRESETS) == set(published)
    for model_id, billions in published.items():
        n = sum(p.numel() for p in preset_skeleton(model_id).parameters())
        assert n / 1e9 == pytest.approx(billions, abs=0.01), model_id
    rows = preset_rows(GPTQ, CALIB)
    assert [r["model"] for r in rows] == list(published)
