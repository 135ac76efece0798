"""One builder for every door: the same recipe from New run (ui.submit) and from the CLI
(python -m workers run) is the same spec JSON, label and fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data import DataError, get_text_set
from core.recipe import NAMED_RECIPES
from core.registry import ConfigError
from db import queue
from db.session import session_factory
from runs.pipeline import run_job
from runs.records import recipe_ref, recipe_steps
from runs.spec import JobSpec, build_spec
from ui import submit
from workers import cli

EVAL = {"ctx": 32, "eval_tokens": 64}
CALIB = {"n_samples": 2, "seq_len": 32, "seed": 0}
STEPS = [{"method": "rtn", "bits": 4, "granularity": "group", "group_size": 32}]


def _cli_args(recipe: str, *extra: str):
    return cli._parser().parse_args(
        [
            "run",
            "--model",
            "tiny-random",
            "--recipe",
            recipe,
            "--ctx",
            str(EVAL["ctx"]),
            "--eval-tokens",
            str(EVAL["eval_tokens"]),
            "--calib-samples",
            str(CALIB["n_samples"]),
            "--calib-seq-len",
            str(CALIB["seq_len"]),
            *extra,
        ]
    )


def _ui(sf, steps, name=""):
    return submit.build_spec(
        sf, "tiny-random", steps, name, "stdlib-code", "stdlib-heldout", EVAL, CALIB
    )


@pytest.mark.parametrize(
    "cli_recipe, ui_steps, ui_name, label",
    [
        (
            '[{"method": "rtn", "bits": 4, "granularity": "group", "group_size": 32}]',
            STEPS,
            "",
            "rtn(bits=4, granularity=group, group_size=32)",
        ),
        ("rtn-int8", None, "rtn-int8", "rtn-int8"),
        ("baseline", [], "baseline", "baseline"),
    ],
)
def test_new_run_and_cli_build_the_same_spec_and_label(
    db_url, cli_recipe, ui_steps, ui_name, label
) -> None:
    sf = session_factory(db_url)
    steps = NAMED_RECIPES[ui_name] if ui_steps is None else ui_steps
    ui_spec, ui_label = _ui(sf, steps, ui_name)
    cli_spec, cli_label = cli.build_spec(_cli_args(cli_recipe), cli.text_exists(sf))
    assert ui_spec.to_json() == cli_spec.to_json()
    assert ui_label == cli_label == label


def test_same_recipe_same_fingerprint(db_url, tmp_path: Path) -> None:
    sf = session_factory(db_url)
    ui_spec, _ = _ui(sf, STEPS)
    cli_spec, _ = cli.build_spec(_cli_args(json.dumps(STEPS)), cli.text_exists(sf))
    prints = []
    for spec in (ui_spec, cli_spec):
        stored = JobSpec.from_json(spec.to_json())  # as a worker reads it from the queue
        res = run_job(stored, cache_dir=tmp_path, resolve_text=get_text_set)
        prints.append(res.fingerprint)
    assert prints[0] == prints[1]
    assert queue.fingerprint_hash(prints[0]) == queue.fingerprint_hash(prints[1])
    # The recipe is stored once, in the spec; the fingerprint refers to it.
    assert prints[0]["recipe"] == recipe_ref(ui_spec.recipe)
    assert recipe_steps(prints[0], {"recipe": ui_spec.recipe}) == ui_spec.recipe


def test_fingerprints_of_two_recipes_differ_in_their_hash() -> None:
    a = {"model": "m", "recipe": recipe_ref(STEPS)}
    b = {"model": "m", "recipe": recipe_ref([{**STEPS[0], "bits": 3}])}
    assert queue.fingerprint_hash(a) != queue.fingerprint_hash(b)


def test_old_fingerprints_with_the_steps_still_read() -> None:
    assert recipe_steps({"recipe": STEPS}, {"recipe": []}) == STEPS
    assert recipe_steps({}, {"recipe": STEPS}) == STEPS
    assert recipe_steps(None, None) == []


def test_the_builder_refuses_the_same_things_for_every_door() -> None:
    none_stored = lambda name: False  # noqa: E731
    with pytest.raises(ConfigError, match="choose a model"):
        build_spec(" ", STEPS, text_exists=none_stored)
    with pytest.raises(ConfigError, match="out of range"):
        build_spec("demo", [{"method": "rtn", "bits": 99}], text_exists=none_stored)
    with pytest.raises(DataError, match="unknown calibration set 'nope'"):
        build_spec("demo", [], calib="nope", text_exists=none_stored)
    with pytest.raises(DataError, match="is not in the database: upload it again"):
        build_spec("demo", STEPS, calib="upload:abc", text_exists=none_stored)
    spec, _ = build_spec("demo", STEPS, calib="upload:abc", text_exists=lambda n: True)
    assert spec.calib == "upload:abc"


def test_cli_refuses_an_upload_that_is_not_stored(db_url) -> None:
    sf = session_factory(db_url)
    with pytest.raises(cli.UsageError, match="upload it again"):
        cli.build_spec(_cli_args("rtn-int8", "--calib", "upload:0123"), cli.text_exists(sf))
