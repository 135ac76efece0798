"""ZeroQuant: the straight-through quantizer, LKD on a tiny Llama (it must beat plain
rounding with the same quantizer), the stored formats, and the config's refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from core.methods.zeroquant import ZeroQuantConfig, _FakeQuantLinear, fake_quant_per_token
from core.models import tiny_llama
from core.quant.rtn import fake_quantize
from core.recipe import recipe_from_steps
from core.registry import ConfigError
from core.storage import AffineLinear, W8A8Linear
from core.walk import apply_recipe, find_linears


def _batches(n: int = 4, t: int = 32, vocab: int = 256, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, t), generator=gen) for _ in range(n)]


@torch.no_grad()
def _output_mse(model: torch.nn.Module, ref: torch.nn.Module, batches: list) -> float:
    errors = [torch.mean((model(b).logits - ref(b).logits) ** 2).item() for b in batches]
    return sum(errors) / len(errors)


def _compress(model: torch.nn.Module, batches: list, **params: object) -> torch.nn.Module:
    m = copy.deepcopy(model)
    step = {"method": "zeroquant", **params}
    apply_recipe(
        m,
        recipe_from_steps([step]),
        on_progress=lambda f, s: None,
        should_cancel=lambda: False,
        calib_batches=batches,
    )
    return m


def test_untrained_student_is_plain_group_rounding() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    cfg = ZeroQuantConfig(bits=3, group_size=32)
    fq = _FakeQuantLinear(lin, cfg)
    x = torch.randn(5, 96)
    want = torch.nn.functional.linear(x, fake_quantize(lin.weight, cfg.spec()), lin.bias)
    torch.testing.assert_close(fq(x), want)
    stored = fq.stored()
    assert isinstance(stored, AffineLinear) and stored.bits == 3 and stored.group_size == 32
    # fp16 scales in storage: the same weights up to the scale's rounding, which can move
    # a weight on a rounding boundary by one step (a few in a hundred at most)
    eye = torch.eye(96)
    w_stored = (stored(eye) - stored(torch.zeros(1, 96))).T
    w_fake = fake_quantize(lin.weight, cfg.spec()).detach()
    moved = (w_stored - w_fake).abs() > 1e-3
    step = (lin.weight.detach().abs().amax() / 3).item()  # more than any 3-bit group's step
    assert moved.float().mean() < 0.03
    assert ((w_stored - w_fake).abs() <= step).all()


def test_gradients_pass_the_rounding() -> None:
    lin = torch.nn.Linear(64, 8)
    fq = _FakeQuantLinear(lin, ZeroQuantConfig(bits=4, group_size=32))
    fq(torch.randn(3, 64)).pow(2).sum().backward()
    assert fq.delta.grad is not None and fq.delta.grad.abs().sum() > 0
    assert fq.log_gain.grad is None  # learn="weights" leaves the scales alone
    x = torch.randn(4, 16, requires_grad=True)
    fake_quant_per_token(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("learn", ["weights", "scales"])
def test_lkd_beats_plain_rounding_on_a_tiny_llama(learn: str) -> None:
    model = tiny_llama(layers=2)
    calib, held = _batches(seed=1), _batches(seed=2)
    plain = _compress(model, calib, bits=3, group_size=32, lkd_steps=0)
    lkd = _compress(model, calib, bits=3, group_size=32, lkd_steps=60, lr=0.02, learn=learn)
    linears = find_linears(lkd.model.layers)
    assert linears and all(isinstance(m, AffineLinear) for m in linears.values())
    # on held-out batches, not the calibration ones
    assert _output_mse(lkd, model, held) < 0.9 * _output_mse(plain, model, held)


def test_act_quant_is_stored_as_w8a8() -> None:
    model = tiny_llama(layers=1)
    out = _compress(model, _batches(n=2), bits=8, group_size=None, act_quant=True, lkd_steps=5)
    linears = find_linears(out.model.layers)
    assert all(isinstance(m, W8A8Linear) and m.act_mode == "dynamic" for m in linears.values())
    assert _output_mse(out, model, _batches(seed=3)) < 1e-3


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="act_quant"):
        ZeroQuantConfig(bits=4, act_quant=True)
    with pytest.raises(ConfigError, match="power of two"):
        ZeroQuantConfig(group_size=96)
    with pytest.raises(ConfigError):
        ZeroQuantConfig(learn="everything")


def test_bench_table_compares_every_method_at_both_bit_widths() -> None:
    """bench/zeroquant_table.py's recipes are valid and cover RTN, GPTQ, AWQ and ZeroQuant
    with and without LKD at 4 and 3 bits, g128 (the closing note's table)."""
    from bench import zeroquant_table as zt

    rows = zt.all_recipes()
    for label, steps in rows.items():
        (step,) = recipe_from_steps(steps).to_list()
        assert step["group_size"] == 128 and str(step["bits"]) in label
    methods = {(s[0]["method"], s[0].get("lkd_steps", 100) > 0) for s in rows.values()}
    assert methods >= {("rtn", True), ("gptq", True), ("awq", True)}
    assert {("zeroquant", True), ("zeroquant", False)} <= methods
    assert {s[0]["bits"] for s in rows.values()} == {3, 4}
