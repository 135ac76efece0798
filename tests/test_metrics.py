"""Pure metric helpers: speed against the uncompressed model."""

from __future__ import annotations

import pytest

from core.metrics import speed_vs_baseline
from runs.catalogue import BY_KEY


def test_speedups_are_ratios_over_the_baseline() -> None:
    got = speed_vs_baseline(500, 4.0, 300.0, 1000, 8.0, 100.0)
    assert got == {"prefill_speedup": 2.0, "decode_speedup": 3.0, "smaller_but_slower": False}


@pytest.mark.parametrize(
    ("weight_bytes", "prefill_ms", "decode_tok_s", "flag"),
    [
        (500, 12.0, 100.0, True),  # smaller, prefill 1.5x slower
        (500, 10.0, 50.0, True),  # smaller, decode half as fast
        (500, 10.4, 100.0, False),  # 4% slower: within timing noise
        (1000, 20.0, 50.0, False),  # slower but not smaller: nothing was promised
        (2000, 20.0, 50.0, False),
    ],
)
def test_smaller_but_slower(weight_bytes: int, prefill_ms: float, decode_tok_s: float, flag: bool):
    got = speed_vs_baseline(weight_bytes, prefill_ms, decode_tok_s, 1000, 10.0, 100.0)
    assert got["smaller_but_slower"] is flag


def test_every_speed_key_is_defined() -> None:
    for key in speed_vs_baseline(1, 1.0, 1.0, 1, 1.0, 1.0):
        assert key in BY_KEY
