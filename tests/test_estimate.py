"""The pre-run memory estimate: weights, and calibration memory besides the model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from core.calib import CalibSettings
from core.errors import ModelLoadError
from core.estimate import estimate_memory, tensor_bytes
from core.models import DEMO_DIR, model_skeleton, tiny_llama
from core.quant.hessian import init_hessian
from core.recipe import parse_recipe, recipe_from_steps

CALIB = CalibSettings(n_samples=16, seq_len=128)
needs_demo = pytest.mark.skipif(not (DEMO_DIR / "config.json").is_file(), reason="no demo model")


def test_tensor_bytes_walks_dataclasses_and_containers() -> None:
    h = init_hessian(8)
    assert tensor_bytes(h) == 8 * 8 * 4
    assert tensor_bytes([h, {"a": torch.zeros(3, dtype=torch.float64)}, None, 7]) == 256 + 24


@needs_demo
def test_demo_skeleton_has_the_real_shapes_and_no_storage() -> None:
    meta = model_skeleton("demo")
    assert all(p.is_meta for p in meta.parameters())
    real = sum(p.numel() * p.element_size() for p in tiny_or_demo().parameters())
    assert estimate_memory(meta, parse_recipe("baseline"), CALIB).weight_bytes == real


def tiny_or_demo() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(DEMO_DIR)


def test_terms_follow_the_walker() -> None:
    model = tiny_llama(hidden=64, layers=2)  # 7 linears per block
    ins = [m.in_features for m in model.model.layers[0].modules() if isinstance(m, torch.nn.Linear)]
    assert len(ins) == 7
    rows = CALIB.n_samples * CALIB.seq_len
    none = estimate_memory(model, parse_recipe("baseline"), CALIB)
    assert none.calibration_bytes == 0
    rtn = estimate_memory(model, parse_recipe("rtn-int8"), CALIB)
    assert rtn.block_io_bytes == 2 * rows * 64 * 4  # inputs and outputs of one block
    assert rtn.layer_stats_bytes == 0  # RTN keeps no statistics
    assert rtn.error_rows_bytes == sum(min(256, rows) * i * 4 for i in ins)
    # GPTQ and SparseGPT with true_sequential calibrate one input group at a time: the
    # largest Hessian; with it off (SparseGPT's default), the whole block's
    gptq = estimate_memory(model, recipe_from_steps([{"method": "gptq", "bits": 4}]), CALIB)
    assert gptq.layer_stats_bytes == max(ins) ** 2 * 4
    sgpt = {"method": "sparsegpt", "sparsity": 0.5}
    seq = recipe_from_steps([{**sgpt, "true_sequential": True}])
    assert estimate_memory(model, seq, CALIB).layer_stats_bytes == max(ins) ** 2 * 4
    at_once = recipe_from_steps([sgpt])
    assert estimate_memory(model, at_once, CALIB).layer_stats_bytes == sum(i * i * 4 for i in ins)
    wanda = estimate_memory(model, recipe_from_steps([{"method": "wanda", "sparsity": 0.5}]), CALIB)
    assert wanda.layer_stats_bytes == sum(i * 8 for i in ins)  # float64 sums of squares
    # more calibration data, more memory; targets narrow the statistics
    more = estimate_memory(
        model, parse_recipe("rtn-int8"), CalibSettings(n_samples=32, seq_len=128)
    )
    assert more.block_io_bytes == 2 * rtn.block_io_bytes
    attn = recipe_from_steps([{**sgpt, "true_sequential": False, "targets": ["re:self_attn"]}])
    assert estimate_memory(model, attn, CALIB).layer_stats_bytes == 4 * 64 * 64 * 4


def test_a_gpt2_folder_is_estimated_with_its_conv1d_layers(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0)
    ).save_pretrained(tmp_path)
    est = estimate_memory(model_skeleton(str(tmp_path)), parse_recipe("rtn-int8"), CALIB)
    # c_attn, attn.c_proj read 32 inputs, mlp.c_fc 32 and mlp.c_proj 128
    assert est.error_rows_bytes == 256 * (32 + 32 + 32 + 128) * 4


def test_unknown_models_say_why(monkeypatch) -> None:
    with pytest.raises(ModelLoadError, match="model not found: folder './no/such/folder'"):
        model_skeleton("./no/such/folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"hub unreachable \(offline\?\)"):
        model_skeleton("some-org/not-cached")
    assert time.monotonic() - t0 < 10


def test_a_step_that_targets_a_later_block_is_counted_there() -> None:
    model = tiny_llama(hidden=64, layers=2)
    last = recipe_from_steps(
        [{"method": "gptq", "bits": 4, "targets": ["re:layers\\.1\\.mlp\\.down_proj"]}]
    )
    est = estimate_memory(model, last, CALIB)
    width = model.model.layers[1].mlp.down_proj.in_features  # its Hessian: width x width
    assert est.layer_stats_bytes == width * width * 4
    none = recipe_from_steps([{"method": "gptq", "bits": 4, "targets": ["no-such-layer"]}])
    assert estimate_memory(model, none, CALIB).layer_stats_bytes == 0


def test_a_data_free_recipe_holds_no_calibration_memory() -> None:
    """RTN needs no calibration: the estimate says 0 for calibration, and what measuring
    the layer errors on the samples holds apart; GPTQ's is calibration memory."""
    meta = model_skeleton("tiny-random")
    rtn = estimate_memory(meta, parse_recipe("rtn-int8"), CalibSettings())
    assert not rtn.calibrated and rtn.calibration_bytes == 0
    assert rtn.layer_stats_bytes == 0 and rtn.measurement_bytes > 0
    gptq = estimate_memory(meta, parse_recipe('[{"method": "gptq"}]'), CalibSettings())
    assert gptq.calibrated and gptq.calibration_bytes > 0 and gptq.measurement_bytes == 0
