"""The data folder stays bounded: ``python -m workers gc`` (planned, then removed), the
quota on kept models and caches, atomic saves, and the model's .zip written to disk."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import pytest
import torch

from core.data import get_text_set
from core.metrics import LogprobStore
from core.models import byte_tokenizer, tiny_llama
from core.recipe import recipe_from_steps
from core.registry import ConfigError
from core.save import QUANT_CONFIG, SaveError, archive, load_compressed, save_compressed
from core.walk import apply_recipe
from runs.pipeline import run_job
from runs.preflight import MAX_DATA_ENV, check_cache_quota, data_bytes, quota_problem
from runs.spec import JobSpec
from tests.tiny import tiny_spec
from workers import gc

NOW = 1_800_000_000.0
DAY = 86400.0
DEAD_PID = 2**22 + 12345  # above the usual pid_max: no such process


def _entry(kind: str, name: str, age_s: float, **kw: object) -> gc.Entry:
    return gc.Entry(kind, (Path(name),), NOW - age_s, 10, **kw)  # type: ignore[arg-type]


# --- planning (pure) -------------------------------------------------------------------


def test_plan_without_an_age_removes_orphan_models_and_abandoned_temps_only() -> None:
    entries = [
        _entry("model", "models/run-1", 100 * DAY, run_id=1),  # run still there
        _entry("model", "models/run-2", 0, run_id=2),  # run gone
        _entry("baseline", "baselines/old", 100 * DAY),
        _entry("temp", "models/.run-3.1.abcdef01.tmp", 2 * 3600),  # abandoned
        _entry("temp", "baselines/k.1.abcdef01.f16.tmp", 60),  # young
        _entry("temp", "baselines/k.2.abcdef01.f16.tmp", 5 * 3600, writer_alive=True),
    ]
    removed = {str(r.entry.paths[0]): r.reason for r in gc.plan(entries, {1}, NOW)}
    assert set(removed) == {"models/run-2", "models/.run-3.1.abcdef01.tmp"}
    assert "not in the database" in removed["models/run-2"]
    assert "abandoned" in removed["models/.run-3.1.abcdef01.tmp"]


def test_plan_with_an_age_removes_what_was_not_used_for_that_long() -> None:
    entries = [
        _entry("model", "models/run-1", 10 * DAY, run_id=1),
        _entry("model", "models/run-4", 1 * DAY, run_id=4),
        _entry("baseline", "baselines/old", 8 * DAY),
        _entry("baseline", "baselines/new", 6 * DAY),
    ]
    removed = [str(r.entry.paths[0]) for r in gc.plan(entries, {1, 4}, NOW, older_than_days=7)]
    assert removed == ["models/run-1", "baselines/old"]


# --- scanning and removing a real folder --------------------------------------------------


def _touch(p: Path, age_s: float, size: int = 100) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    if not p.exists():
        p.write_bytes(b"x" * size)
    t = time.time() - age_s
    os.utime(p, (t, t))
    return p


def _fake_data(root: Path) -> dict[str, Path]:
    b, m = root / "baselines", root / "models"
    paths = {
        "old_cache": _touch(b / "aaa.f16", 30 * DAY),
        "old_cache_json": _touch(b / "aaa.json", 30 * DAY),
        "new_cache": _touch(b / "bbb.f16", 60),
        "stale_temp": _touch(b / f"ccc.{DEAD_PID}.abcdef01.f16.tmp", 2 * 3600),
        "live_temp": _touch(b / f"ddd.{os.getpid()}.abcdef01.f16.tmp", 2 * 3600),
        "young_temp": _touch(b / f"eee.{DEAD_PID}.abcdef01.f16.tmp", 60),
    }
    for run_id, age in ((1, 30 * DAY), (2, 60), (99, 60)):
        folder = m / f"run-{run_id}"
        _touch(folder / QUANT_CONFIG, age)
        _touch(folder, age)
        paths[f"run{run_id}"] = folder
    paths["zip99"] = _touch(m / "run-99.zip", 60)
    temp_dir = m / f".run-5.{DEAD_PID}.abcdef01.tmp"
    _touch(temp_dir / "model.safetensors", 2 * 3600)
    paths["temp_dir"] = _touch(temp_dir, 2 * 3600)
    return paths


def _add_runs(sf: object, n: int) -> None:
    from db.models import Job

    with sf() as s:  # type: ignore[operator]
        for _ in range(n):
            s.add(Job(created_at=time.time(), model="m", recipe_label="r", spec_json="{}"))
        s.commit()


def _gc(db_url: str, *argv: str) -> int:
    """``python -m workers gc ...`` through the CLI's own entry point."""
    from workers.cli import main

    return main(["gc", "--db", db_url, *argv])


def test_gc_command_dry_run_then_remove(
    sf: object, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _add_runs(sf, 2)  # runs 1 and 2 exist; run 99 does not
    paths = _fake_data(tmp_path / "data")  # the fixture's COMPRESSLAB_DATA
    assert _gc(db_url, "--older-than", "7", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would remove" in out and "dry run" in out
    assert all(p.exists() for p in paths.values())

    assert _gc(db_url, "--older-than", "7") == 0
    gone = {k for k, p in paths.items() if not p.exists()}
    assert gone == {
        "old_cache", "old_cache_json", "stale_temp", "run1", "run99", "zip99", "temp_dir",
    }  # fmt: skip
    assert "freed" in capsys.readouterr().out


def test_gc_without_an_age_keeps_used_caches_and_runs_models(sf: object, db_url: str) -> None:
    _add_runs(sf, 2)
    paths = _fake_data(Path(os.environ["COMPRESSLAB_DATA"]))
    assert _gc(db_url) == 0
    gone = {k for k, p in paths.items() if not p.exists()}
    assert gone == {"stale_temp", "run99", "zip99", "temp_dir"}


def test_gc_refuses_a_negative_age(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _gc(db_url, "--older-than", "-1") == 2
    assert "error:" in capsys.readouterr().err


def test_worker_start_removes_only_abandoned_temps(tmp_path: Path) -> None:
    paths = _fake_data(tmp_path)
    gc.remove_stale_temps([tmp_path / "baselines", tmp_path / "models"])
    gone = {k for k, p in paths.items() if not p.exists()}
    assert gone == {"stale_temp", "temp_dir"}


# --- the quota -------------------------------------------------------------------------


def test_a_new_baseline_cache_over_the_quota_is_refused_with_the_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _touch(tmp_path / "models" / "run-1" / "model.safetensors", 0, size=5000)
    store = LogprobStore(tmp_path / "baselines" / "k.f16", n_windows=4, ctx=33, vocab=256)
    folders = [tmp_path / "baselines", tmp_path / "models"]
    assert data_bytes(folders) == 5000
    monkeypatch.setenv(MAX_DATA_ENV, "100000")
    check_cache_quota(store, folders)  # 4 x 32 x 256 x 2 = 65536 bytes: fits
    monkeypatch.setenv(MAX_DATA_ENV, "70000")
    with pytest.raises(ConfigError, match=MAX_DATA_ENV) as e:
        check_cache_quota(store, folders)
    assert "64.0 KiB" in str(e.value) or "65536" in str(e.value) or "KiB" in str(e.value)
    assert quota_problem(folders, 0, "nothing") is None
    monkeypatch.setenv(MAX_DATA_ENV, "lots")
    with pytest.raises(ConfigError, match="positive whole number"):
        quota_problem(folders, 0, "nothing")


def _spec(save: bool) -> JobSpec:
    return tiny_spec(save_model=save)


def test_a_kept_model_over_the_quota_is_not_saved_and_the_notes_say_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, models = tmp_path / "baselines", tmp_path / "models"
    first = run_job(_spec(False), cache_dir=cache, resolve_text=get_text_set)
    assert "notes" not in first.metrics
    monkeypatch.setenv(MAX_DATA_ENV, str(data_bytes([cache]) + 10))  # the cache is on disk
    res = run_job(
        _spec(True), cache_dir=cache, resolve_text=get_text_set, save_dir=models / "run-1"
    )
    assert res.metrics["saved_model"] is None and not (models / "run-1").exists()
    (note,) = res.metrics["notes"]
    assert "not kept" in note and MAX_DATA_ENV in note
    monkeypatch.delenv(MAX_DATA_ENV)
    res = run_job(
        _spec(True), cache_dir=cache, resolve_text=get_text_set, save_dir=models / "run-1"
    )
    assert res.metrics["saved_model"] == str(models / "run-1") and "notes" not in res.metrics


# --- atomic save and the zip -------------------------------------------------------------


def _compressed_model() -> tuple[torch.nn.Module, object]:
    model = tiny_llama(hidden=64)
    recipe = recipe_from_steps([{"method": "rtn", "bits": 8}], name="rtn8")
    apply_recipe(model, recipe, on_progress=lambda f, m: None, should_cancel=lambda: False)
    return model, recipe


def test_a_killed_save_leaves_no_folder_that_loads_as_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.save as save

    model, recipe = _compressed_model()
    folder = tmp_path / "models" / "run-7"

    def killed(tmp: Path, dest: Path) -> None:
        raise KeyboardInterrupt  # killed after writing, before publishing

    monkeypatch.setattr(save, "_publish", killed)
    monkeypatch.setattr(save.shutil, "rmtree", lambda *a, **k: None)  # no cleanup ran
    with pytest.raises(KeyboardInterrupt):
        save_compressed(model, folder, recipe, byte_tokenizer())  # type: ignore[arg-type]
    monkeypatch.undo()
    assert not folder.exists()
    (temp,) = (tmp_path / "models").iterdir()
    assert temp.name.startswith(".run-7.") and temp.name.endswith(".tmp")
    with pytest.raises(SaveError):
        load_compressed(folder)
    gc.remove_stale_temps([tmp_path / "models"], now=time.time() + 2 * 3600)
    assert temp.exists()  # its writer (this process) still runs
    temp.rename(temp.with_name(f".run-7.{DEAD_PID}.abcdef01.tmp"))  # as if it was killed
    gc.remove_stale_temps([tmp_path / "models"], now=time.time() + 2 * 3600)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_save_over_an_earlier_one_replaces_it(tmp_path: Path) -> None:
    model, recipe = _compressed_model()
    folder = tmp_path / "run-1"
    save_compressed(model, folder, recipe)  # type: ignore[arg-type]
    (folder / "stale.bin").write_bytes(b"old")
    save_compressed(model, folder, recipe)  # type: ignore[arg-type]
    assert (folder / QUANT_CONFIG).is_file() and (folder / "stale.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run-1"]  # no temp left
    load_compressed(folder)


def test_the_zip_is_written_to_disk_and_reused(tmp_path: Path) -> None:
    model, recipe = _compressed_model()
    folder = save_compressed(model, tmp_path / "run-3", recipe, byte_tokenizer())  # type: ignore[arg-type]
    path = archive(folder)
    assert isinstance(path, Path) and path == tmp_path / "run-3.zip"
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "download")
    assert QUANT_CONFIG in names and "model.safetensors" in names
    load_compressed(tmp_path / "download")
    mtime = path.stat().st_mtime_ns
    assert archive(folder) == path and path.stat().st_mtime_ns == mtime  # reused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download", "run-3", "run-3.zip"]


def test_new_run_does_not_keep_the_model_unless_asked(sf: object, db_url: str) -> None:
    from streamlit.testing.v1 import AppTest

    from db import queue

    root = Path(__file__).resolve().parent.parent
    at = AppTest.from_file(str(root / "app.py"), default_timeout=90)
    at.run()
    at.switch_page("app_pages/new_run.py").run()
    assert at.checkbox(key="save_model").value is False
    at.radio(key="model_kind").set_value("tiny-random").run()
    next(b for b in at.button if b.label == "Queue run").click().run()
    (job,) = queue.list_jobs(sf)  # type: ignore[arg-type]
    assert job.spec["save_model"] is False
