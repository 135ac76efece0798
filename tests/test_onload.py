"""Sequential onloading: a model whose blocks stay in safetensors files, compressed and
evaluated one block on the device at a time, gives what the in-memory run gives."""

from __future__ import annotations

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
