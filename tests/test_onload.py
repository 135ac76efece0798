"""Sequential onloading: a model whose blocks stay in safetensors files, compressed and
evaluated one block on the device at a time, gives what the in-memory run gives."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from core.models import tiny_llama
from core.onload import load_onloaded, params_on_meta, store_of, streaming
from core.recipe import recipe_from_steps
from core.walk import apply_recipe

CALIB = [
    torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(4)
]
EVAL = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(99))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    tiny_llama(layers=3).save_pretrained(out, safe_serialization=True)
    return out


def _compress(model: torch.nn.Module, steps: list[dict]) -> None:
    apply_recipe(
        model,
        recipe_from_steps(steps),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=CALIB,
    )


@torch.no_grad()
def _nll(model: torch.nn.Module) -> float:
    with streaming(model):
        logits = model(EVAL, use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), EVAL[:, 1:].flatten()
    ).item()


def test_skeleton_holds_no_block_weights_until_a_block_is_loaded(folder: Path) -> None:
    model = load_onloaded(folder)
    store = store_of(model)
    assert store is not None
    assert all(p.is_meta for p in model.model.layers.parameters())
    assert not model.model.embed_tokens.weight.is_meta
    rotary = model.model.rotary_emb.inv_freq  # a buffer the files do not hold: computed
    assert not rotary.is_meta and torch.isfinite(rotary).all()
    with params_on_meta():
        lin = torch.nn.Linear(4, 4)
    assert lin.weight.is_meta


@pytest.mark.parametrize(
    "steps",
    [
        [{"method": "gptq", "bits": 4, "group_size": 32}],
        [{"method": "rtn", "bits": 4, "granularity": "group", "group_size": 32}],
    ],
)
def test_onloaded_compression_matches_the_in_memory_run(folder: Path, steps: list[dict]) -> None:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    lazy = load_onloaded(folder)
    assert _nll(lazy) == pytest.approx(_nll(ref), rel=1e-6)  # the float model, streamed
    _compress(ref, steps)
    _compress(lazy, steps)
    store = store_of(lazy)
    assert store is not None
    assert store.peak_loaded == 1  # one block on the device at a time, never more
    assert not store.loaded and all(p.is_meta for p in lazy.model.layers.parameters())
    assert len(store.committed) == 3
    assert _nll(lazy) == pytest.approx(_nll(ref), rel=1e-5)
    assert _nll(lazy) != pytest.approx(_nll(AutoModelForCausalLM.from_pretrained(folder)), rel=1e-6)
    store.close()


def test_a_job_under_a_device_budget_runs_onloaded_and_matches_the_in_memory_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.data import get_text_set
    from core.models import byte_tokenizer, model_skeleton
    from core.modes import BUDGET_ENV, ONLOADED, mode_peaks
    from runs import catalogue as cat
    from runs.pipeline import run_job
    from tests.tiny import tiny_spec

    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path / "data"))
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    folder = tmp_path / "tiny4"  # 4 blocks: the onloaded peak is 2 blocks below in memory
    tiny_llama(layers=4).save_pretrained(folder, safe_serialization=True)
    byte_tokenizer().save_pretrained(folder)
    spec = dataclasses.replace(tiny_spec("gptq-4bit-g128"), model=str(folder))
    peaks = mode_peaks(model_skeleton(str(folder)), spec.parsed_recipe(), spec.calib_settings)
    assert peaks.onloaded < peaks.in_memory
    free = run_job(spec, cache_dir=tmp_path / "c1", resolve_text=get_text_set).metrics
    monkeypatch.setenv(BUDGET_ENV, str(peaks.onloaded))  # the worker's --max-device-memory
    tight = run_job(spec, cache_dir=tmp_path / "c2", resolve_text=get_text_set).metrics
    assert free[cat.MEMORY_MODE.key] == "in memory"
    assert tight[cat.MEMORY_MODE.key] == ONLOADED
    assert tight[cat.ESTIMATED_PEAK_BYTES.key] == peaks.onloaded
    assert tight[cat.PEAK_HOST_RSS_BYTES.key] > 0
    key = cat.PERPLEXITY.key
    assert tight[key] == pytest.approx(free[key], rel=1e-4)
    assert tight[cat.WEIGHT_BYTES.key] == free[cat.WEIGHT_BYTES.key]


def _onloaded_peak(spec: object) -> int:
    from core.models import model_skeleton
    from core.modes import mode_peaks

    recipe, calib = spec.parsed_recipe(), spec.calib_settings  # type: ignore[attr-defined]
    return mode_peaks(model_skeleton(spec.model), recipe, calib).onloaded  # type: ignore[attr-defined]


def _spill_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("cl-blocks-*"))


def _tiny_job_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A 4-layer tiny Llama saved for a job, the data folder under ``tmp_path``, no
    worker budget from the environment, and temporary folders (where spill folders go)
    under a folder of their own: (model folder, that temporary root)."""
    import tempfile

    from core.models import byte_tokenizer
    from core.modes import BUDGET_ENV

    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path / "data"))
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    spill_root = tmp_path / "tmp"
    spill_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_root))
    folder = tmp_path / "tiny4"
    tiny_llama(layers=4).save_pretrained(folder, safe_serialization=True)
    byte_tokenizer().save_pretrained(folder)
    return folder, spill_root


def test_an_onloaded_job_saves_its_model_like_the_in_memory_job_and_removes_its_spill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from core.data import get_text_set
    from core.save import load_compressed
    from runs.pipeline import run_job
    from tests.tiny import tiny_spec

    folder, spill_root = _tiny_job_folder(tmp_path, monkeypatch)
    spec = dataclasses.replace(tiny_spec("gptq-4bit-g128"), model=str(folder), save_model=True)
    free = run_job(
        spec, cache_dir=tmp_path / "c1", resolve_text=get_text_set, save_dir=tmp_path / "m1"
    )
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(
        tempfile, "mkdtemp", lambda **kw: made.append(Path(real_mkdtemp(**kw))) or made[-1]
    )
    tight_spec = dataclasses.replace(spec, max_device_memory=str(_onloaded_peak(spec)))
    tight = run_job(
        tight_spec, cache_dir=tmp_path / "c2", resolve_text=get_text_set, save_dir=tmp_path / "m2"
    )
    assert tight.result.extra.get("notes", []) == free.result.extra.get("notes", [])
    assert made and not any(p.exists() for p in made) and not _spill_folders(spill_root)
    a, b = load_compressed(tmp_path / "m1").model, load_compressed(tmp_path / "m2").model
    assert _nll(b) == pytest.approx(_nll(a), rel=1e-6)
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(ta, tb), na  # the same compressed model, bit for bit


@pytest.mark.parametrize("how", ["cancelled", "failed"])
def test_an_onloaded_job_that_stops_early_removes_its_spill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:

    from core.data import get_text_set
    from core.errors import Cancelled
    from runs import pipeline
    from tests.tiny import tiny_spec

    folder, spill_root = _tiny_job_folder(tmp_path, monkeypatch)
    spec = dataclasses.replace(tiny_spec("gptq-4bit-g128"), model=str(folder))
    spec = dataclasses.replace(spec, max_device_memory=str(_onloaded_peak(spec)))
    seen: list[int] = []

    def stop_after_two_blocks() -> bool:  # cancelled mid-compression, blocks spilled
        store = store_of(job_model[0]) if job_model else None
        seen.append(len(store.committed) if store else 0)
        return how == "cancelled" and seen[-1] >= 2

    job_model: list[torch.nn.Module] = []
    real_compress = pipeline.STAGE_FUNCTIONS["compress"]

    def compress(job: pipeline.Job, report: pipeline.Progress) -> None:
        job_model.append(job.loaded.model)  # type: ignore[union-attr]
        real_compress(job, report)
        if how == "failed":
            raise RuntimeError("disk full")

    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "compress", compress)
    with pytest.raises(Cancelled if how == "cancelled" else RuntimeError):
        pipeline.run_job(
            spec,
            cache_dir=tmp_path / "c",
            resolve_text=get_text_set,
            should_cancel=stop_after_two_blocks,
        )
    assert max(seen) >= 2 or how == "failed"
    assert job_model and store_of(job_model[0]) is not None
    assert not store_of(job_model[0]).spill.exists()
    assert not _spill_folders(spill_root)


# The host memory an onloaded GPTQ run may take beyond its budget of blocks and the
# embeddings: the calibration working set of one block (the windows' hidden states in and
# out, one layer Hessian and GPTQ's inverse factors for the widest input, 1536 here, and
# one window's activations), the C heap's slack and the first use of the code paths.
# Measured: 74 MiB here in a fresh process (110 MiB peak, 36 MiB of blocks), 120 MiB on the
# 12 x 768 Llama with 16 x 256 calibration tokens (bench/compress_time.py --memory).
MARGIN = 96 << 20


def test_onloaded_gptq_peaks_within_three_blocks_and_the_embeddings_plus_the_margin(
    tmp_path: Path,
) -> None:
    import psutil

    from core.metrics import PeakMemory
    from core.onload import block_bytes

    folder = tmp_path / "wide"  # 16 blocks of 12.6 MB: 201 MB of float weights
    tiny_llama(hidden=512, layers=16).save_pretrained(folder, safe_serialization=True)
    lazy = load_onloaded(folder)
    blocks = lazy.model.layers
    budget = 3 * block_bytes(blocks[0])
    weights = len(blocks) * block_bytes(blocks[0])
    embed = lazy.model.embed_tokens.weight
    bound = budget + 2 * embed.numel() * embed.element_size() + MARGIN  # input + head
    assert bound < weights  # in memory, the float weights alone would not fit
    steps = [{"method": "gptq", "bits": 4, "group_size": 128}]
    _compress(tiny_llama(hidden=128, layers=1), steps)  # code imported before measuring
    peak = PeakMemory(torch.device("cpu"), interval=0.005)
    start = psutil.Process().memory_info().rss
    with peak.track():
        _compress(lazy, steps)
    store = store_of(lazy)
    assert store is not None and store.peak_bytes <= budget
    assert peak.peak - start <= bound, (peak.peak - start) / 2**20
    store.close()
