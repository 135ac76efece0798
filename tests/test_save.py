"""Saving a compressed model (safetensors + quantization JSON) and loading it back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.metrics import weight_memory
from core.models import byte_tokenizer, linearize_conv1d, tiny_llama
from core.recipe import recipe_from_steps
from core.save import QUANT_CONFIG, WEIGHTS, SaveError, load_compressed, save_compressed
from core.storage import CompressedLinear
from core.walk import apply_recipe, find_linears

GEN = torch.Generator().manual_seed(0)
CALIB = [torch.randint(0, 256, (1, 48), generator=GEN) for _ in range(2)]
IDS = torch.randint(0, 256, (1, 40), generator=GEN)

RECIPES = {
    "rtn4-asym-g64": [
        {"method": "rtn", "bits": 4, "symmetric": False, "granularity": "group", "group_size": 64}
    ],
    "gptq3-g64": [{"method": "gptq", "bits": 3, "group_size": 64}],
    "awq4": [{"method": "awq", "bits": 4, "group_size": 64}],
    "nf4": [{"method": "bnb-4bit", "quant_type": "nf4"}],
    "bnb-int8": [{"method": "bnb-int8"}],
    "fp8-e5m2": [{"method": "fp8", "format": "e5m2"}],
    "mixed": [
        {"method": "rtn", "bits": 8, "targets": ["re:self_attn"]},
        {"method": "rtn", "bits": 2, "granularity": "group", "group_size": 64},
    ],
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_saved_model_loads_back_identical(name: str, tmp_path: Path) -> None:
    if name in ("nf4", "bnb-int8"):
        pytest.importorskip("bitsandbytes")
    model = tiny_llama(hidden=64)
    recipe = recipe_from_steps(RECIPES[name], name=name)
    apply_recipe(
        model,
        recipe,
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=CALIB,
    )
    with torch.no_grad():
        ref = model(IDS).logits
    save_compressed(model, tmp_path, recipe, byte_tokenizer())
    assert (tmp_path / WEIGHTS).is_file() and (tmp_path / "config.json").is_file()
    qcfg = json.loads((tmp_path / QUANT_CONFIG).read_text())
    assert qcfg["recipe_name"] == name and qcfg["recipe"] == recipe.to_list()
    compressed = {n for n, m in find_linears(model).items() if isinstance(m, CompressedLinear)}
    assert set(qcfg["modules"]) == compressed and compressed

    loaded = load_compressed(tmp_path)
    for n, m in find_linears(loaded.model).items():
        assert type(m) is type(find_linears(model)[n]), n
    with torch.no_grad():
        got = loaded.model(IDS).logits
    assert torch.equal(got, ref)
    assert weight_memory(loaded.model) == weight_memory(model)
    assert loaded.tokenizer is not None
    assert loaded.tokenizer.decode(loaded.tokenizer("def f():").input_ids) == "def f():"


def test_the_file_holds_the_packed_storage_not_floats(tmp_path: Path) -> None:
    from safetensors import safe_open

    model = tiny_llama(hidden=64)
    recipe = recipe_from_steps(RECIPES["rtn4-asym-g64"])
    apply_recipe(model, recipe, on_progress=lambda f, m: None, should_cancel=lambda: False)
    save_compressed(model, tmp_path, recipe)
    with safe_open(str(tmp_path / WEIGHTS), "pt") as f:
        keys = set(f.keys())
        q = f.get_tensor("model.layers.0.mlp.up_proj.qweight")
    assert "model.layers.0.mlp.up_proj.weight" not in keys
    assert q.dtype == torch.uint8 and q.numel() == 192 * 64 // 2  # two 4-bit values a byte
    # The file is about the size of the model's real storage (plus a small header).
    size = (tmp_path / WEIGHTS).stat().st_size
    assert weight_memory(model).weight_bytes <= size < weight_memory(model).weight_bytes + 20_000


def test_loading_refuses_foreign_classes_and_other_folders(tmp_path: Path) -> None:
    with pytest.raises(SaveError, match="not a saved compressed model"):
        load_compressed(tmp_path)
    model = tiny_llama(hidden=64)
    recipe = recipe_from_steps([{"method": "fp8"}])
    apply_recipe(model, recipe, on_progress=lambda f, m: None, should_cancel=lambda: False)
    save_compressed(model, tmp_path, recipe)
    path = tmp_path / QUANT_CONFIG
    qcfg = json.loads(path.read_text())
    first = next(iter(qcfg["modules"]))
    qcfg["modules"][first]["class"] = "os.system"
    path.write_text(json.dumps(qcfg))
    with pytest.raises(SaveError, match="not a core module"):
        load_compressed(tmp_path)


def _tiny_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def test_gpt2_conv1d_layers_become_linears_that_recipes_compress(tmp_path: Path) -> None:
    """GPT-2 (a UI preset) keeps its projections in transformers' Conv1D (x @ W + b)."""
    model = _tiny_gpt2()
    with torch.no_grad():
        before = model(IDS).logits
    assert linearize_conv1d(model) == 2 * 4  # c_attn, c_proj, mlp.c_fc, mlp.c_proj per block
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, before, atol=1e-5)
    recipe = recipe_from_steps(RECIPES["rtn4-asym-g64"], name="rtn4")
    reports = apply_recipe(
        model,
        recipe,
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=CALIB,
    )
    compressed = {n for n, m in find_linears(model).items() if isinstance(m, CompressedLinear)}
    assert len(compressed) == 8 and {r.name for r in reports} >= compressed
    with torch.no_grad():
        ref = model(IDS).logits
    save_compressed(model, tmp_path, recipe, byte_tokenizer())
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path).model(IDS).logits, ref)
