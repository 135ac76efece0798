"""The Run page's "Export for vLLM / transformers" in a real browser: a finished run whose
model was kept is exported in both formats, each zip downloaded, unzipped and loaded
with ``transformers.AutoModelForCausalLM.from_pretrained``; a run that kept no model
says how to re-run it."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

RTN4 = {"method": "rtn", "bits": 4, "granularity": "group", "group_size": 32}
SLOW_PAGE_MS = 300_000  # a shared CI machine under load
IDS = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))


def _kept_model(folder: Path) -> tuple[torch.nn.Module, Path]:
    """A tiny Llama compressed with RTN 4-bit, kept as a run keeps it."""
    from core.models import byte_tokenizer, tiny_llama
    from core.recipe import recipe_from_steps
    from core.save import save_compressed
    from core.walk import apply_recipe

    model = tiny_llama()
    apply_recipe(
        model,
        recipe_from_steps([RTN4]),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=[],
    )
    return model, save_compressed(model, folder, tokenizer=byte_tokenizer())


def _finished_run(app_db: Any, result: dict[str, Any]) -> int:
    """A succeeded run in the app's database (no worker involved)."""
    from db.models import Job

    with app_db.begin() as s:
        job = Job(
            created_at=time.time(),
            status="succeeded",
            model="tiny-random",
            recipe_label="rtn4-export",
            spec_json=json.dumps({"model": "tiny-random", "recipe": [RTN4]}),
            result_json=json.dumps(result),
            fingerprint_json=json.dumps({"seed": 0, "recipe": [RTN4]}),
        )
        s.add(job)
        s.flush()
        return job.id


def _download(flow: ModuleType, page: Any, fmt: str, dest: Path) -> Path:
    """Pick ``fmt``, prepare the export, download the zip and unzip it into ``dest``."""
    from playwright.sync_api import expect

    main = flow.main_area(page)
    flow.pick_radio(page, "Export format", fmt)
    main.get_by_role("button", name="Prepare the export").click()
    button = main.get_by_role("button", name=f"Download the {fmt} export")
    expect(button).to_be_visible(timeout=SLOW_PAGE_MS)
    with page.expect_download() as info:
        button.click()
    zipped = dest.with_suffix(".zip")
    info.value.save_as(zipped)
    assert info.value.suggested_filename.endswith(f"-{fmt}.zip")
    with zipfile.ZipFile(zipped) as z:
        z.extractall(dest)
    return dest


@torch.no_grad()
def _logits(model: torch.nn.Module) -> torch.Tensor:
    return model(IDS).logits.float()


def test_export_download_on_the_run_page(
    flow: ModuleType, page: Any, app: Any, app_db: Any, shots: Any, tmp_path: Path
) -> None:
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    model, saved = _kept_model(app.data_dir / "models" / "run-export")
    kept = _finished_run(app_db, {"perplexity": 9.5, "saved_model": str(saved)})
    not_kept = _finished_run(app_db, {"perplexity": 9.5})

    page.goto(f"{app.url}/run?run={kept}")
    flow.wait_idle(page, SLOW_PAGE_MS)  # the first render imports torch and transformers
    flow.expect_title(page, "Run")
    main = flow.main_area(page)
    main.get_by_role("heading", name="Export for vLLM / transformers").scroll_into_view_if_needed()
    shots("export-section")

    folder = _download(flow, page, "compressed-tensors", tmp_path / "ct")
    shots("compressed-tensors-ready")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "compressed-tensors"
    assert '"perplexity": 9.5' in (folder / "README.md").read_text()
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(_logits(hf), _logits(model), rtol=1e-5, atol=1e-5)

    folder = _download(flow, page, "dense", tmp_path / "dense")
    shots("dense-ready")
    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    # float16 weights: the same model up to float16 rounding of every tensor
    torch.testing.assert_close(_logits(dense), _logits(model), rtol=0.02, atol=0.02)
    leftovers = [p.name for p in saved.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, leftovers  # the export's temporary folder is gone

    page.goto(f"{app.url}/run?run={not_kept}")
    flow.wait_idle(page, SLOW_PAGE_MS)
    flow.expect_title(page, "Run")
    expect_msg = main.get_by_text("did not keep its compressed model")
    from playwright.sync_api import expect

    expect(expect_msg).to_be_visible()
    assert main.get_by_role("button", name="Prepare the export").count() == 0
    shots("not-kept")
