"""The Run page's export section, headless (AppTest): a kept model exports to a zip that
transformers loads; a run without a kept model says how to re-run; a teammate's run is
not exported by someone else; an export over the data quota is refused before work."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import pytest
import torch

from core.models import byte_tokenizer, tiny_llama
from core.recipe import recipe_from_steps
from core.save import save_compressed
from core.walk import apply_recipe

pytest.importorskip("compressed_tensors")

APP = str(Path(__file__).resolve().parent.parent / "app.py")
RUN_PAGE = "app_pages/run.py"
RTN4 = {"method": "rtn", "bits": 4, "granularity": "group", "group_size": 32}


def _kept(folder: Path) -> Path:
    model = tiny_llama()
    apply_recipe(
        model,
        recipe_from_steps([RTN4]),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=[],
    )
    return save_compressed(model, folder, tokenizer=byte_tokenizer())


def _finished(db_url: str, result: dict, owner: str = "local") -> int:
    from db.models import Job
    from db.session import session_factory

    with session_factory(db_url).begin() as s:
        job = Job(
            created_at=time.time(),
            status="succeeded",
            model="tiny-random",
            recipe_label="rtn4",
            spec_json=json.dumps({"model": "tiny-random", "recipe": [RTN4]}),
            result_json=json.dumps(result),
            fingerprint_json=json.dumps({"seed": 0}),
            owner=owner,
        )
        s.add(job)
        s.flush()
        return job.id


def _run_page(job_id: int):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.query_params["run"] = str(job_id)
    at.switch_page(RUN_PAGE).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _texts(at) -> str:
    parts = [at.markdown, at.caption, at.info, at.error, at.subheader]
    return "\n".join(str(e.value) for group in parts for e in group)


def _prepare(at):
    next(b for b in at.button if b.label == "Prepare the export").click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


@pytest.mark.parametrize("fmt", ["compressed-tensors", "dense"])
def test_a_kept_model_exports_to_a_zip_transformers_loads(db_url, tmp_path: Path, fmt) -> None:
    from transformers import AutoModelForCausalLM

    saved = _kept(tmp_path / "data" / "models" / "run-1")
    job_id = _finished(db_url, {"perplexity": 9.5, "saved_model": str(saved)})
    at = _run_page(job_id)
    assert "Export for vLLM / transformers" in _texts(at)
    at.radio(key=f"export_fmt_{job_id}").set_value(fmt).run()
    _prepare(at)
    got_fmt, zero_points, data = at.session_state[f"export_zip_{job_id}"]
    assert (got_fmt, zero_points) == (fmt, "packed")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        z.extractall(tmp_path / "unzipped")
    cfg = json.loads((tmp_path / "unzipped" / "config.json").read_text())
    assert ("quantization_config" in cfg) == (fmt == "compressed-tensors")
    assert '"perplexity": 9.5' in (tmp_path / "unzipped" / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "unzipped", dtype=torch.float32)
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()
    assert not [p for p in saved.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_run_without_a_kept_model_says_how_to_rerun(db_url) -> None:
    at = _run_page(_finished(db_url, {"perplexity": 9.5}))
    text = _texts(at)
    assert "did not keep its compressed model" in text and "--save" in text
    assert not [b for b in at.button if b.label == "Prepare the export"]


def test_only_the_owner_exports(db_url, tmp_path: Path) -> None:
    saved = _kept(tmp_path / "data" / "models" / "run-1")
    at = _run_page(_finished(db_url, {"saved_model": str(saved)}, owner="alice"))
    assert "Only alice, who queued this run, or an admin may export it." in _texts(at)
    assert not [b for b in at.button if b.label == "Prepare the export"]


def test_an_export_over_the_quota_is_refused_before_work(db_url, tmp_path, monkeypatch) -> None:
    saved = _kept(tmp_path / "data" / "models" / "run-1")
    job_id = _finished(db_url, {"saved_model": str(saved)})
    monkeypatch.setenv("COMPRESSLAB_MAX_DATA_BYTES", "1000")
    at = _prepare(_run_page(job_id))
    assert "this export would need" in _texts(at)
    assert f"export_zip_{job_id}" not in at.session_state
    assert sorted(p.name for p in saved.parent.iterdir()) == ["run-1"]
