"""AWQ: the scale and clip searches (pure math) and the method on tiny Llamas."""

from __future__ import annotations

import pytest
import torch

from core.errors import Cancelled
from core.quant.awq import (
    awq_search_clip,
    awq_search_scale,
    clamp_groups,
    output_error,
)
from core.quant.rtn import QuantSpec, dequantize, fake_quantize, quantize
from core.recipe import recipe_from_steps
from core.storage import AffineLinear as QuantLinear
from core.walk import apply_recipe, find_linears

SPEC = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=32)


def _salient_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights (48, 128) and inputs where 4 channels carry 20x larger activations."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(48, 128, generator=gen)
    X = torch.randn(1000, 128, generator=gen)
    X[:, [3, 40, 77, 100]] *= 20.0
    return W, 2.0 / X.shape[0] * X.T @ X, X.abs().mean(0)


def test_scale_search_protects_salient_channels() -> None:
    W, G, absmean = _salient_problem()
    res = awq_search_scale(W, G, absmean, SPEC, n_grid=20)
    # alpha = 0 is plain RTN: the search can only improve on it ...
    assert res.loss_plain == pytest.approx(output_error(W - fake_quantize(W, SPEC), G).item())
    assert res.loss <= res.loss_plain
    # ... and with salient channels it does by far (measured: about 3x less error).
    assert res.loss < 0.6 * res.loss_plain
    assert res.alpha > 0
    # The salient channels get the largest scales; max(s) * min(s) = 1 by normalisation.
    assert set(torch.topk(res.scale, 4).indices.tolist()) == {3, 40, 77, 100}
    assert (res.scale.max() * res.scale.min()).item() == pytest.approx(1.0, rel=1e-5)
    # Duo scaling (also divided by the weights' relative size) shares alpha = 0 = RTN.
    duo = awq_search_scale(W, G, absmean, SPEC, n_grid=20, duo=True)
    assert duo.loss <= duo.loss_plain and duo.loss < 0.6 * duo.loss_plain


def test_clip_search_never_loses_and_bounds_lie_in_the_range() -> None:
    W, G, _ = _salient_problem(1)
    W = W.clone()
    W[::5, 7] = 8.0  # outlier weights stretch some groups' ranges
    bound = awq_search_clip(W, G, SPEC, n_grid=20, max_shrink=0.5)
    amax = W.abs().reshape(48, 4, 32).amax(-1)
    assert bound.shape == (48, 4)
    assert (bound <= amax + 1e-6).all() and (bound >= 0.5 * amax - 1e-6).all()
    clipped = dequantize(quantize(clamp_groups(W, bound, SPEC), SPEC))
    plain = dequantize(quantize(W, SPEC))
    err = [output_error(W - w, G).item() for w in (clipped, plain)]
    assert err[0] <= err[1] * (1 + 1e-6)
    assert (bound < amax).any()  # the outliers' groups are clipped


def _mha_llama() -> torch.nn.Module:
    """A Llama without grouped-query attention, so that v_proj -> o_proj can be scaled."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


CALIB = [
    torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(i)) for i in range(3)
]


@pytest.mark.parametrize("mha", [False, True])
def test_scales_fold_into_norms_and_linears_without_changing_the_float_model(mha: bool) -> None:
    from core.models import tiny_llama

    model = _mha_llama() if mha else tiny_llama()
    ids = CALIB[0]
    with torch.no_grad():
        ref = model(ids).logits
    norms_before = model.model.layers[0].input_layernorm.weight.detach().clone()
    msgs: list[str] = []
    recipe = recipe_from_steps([{"method": "awq", "bits": 8, "group_size": 32}])
    reports = apply_recipe(
        model,
        recipe,
        on_progress=lambda f, m: msgs.append(m),
        should_cancel=lambda: False,
        calib_batches=CALIB,
    )
    lin = find_linears(model)
    assert all(isinstance(m, QuantLinear) for n, m in lin.items() if n != "lm_head")
    assert len(reports) == 14 and all(r.rel_error is not None for r in reports)
    # The scales went somewhere: the norm weights changed ...
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, norms_before)
    # ... yet at 8 bits the model computes what it did: a wrong fold (a scale applied
    # on one side only) would move the logits by far more than 8-bit rounding does.
    with torch.no_grad():
        out = model(ids).logits
    assert (out - ref).norm() / ref.norm() < 0.02
    assert msgs[-1] == "awq: block 2/2"


def test_awq_reports_progress_per_block_and_cancels_between_blocks() -> None:
    from core.models import tiny_llama

    model = tiny_llama(layers=3)
    msgs: list[str] = []
    with pytest.raises(Cancelled):
        apply_recipe(
            model,
            recipe_from_steps([{"method": "awq", "bits": 4, "group_size": 32}]),
            on_progress=lambda f, m: msgs.append(m),
            should_cancel=lambda: len(msgs) >= 1,  # cancel once block 1 is done
            calib_batches=CALIB,
        )
    assert msgs == ["awq: block 1/3"]
    lin = find_linears(model)
    assert isinstance(lin["model.layers.0.mlp.up_proj"], QuantLinear)
    assert not isinstance(lin["model.layers.1.mlp.up_proj"], QuantLinear)


def test_awq_refuses_an_unknown_architecture() -> None:
    from core.models import tiny_llama
    from core.registry import ConfigError

    model = tiny_llama()
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match="no norm -> linears mapping"):
        apply_recipe(
            model,
            recipe_from_steps([{"method": "awq"}]),
            on_progress=lambda f, m: None,
            should_cancel=lambda: False,
            calib_batches=CALIB,
        )
