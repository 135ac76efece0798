"""Sparse storage: round trips, real byte counts, layout choice, the forward from storage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.metrics import weight_memory
from core.prune.masks import nm_mask, row_mask
from core.storage import (
    BitmaskSparseLinear,
    CSRSparseLinear,
    NMSparseLinear,
    PrunedLinear,
    module_storage_bytes,
    pack_pruned_linears,
)
from core.storage.pruned import pack_linear
from core.storage.unstructured import choose_unstructured_layout


def _linear(out_f: int, in_f: int, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_f, out_f).to(dtype)


@pytest.mark.parametrize("pattern, bits", [((2, 4), 2), ((4, 8), 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nm_storage_round_trip_and_bytes(pattern, bits, dtype) -> None:
    n, m = pattern
    lin = _linear(16, 64, dtype)
    w = lin.weight.detach() * nm_mask(lin.weight.detach().float().abs(), n, m)
    mod = NMSparseLinear.build(w, lin.bias, n=n, m=m)
    assert torch.equal(mod.dense_weight(), w) and mod.values.dtype == dtype
    kept = 16 * 64 * n // m
    esize = torch.finfo(dtype).bits // 8
    # Kept values in the layer's dtype + `bits` bits of position per kept value + bias.
    assert module_storage_bytes(mod) == kept * esize + kept * bits // 8 + 16 * esize
    x = torch.randn(3, 5, 64).to(dtype)
    ref = nn.functional.linear(x.float(), w.float(), lin.bias.float())
    assert torch.allclose(mod(x).float(), ref, atol=1e-2 if dtype == torch.float16 else 1e-5)


def test_nm_storage_pads_a_short_group_and_refuses_dense() -> None:
    lin = _linear(4, 10)
    w = lin.weight.detach() * nm_mask(lin.weight.detach().abs(), 2, 4)
    mod = NMSparseLinear.build(w, None, n=2, m=4)
    assert torch.equal(mod.dense_weight(), w)
    with pytest.raises(ValueError, match="more than 2 non-zeros"):
        NMSparseLinear.build(lin.weight.detach(), None, n=2, m=4)


def test_unstructured_layouts_round_trip_and_choice() -> None:
    lin = _linear(32, 64)
    w = lin.weight.detach() * row_mask(lin.weight.detach().abs(), 0.5)
    for cls in (BitmaskSparseLinear, CSRSparseLinear):
        mod = cls.build(w, lin.bias)
        assert torch.equal(mod.dense_weight(), w)
        x = torch.randn(2, 64)
        assert torch.allclose(mod(x), nn.functional.linear(x, w, lin.bias), atol=1e-5)
    # 50% fp32: bitmask (1 bit + half the values) beats CSR (int16 column + value) and dense.
    assert choose_unstructured_layout(32, 64, 1024, 4) == "bitmask"
    # 98% sparse: CSR's per-value index is cheaper than a bit for every weight.
    assert choose_unstructured_layout(32, 64, 40, 4) == "csr"
    # 5% sparse fp16: neither is smaller than dense (a bitmask pays off above 1/16).
    assert choose_unstructured_layout(32, 64, 1946, 2) == "dense"
    keep = torch.ones(32, 64, dtype=torch.bool)
    keep[:, :1] = False  # 1/64 sparse fp32: a bitmask (1/32 of dense) costs more than it saves
    barely = PrunedLinear.build(lin.weight, lin.bias, keep=keep, pattern="unstructured")
    stays = pack_linear(barely)
    assert type(stays) is nn.Linear and stays.weight is barely.weight


def test_pack_pruned_linears_replaces_only_pruned_linears() -> None:
    model = nn.Sequential(_linear(16, 32), _linear(16, 16), _linear(8, 16))
    w0 = model[0].weight.detach()
    model[0] = PrunedLinear.build(w0, model[0].bias, keep=nm_mask(w0.abs(), 2, 4), pattern="2:4")
    w1 = model[1].weight.detach()
    keep1 = row_mask(w1.abs(), 0.5)
    model[1] = PrunedLinear.build(w1, model[1].bias, keep=keep1, pattern="unstructured")
    x = torch.randn(4, 32)
    ref = model(x)
    dense_bytes = weight_memory(model).weight_bytes
    assert isinstance(model[0], PrunedLinear) and model[0].pattern == "2:4"
    assert pack_pruned_linears(model) == ["0", "1"]
    assert isinstance(model[0], NMSparseLinear) and isinstance(model[1], BitmaskSparseLinear)
    assert type(model[2]) is nn.Linear  # not pruned: untouched
    assert torch.allclose(model(x), ref, atol=1e-5)  # runs from the stored form
    assert weight_memory(model).weight_bytes < dense_bytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nm_forward_on_cuda_matches_dense() -> None:
    lin = _linear(128, 256, torch.float16).cuda()
    w = lin.weight.detach() * nm_mask(lin.weight.detach().float().abs(), 2, 4)
    mod = NMSparseLinear.build(w, lin.bias, n=2, m=4).cuda()
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    ref = nn.functional.linear(x.float(), w.float(), lin.bias.float())
    assert torch.allclose(mod(x).float(), ref, atol=5e-2, rtol=1e-2)


@pytest.mark.parametrize(
    "steps",
    [
        [{"method": "magnitude", "pattern": "2:4"}],
        [{"method": "magnitude", "pattern": "4:8"}],
        [{"method": "magnitude", "sparsity": 0.5}],  # bitmask
        [{"method": "magnitude", "sparsity": 0.98}],  # CSR
    ],
)
def test_sparse_models_save_and_load_in_their_storage(steps, tmp_path) -> None:
    from core.models import tiny_llama
    from core.recipe import recipe_from_steps
    from core.save import load_compressed, save_compressed
    from core.walk import apply_recipe, find_linears

    model = tiny_llama()
    recipe = recipe_from_steps(steps)
    apply_recipe(model, recipe, on_progress=lambda f, m: None, should_cancel=lambda: False)
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    save_compressed(model, tmp_path, recipe)
    loaded = load_compressed(tmp_path).model
    kinds = {type(m) for n, m in find_linears(loaded).items() if n != "lm_head"}
    assert kinds == {type(m) for n, m in find_linears(model).items() if n != "lm_head"}
    assert kinds <= {NMSparseLinear, BitmaskSparseLinear, CSRSparseLinear}
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref)
    assert weight_memory(loaded) == weight_memory(model)
