"""Calibration honesty (runs/calib_check.py): a set shorter than one window is refused
before expensive work when the recipe needs calibration data, noted with the real count
otherwise, and the run stores the calibration tokens it really used."""

from __future__ import annotations

import pytest

from core.calib import CalibSettings
from core.data import DataError, get_text_set, text_set_from_text
from core.recipe import parse_recipe
from runs import catalogue as cat
from runs.calib_check import check_size_at_submit
from runs.pipeline import run_job
from runs.spec import build_spec
from tests.tiny import tiny_spec

SHORT = "upload:0123456789ab"
SHORT_TEXT = "def f(x):\n    return x"  # 22 characters, as in the issue


def _resolve(name: str):  # noqa: ANN202
    if name == SHORT:
        return text_set_from_text(SHORT, SHORT_TEXT, "a short upload", "upload")
    return get_text_set(name)


def test_submission_refuses_a_set_of_fewer_bytes_than_one_window() -> None:
    cs = CalibSettings(n_samples=32, seq_len=256)
    with pytest.raises(DataError, match="22 bytes, fewer than one calibration window"):
        check_size_at_submit(parse_recipe('[{"method": "gptq"}]'), SHORT, 22, cs)
    check_size_at_submit(parse_recipe("rtn-int8"), SHORT, 22, cs)  # needs no calibration data
    check_size_at_submit(parse_recipe('[{"method": "gptq"}]'), "stdlib-code", None, cs)
    check_size_at_submit(parse_recipe('[{"method": "gptq"}]'), SHORT, 256, cs)


def test_the_job_builder_checks_the_size_of_an_upload() -> None:
    with pytest.raises(DataError, match="22 bytes"):
        build_spec(
            "tiny-random",
            parse_recipe('[{"method": "gptq"}]'),
            text_exists=lambda name: True,
            text_bytes=lambda name: 22 if name == SHORT else None,
            calib=SHORT,
        )
    spec, _ = build_spec(  # without a recipe nothing is calibrated
        "tiny-random",
        [],
        text_exists=lambda name: True,
        text_bytes=lambda name: 22,
        calib=SHORT,
    )
    assert spec.calib == SHORT


def test_a_job_refuses_a_short_set_before_the_baseline(tmp_path) -> None:
    stages: list[str] = []
    spec = tiny_spec('[{"method": "gptq", "bits": 4}]', calib=SHORT)
    with pytest.raises(DataError, match="tokens, fewer than one calibration window"):
        run_job(
            spec,
            cache_dir=tmp_path,
            resolve_text=_resolve,
            on_progress=lambda f, m: stages.append(m),
        )
    assert not any("baseline" in m or "calibrat" in m for m in stages)
    assert not list(tmp_path.iterdir())  # no baseline cache was computed


def test_a_data_free_recipe_runs_and_says_how_few_tokens_it_measured_on(tmp_path) -> None:
    res = run_job(tiny_spec("rtn-int8", calib=SHORT), cache_dir=tmp_path, resolve_text=_resolve)
    m = res.metrics
    assert 0 < m[cat.CALIB_SET_TOKENS.key] < 32
    assert m[cat.CALIB_TOKENS_USED.key] == m[cat.CALIB_SET_TOKENS.key]  # one short sample
    assert any(f"{m[cat.CALIB_SET_TOKENS.key]} tokens" in n for n in m["notes"])


def test_the_estimate_warns_of_a_short_upload_before_queueing() -> None:
    from ui.estimate_view import short_set_warning

    cs = CalibSettings(n_samples=32, seq_len=256)
    gptq, rtn = parse_recipe('[{"method": "gptq"}]'), parse_recipe("rtn-int8")
    assert short_set_warning(SHORT, 22, gptq, cs).startswith("Will not be queued")
    assert "needs no calibration data" in short_set_warning(SHORT, 22, rtn, cs)
    assert "overlap" in short_set_warning(SHORT, 5000, gptq, cs)
    assert short_set_warning(SHORT, 32 * 256, gptq, cs) == ""
    assert short_set_warning("stdlib-code", None, gptq, cs) == ""
