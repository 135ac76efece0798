"""ui.submit: what the New run page queues, and what it refuses (queueing nothing)."""

from __future__ import annotations

import pytest

from core.data import DataError
from core.recipe import NAMED_RECIPES, recipe_from_steps
from core.registry import ConfigError
from db import queue
from runs.spec import JobSpec
from ui.submit import recipe_label, steps_from_json, submit_run

EV = {"ctx": 128, "eval_tokens": 512}
CS = {"n_samples": 4, "seq_len": 64, "seed": 3}


def _submit(sf, steps, name="", model="tiny-random", calib="stdlib-code", **kw):
    return submit_run(sf, model, steps, name, calib, kw.get("eval_set", "stdlib-heldout"), EV, CS)


def test_named_recipe_is_queued_with_its_settings(sf) -> None:
    job_id = _submit(sf, NAMED_RECIPES["rtn-int8"], "rtn-int8")
    job = queue.get_job(sf, job_id)
    assert job.status == "queued" and job.recipe_label == "rtn-int8"
    spec = JobSpec.from_json(job.spec_json)
    assert spec.model == "tiny-random" and spec.recipe_name == "rtn-int8"
    assert spec.parsed_recipe().steps[0].config.bits == 8
    assert (spec.eval.ctx, spec.eval.eval_tokens) == (128, 512)
    assert (spec.calib_settings.n_samples, spec.calib_settings.seed) == (4, 3)
    assert spec.calib == "stdlib-code" and spec.eval_set == "stdlib-heldout"


def test_built_steps_get_a_descriptive_label(sf) -> None:
    steps = [{"method": "rtn", "bits": 4, "granularity": "group", "group_size": 64}]
    job = queue.get_job(sf, _submit(sf, steps))
    assert job.recipe_label == "rtn(bits=4, granularity=group, group_size=64)"
    assert recipe_label(recipe_from_steps([])) == "baseline"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"method": "rtn", "bits": 99}], "out of range"),
        ([{"method": "no-such-method"}], "unknown method"),
        ([{"method": "rtn", "bitz": 8}], "unknown parameter"),
        ([{"method": "rtn", "granularity": "row"}], "not allowed"),
    ],
)
def test_bad_recipe_is_refused_and_nothing_queued(sf, steps, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _submit(sf, steps)
    assert queue.list_jobs(sf) == []


def test_bad_settings_data_or_model_are_refused(sf) -> None:
    with pytest.raises(ValueError, match="ctx"):
        submit_run(sf, "tiny-random", [], "", "stdlib-code", "stdlib-heldout", {"ctx": 4}, CS)
    with pytest.raises(DataError, match="unknown calibration set"):
        _submit(sf, NAMED_RECIPES["rtn-int8"], calib="no-such-set")
    with pytest.raises(DataError, match="not in the database"):
        _submit(sf, NAMED_RECIPES["rtn-int8"], calib="upload:0123456789ab")
    with pytest.raises(ConfigError, match="choose a model"):
        _submit(sf, [], model="  ")
    assert queue.list_jobs(sf) == []


def test_stored_upload_can_calibrate(sf) -> None:
    name = queue.store_text(sf, "mine.txt", "def f():\n    return 1\n" * 50)
    job = queue.get_job(sf, _submit(sf, NAMED_RECIPES["rtn-int8"], calib=name))
    assert JobSpec.from_json(job.spec_json).calib == name


def test_steps_from_json() -> None:
    assert steps_from_json('[{"method": "rtn", "bits": 4}]') == [{"method": "rtn", "bits": 4}]
    assert steps_from_json('{"method": "cast"}') == [{"method": "cast"}]
    with pytest.raises(ConfigError, match="named recipe 'baseline'"):
        steps_from_json('{"steps": []}')  # an empty recipe is a mistake, not the baseline
    with pytest.raises(ConfigError, match="not valid JSON"):
        steps_from_json("[{method: rtn}]")
    with pytest.raises(ConfigError, match="list of steps"):
        steps_from_json("8")
