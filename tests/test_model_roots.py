"""Local model folders under the model roots (COMPRESSLAB_MODEL_ROOTS) in the team modes;
any folder in ``none`` mode; hub ids checked without the network. All offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import ModelLoadError
from core.models import (
    DEMO_DIR,
    TINY_RANDOM,
    ZOO_DIR,
    check_model,
    is_folder_spec,
    model_roots,
    model_source,
)


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def team(tmp_path, monkeypatch) -> Path:
    """Password mode with one root, ``tmp_path/root``; returns the root."""
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("COMPRESSLAB_AUTH", "password")
    monkeypatch.setenv("COMPRESSLAB_MODEL_ROOTS", str(root))
    return root


def _refusal(spec: str) -> str:
    with pytest.raises(ModelLoadError) as e:
        model_source(spec)
    return str(e.value)


def test_a_folder_under_a_root_is_allowed(team) -> None:
    folder = _model(team / "m")
    assert model_source(str(folder)) == folder.resolve()
    check_model(str(folder))  # has a config.json: accepted before queueing


def test_a_folder_outside_the_roots_is_refused_and_names_the_roots(team, tmp_path) -> None:
    outside = _model(tmp_path / "outside")
    msg = _refusal(str(outside))
    assert msg.startswith(f"model folder {str(outside)!r} is not allowed")
    assert str(team.resolve()) in msg and "COMPRESSLAB_MODEL_ROOTS" in msg


def test_missing_and_forbidden_folders_get_the_same_message(team, tmp_path) -> None:
    outside = _model(tmp_path / "outside")
    missing = tmp_path / "missing"
    inside_missing = team / "missing"
    words = {_refusal(str(p)).replace(repr(str(p)), "X") for p in (outside, missing)}
    words.add(_refusal(str(inside_missing)).replace(repr(str(inside_missing)), "X"))
    assert len(words) == 1


def test_a_symlink_cannot_escape_a_root(team, tmp_path) -> None:
    outside = _model(tmp_path / "outside")
    (team / "link").symlink_to(outside, target_is_directory=True)
    assert "is not allowed" in _refusal(str(team / "link"))


def test_dot_dot_cannot_escape_a_root(team, tmp_path) -> None:
    _model(tmp_path / "outside")
    assert "is not allowed" in _refusal(f"{team}/../outside")
    assert "is not allowed" in _refusal(f"{team}/sub/../../outside")


def test_a_relative_path_outside_the_roots_is_not_probed(team, tmp_path, monkeypatch) -> None:
    """``org/name`` is a hub id unless it is a folder under a root: a folder elsewhere with
    that name changes nothing, so the answer reveals nothing about it."""
    _model(tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    assert model_source("org/name") == "org/name"
    assert not is_folder_spec("org/name")
    monkeypatch.chdir(team)
    _model(team / "org" / "name")
    assert model_source("org/name") == (team / "org" / "name").resolve()


def test_none_mode_allows_any_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMPRESSLAB_AUTH", "none")
    monkeypatch.setenv("COMPRESSLAB_MODEL_ROOTS", str(tmp_path / "root"))
    folder = _model(tmp_path / "anywhere")
    assert model_source(str(folder)) == folder
    with pytest.raises(ModelLoadError, match="does not exist"):
        model_source(str(tmp_path / "missing"))


def test_unset_auth_is_none_mode(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("COMPRESSLAB_AUTH", raising=False)
    monkeypatch.setenv("COMPRESSLAB_MODEL_ROOTS", str(tmp_path / "root"))
    folder = _model(tmp_path / "anywhere")
    assert model_source(str(folder)) == folder


@pytest.mark.parametrize("mode", ["password", "proxy", "something-else"])
def test_every_other_mode_is_a_team_mode(mode, team, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMPRESSLAB_AUTH", mode)
    assert "is not allowed" in _refusal(str(_model(tmp_path / "outside")))


def test_default_roots_are_the_data_folder_and_the_bundled_models(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("COMPRESSLAB_MODEL_ROOTS", raising=False)
    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("COMPRESSLAB_AUTH", "proxy")
    assert model_roots() == [(tmp_path / "data").resolve(), ZOO_DIR.resolve()]
    run = _model(tmp_path / "data" / "models" / "run-1")
    assert model_source(str(run)) == run.resolve()


def test_several_roots_split_on_pathsep(tmp_path, monkeypatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("COMPRESSLAB_MODEL_ROOTS", f"{a}{os.pathsep}{b}")
    assert model_roots() == [a.resolve(), b.resolve()]


def test_demo_tiny_and_hub_ids_stay_allowed_in_team_mode(team) -> None:
    assert model_source(TINY_RANDOM) == TINY_RANDOM
    if (DEMO_DIR / "config.json").is_file():
        assert model_source("demo") == DEMO_DIR
    assert model_source("gpt2") == "gpt2"
    assert model_source("facebook/opt-125m") == "facebook/opt-125m"


@pytest.mark.parametrize("spec", ["a/b/c", "org/bad--name", "org/na..me", "x" * 97, "sp ace"])
def test_malformed_hub_ids_are_refused(spec) -> None:
    with pytest.raises(ModelLoadError, match="is neither a folder nor a hub id"):
        model_source(spec)


def test_an_uncached_hub_id_is_refused_offline_without_downloading(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"^hub unreachable \(offline\?\): HF_HUB_OFFLINE=1"):
        check_model("nobody/never-cached-model")


def test_a_cached_hub_id_passes_offline(monkeypatch) -> None:
    import core.models as models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "in_hub_cache", lambda model_id: model_id == "org/cached")
    check_model("org/cached")


def test_an_unknown_hub_id_is_refused_when_the_hub_answers(monkeypatch) -> None:
    import core.models as models

    monkeypatch.setattr(models.hub, "probe", lambda *a, **k: None)
    monkeypatch.setattr(models, "hub_lacks", lambda model_id: model_id == "org/nothing")
    with pytest.raises(ModelLoadError, match="model not found: 'org/nothing' is not a hub id"):
        check_model("org/nothing")
    check_model("org/something")


def test_the_worker_enforces_the_roots_when_it_loads(team, tmp_path) -> None:
    from core.models import load_model

    with pytest.raises(ModelLoadError, match="is not allowed"):
        load_model(str(_model(tmp_path / "outside")))


def test_the_new_run_folder_field_reveals_nothing_outside_the_roots(
    team, tmp_path, monkeypatch
) -> None:
    from ui.forms import _model_keys, folder_note

    outside = _model(tmp_path / "outside")
    notes = {folder_note(str(p))[0].replace(repr(str(p)), "X") for p in (outside, tmp_path / "no")}
    assert len(notes) == 1 and "is not allowed" in notes.pop()
    note, ok = folder_note(str(_model(team / "m")))
    assert ok and note.startswith("Found config.json")
    _model(tmp_path / "org" / "name")  # a relative folder elsewhere stays a hub id
    monkeypatch.chdir(tmp_path)
    assert _model_keys("org/name")["model_kind"] == "hub"


def test_trust_remote_code_stays_off() -> None:
    """No code outside the tests opts in to running a model repository's own code."""
    import inspect

    from core.models import load_model

    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    root = Path(__file__).resolve().parent.parent
    for pkg in ("core", "runs", "ui", "app_pages", "workers", "db"):
        for path in (root / pkg).rglob("*.py"):
            assert "trust_remote_code=True" not in path.read_text(), path


def test_the_one_builder_refuses_a_folder_outside_the_roots_at_submission(team, tmp_path) -> None:
    from core.registry import ConfigError
    from runs.spec import build_spec

    outside = _model(tmp_path / "outside")
    with pytest.raises(ConfigError, match="is not allowed"):
        build_spec(str(outside), [{"method": "rtn"}], text_exists=lambda n: False)
    inside = _model(team / "m")
    spec, _ = build_spec(str(inside), [{"method": "rtn"}], text_exists=lambda n: False)
    assert spec.model == str(inside)
