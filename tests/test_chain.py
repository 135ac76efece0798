"""Chains: pruning then quantization keeps the pruned weights at zero; a pruned layer no
later step replaces ends in sparse storage, and the model runs from it."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from core.metrics import weight_memory
from core.models import tiny_llama
from core.prune.masks import nm_group_counts
from core.quant.rtn import QuantSpec, dequantize, quantize
from core.recipe import parse_recipe
from core.registry import ConfigError, MethodContext, get_method
from core.storage import AffineLinear as QuantLinear
from core.storage import NMSparseLinear, PrunedLinear, SparseAffineLinear
from core.walk import apply_recipe, apply_step, finalize_recipe, find_linears

BATCHES = [
    torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(3)
]
WANDA_24 = {"method": "wanda", "pattern": "2:4"}


def _compress(steps: list[dict]) -> torch.nn.Module:
    model = tiny_llama()
    apply_recipe(
        model,
        parse_recipe(json.dumps(steps)),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=BATCHES,
    )
    return model


def _weights(model) -> dict[str, torch.Tensor]:
    return {
        n: m.dequantized_weight() if hasattr(m, "dequantized_weight") else m.weight.detach().float()
        for n, m in find_linears(model).items()
        if n != "lm_head"
    }


@pytest.mark.parametrize(
    "bits, symmetric, granularity, clip",
    list(
        itertools.product(
            [2, 4, 8], [True, False], ["tensor", "channel", "group"], [100.0, 90.0, "mse"]
        )
    ),
)
def test_rtn_keeps_zero_exactly_representable(bits, symmetric, granularity, clip) -> None:
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(8, 64, generator=g) * (torch.rand(8, 64, generator=g) > 0.5)
    w[0] = w[0].abs()  # an all-positive row: its range must still reach down to 0
    w[1] = -w[1].abs()
    spec = QuantSpec(
        bits=bits,
        symmetric=symmetric,
        granularity=granularity,
        group_size=32,
        clip_percentile=100.0 if clip == "mse" else clip,
        clip_search="mse" if clip == "mse" else "none",
    )
    back = dequantize(quantize(w, spec))
    assert (back[w == 0] == 0).all()


QUANT_STEPS = [
    pytest.param({"method": "rtn", "bits": 4}, id="rtn4-sym-channel"),
    pytest.param(
        {"method": "rtn", "bits": 4, "symmetric": False, "granularity": "group", "group_size": 32},
        id="rtn4-asym-g32",
    ),
    pytest.param({"method": "gptq", "bits": 4, "group_size": 32}, id="gptq4-g32"),
]


@pytest.mark.parametrize("quant", QUANT_STEPS)
def test_prune_then_quantize_keeps_zeros(quant: dict) -> None:
    try:
        get_method(quant["method"])
    except ConfigError:
        pytest.skip(f"{quant['method']} is not registered")
    pruned = _weights(_compress([WANDA_24]))
    chained = _compress([WANDA_24, quant])
    for name, w in _weights(chained).items():
        assert isinstance(find_linears(chained)[name], QuantLinear | SparseAffineLinear), name
        zero = pruned[name] == 0
        assert zero.float().mean() >= 0.5
        assert (w[zero] == 0).all(), f"{name}: quantization revived pruned weights"
        assert (nm_group_counts(w, 4) <= 2).all()


def test_pruned_model_runs_from_its_sparse_storage() -> None:
    model = tiny_llama()
    recipe = parse_recipe('[{"method": "wanda", "pattern": "2:4"}]')
    ctx = MethodContext(
        on_progress=lambda f, m: None, should_cancel=lambda: False, calib_batches=BATCHES
    )
    apply_step(model, recipe.steps[0], ctx)
    tagged = {n: m for n, m in find_linears(model).items() if isinstance(m, PrunedLinear)}
    assert len(tagged) == 14  # still plain nn.Linear: a later step could target them
    ids = BATCHES[0]
    with torch.no_grad():
        ref = model(ids).logits
    dense = weight_memory(model)
    finalize_recipe(model, recipe)
    layers = find_linears(model)
    assert all(isinstance(layers[n], NMSparseLinear) for n in tagged)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref, atol=1e-5)
    sparse = weight_memory(model)
    # fp32 2:4: half the values (2 bytes/weight) + 2 index bits per kept value (1/8 byte).
    n = sum(layers[name].in_features * layers[name].out_features for name in tagged)
    saved = dense.weight_bytes - sparse.weight_bytes
    assert saved == n * 4 - n * (2 + 0.125)
