"""Sparse and quantized together (core/storage/sparse_affine.py): a pruned-then-quantized
linear stores a bitmask and the packed non-zero codes, so both savings stay; the forward
equals the dense dequantized reference; dense stays where sparse would not be smaller."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from core.metrics import weight_memory
from core.models import tiny_llama
from core.prune.masks import row_mask
from core.quant.pack import packed_numel
from core.quant.rtn import QuantSpec, quantize
from core.recipe import parse_recipe
from core.save import load_compressed, save_compressed
from core.storage import AffineLinear, SparseAffineLinear, module_storage_bytes, storage_info
from core.storage.sparse_affine import pack_sparse_affine
from core.walk import apply_recipe, find_linears

BATCHES = [
    torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(3)
]


def _pruned_affine(bits: int, sparsity: float, symmetric: bool = True) -> AffineLinear:
    torch.manual_seed(0)
    w = torch.randn(64, 96)
    if sparsity:
        w = w * row_mask(w.abs(), sparsity)
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity="group", group_size=32)
    return AffineLinear.build(quantize(w, spec), torch.randn(64))


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (8, True), (3, True)])
def test_half_pruned_then_quantized_stores_mask_and_nonzero_codes(bits, symmetric) -> None:
    dense = _pruned_affine(bits, 0.5, symmetric)
    sparse = pack_sparse_affine(dense)
    assert isinstance(sparse, SparseAffineLinear)
    n = dense.out_features * dense.in_features
    assert sparse.nnz <= n // 2  # the pruned half (and any weight that rounded to 0)
    codes = packed_numel(n, 1) + packed_numel(sparse.nnz, bits)
    scales = dense.scale.numel() * 2 + (0 if symmetric else dense.zero.numel())
    assert module_storage_bytes(sparse) == codes + scales + 64 * 4  # + float32 bias
    assert module_storage_bytes(sparse) < module_storage_bytes(dense)
    assert torch.equal(sparse.dequantized_weight(), dense.dequantized_weight())
    x = torch.randn(5, dense.in_features)
    ref = F.linear(x, dense.dequantized_weight(), dense.bias)
    assert torch.allclose(sparse(x), ref, atol=1e-5)
    info = storage_info(sparse)
    assert info.format == "sparse-affine-int" and info.bits == bits and "sparse" in info.scheme


def test_an_unpruned_layer_stays_dense() -> None:
    dense = _pruned_affine(4, 0.0)
    assert pack_sparse_affine(dense) is dense


def test_the_format_round_trips_through_its_saved_layout() -> None:
    sparse = pack_sparse_affine(_pruned_affine(4, 0.5))
    empty = SparseAffineLinear.from_storage_config(json.loads(json.dumps(sparse.storage_config())))
    empty.load_state_dict(sparse.state_dict())
    assert torch.equal(empty.dequantized_weight(), sparse.dequantized_weight())


def _chain(steps: list[dict]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tiny_llama()
    apply_recipe(
        model,
        parse_recipe(json.dumps(steps)),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=BATCHES,
    )
    return model


RTN4 = {"method": "rtn", "bits": 4, "granularity": "group", "group_size": 32}


def test_wanda_then_rtn_keeps_both_savings_and_its_forward(tmp_path) -> None:
    rtn_only = weight_memory(_chain([RTN4])).weight_bytes
    model = _chain([{"method": "wanda", "sparsity": 0.5}, RTN4])
    layers = {n: m for n, m in find_linears(model).items() if n != "lm_head"}  # not targeted
    assert layers and all(isinstance(m, SparseAffineLinear) for m in layers.values())
    chained = weight_memory(model).weight_bytes
    linear_codes = sum(m.in_features * m.out_features for m in layers.values()) // 2  # 4 bits
    # Half the codes gone, one mask bit per weight added: a quarter of the codes saved.
    assert rtn_only - chained >= 0.9 * linear_codes // 4
    ids = BATCHES[0]
    with torch.no_grad():
        got = model(ids).logits
        for name, mod in layers.items():  # the dense dequantized reference
            ref = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            ref.weight.data = mod.dequantized_weight()
            if mod.bias is not None:
                ref.bias.data = mod.bias.float()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, ref)
        assert torch.allclose(model(ids).logits, got, atol=1e-5)
    folder = save_compressed(_chain([{"method": "wanda", "sparsity": 0.5}, RTN4]), tmp_path / "m")
    loaded = load_compressed(folder)
    assert any(isinstance(m, SparseAffineLinear) for m in find_linears(loaded.model).values())


def test_back_to_the_dense_affine_layer_bit_for_bit() -> None:
    for symmetric in (True, False):
        dense = _pruned_affine(4, 0.5, symmetric)
        back = pack_sparse_affine(dense).to_affine()
        assert torch.equal(back.qweight, dense.qweight) and torch.equal(back.scale, dense.scale)
        assert (back.zero is None) == symmetric
        if not symmetric:
            assert torch.equal(back.zero, dense.zero)


def test_the_run_says_where_both_savings_stay_and_why_not() -> None:
    from runs.storage_notes import sparse_quant_notes

    wanda = {"method": "wanda", "sparsity": 0.5}
    steps = [wanda, RTN4]
    notes = sparse_quant_notes(_chain(steps), parse_recipe(json.dumps(steps)))
    assert len(notes) == 1 and "bitmask plus the packed non-zero codes" in notes[0]
    steps = [wanda, {"method": "w8a8", "act_mode": "dynamic"}]
    notes = sparse_quant_notes(_chain(steps), parse_recipe(json.dumps(steps)))
    assert notes and all("no sparse layout" in n for n in notes)
    assert sparse_quant_notes(_chain([RTN4]), parse_recipe(json.dumps([RTN4]))) == []
