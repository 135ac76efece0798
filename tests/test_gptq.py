"""GPTQ math against an independent brute-force OBS computation, and GPTQ on models."""

from __future__ import annotations

import pytest
import torch

from core.quant.gptq import gptq_quantize
from core.quant.hessian import init_hessian, update_hessian
from core.quant.rtn import QuantSpec, compute_scale_zero, dequantize, qrange


def _problem(out_f: int = 12, in_f: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    # Correlated inputs with uneven scales, so that the OBS updates matter.
    X = torch.randn(200, in_f, generator=gen, dtype=torch.float64) @ torch.randn(
        in_f, in_f, generator=gen, dtype=torch.float64
    )
    X = X * torch.linspace(0.2, 3.0, in_f, dtype=torch.float64)
    return W, 2.0 / X.shape[0] * X.T @ X


def _fp16(s: torch.Tensor) -> torch.Tensor:
    return s.to(torch.float16).to(torch.float64)


def brute_force_obs(
    W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, damp: float, order: list[int], static: bool
) -> torch.Tensor:
    """Quantize columns in ``order``; after each, the explicit OBS update of the remaining
    columns F: w_F -= (w_q - quant(w_q)) / [H_F^-1]_qq * [H_F^-1]_{:,q}, with H_F^-1
    recomputed by a fresh matrix inversion of H restricted to F at every step."""
    W = W.clone()
    in_f = W.shape[1]
    Hd = H + damp * torch.diag(H).mean() * torch.eye(in_f, dtype=H.dtype)
    gs = spec.group_size if spec.granularity == "group" else in_f
    qmin, qmax = qrange(spec.bits, spec.symmetric)
    params: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def group_params(g: int, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cols = source[:, g * gs : (g + 1) * gs].unsqueeze(1)
        s, z = compute_scale_zero(cols, spec)
        return _fp16(s[:, 0]), (z[:, 0] if z is not None else torch.zeros_like(s[:, 0]))

    if static:
        for g in range((in_f + gs - 1) // gs):
            params[g] = group_params(g, W)
    Q = torch.zeros_like(W)
    remaining = list(range(in_f))
    for q in order:
        g = q // gs
        if g not in params:  # first column of its group reached: scale from current weights
            params[g] = group_params(g, W)
        s, z = params[g]
        Q[:, q] = torch.clamp(torch.round(W[:, q] / s) + z, qmin, qmax)
        deq = (Q[:, q] - z) * s
        Hinv_F = torch.linalg.inv(Hd[remaining][:, remaining])
        k = remaining.index(q)
        delta = (W[:, q] - deq) / Hinv_F[k, k]
        W[:, remaining] -= delta.unsqueeze(1) * Hinv_F[:, k].unsqueeze(0)
        remaining.remove(q)
    return Q


@pytest.mark.parametrize(
    "spec, block_size, act_order",
    [
        (QuantSpec(bits=3, symmetric=False, granularity="group", group_size=16), 24, False),
        (QuantSpec(bits=4, symmetric=True, granularity="group", group_size=8), 8, False),
        (QuantSpec(bits=2, symmetric=False, granularity="channel"), 7, False),
        (QuantSpec(bits=3, symmetric=True, granularity="channel"), 16, True),
        (QuantSpec(bits=4, symmetric=False, granularity="group", group_size=16), 12, True),
    ],
)
def test_gptq_matches_brute_force_obs(spec: QuantSpec, block_size: int, act_order: bool) -> None:
    W, H = _problem()
    damp = 0.01
    static = act_order and spec.granularity == "group"
    qt = gptq_quantize(
        W, H, spec, block_size=block_size, damp=damp, act_order=act_order, static_groups=static
    )
    order = torch.argsort(torch.diag(H), descending=True).tolist() if act_order else list(range(40))
    Q_ref = brute_force_obs(W, H, spec, damp, order, static)
    # float64 on both sides: the integers agree exactly (a rounding tie is improbable).
    assert torch.equal(qt.q.to(torch.float64), Q_ref)


def test_gptq_static_groups_match_rtn_scales_and_beat_rtn_output_error() -> None:
    W, H = _problem(seed=1)
    spec = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=8)
    qt = gptq_quantize(W, H, spec, static_groups=True)
    from core.quant.rtn import quantize

    rtn = quantize(W, spec)
    assert torch.allclose(qt.scale, _fp16(rtn.scale).float())

    def out_err(Wq: torch.Tensor) -> float:
        D = (W - Wq).to(torch.float64)
        return torch.trace(D @ H @ D.T).item()

    # GPTQ minimises exactly this objective; RTN ignores H. On this problem the margin is
    # large (about 2x), so a strict inequality is safe.
    assert out_err(dequantize(qt).double()) < out_err(dequantize(rtn).double())


def test_gptq_dead_inputs_and_float32_hessian_from_stats() -> None:
    torch.manual_seed(0)
    W = torch.randn(6, 32)
    stats = init_hessian(32)
    x = torch.randn(3, 50, 32)
    x[..., 5] = 0  # an input that never fires
    update_hessian(stats, x)
    qt = gptq_quantize(W, stats.H, QuantSpec(bits=4, granularity="group", group_size=16))
    assert qt.q.dtype == torch.int16 and qt.q.shape == (6, 32)
    assert torch.all(qt.q[:, 5] == 0)  # dead input: weight zeroed, not compensated for
    assert qt.scale.shape == (6, 2)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_keeps_pruned_weights_at_zero_and_still_compensates(symmetric: bool) -> None:
    W, H = _problem(seed=2)
    W = W.float()
    W[:, ::2] = 0  # half the weights pruned
    spec = QuantSpec(bits=4, symmetric=symmetric, granularity="group", group_size=8)
    deq = dequantize(gptq_quantize(W, H.float(), spec))
    assert (deq[W == 0] == 0).all()
    # The kept weights moved to absorb the error (not plain rounding of each weight).
    from core.quant.rtn import quantize

    assert not torch.allclose(deq, dequantize(quantize(W, spec)))


def test_walker_groups_a_blocks_linears_by_shared_input_in_forward_order() -> None:
    from core.models import tiny_llama
    from core.walk import capture_block_inputs, find_linears, input_groups

    model = tiny_llama()
    block = model.model.layers[0]
    inputs = capture_block_inputs(model, model.model.layers, [torch.randint(0, 256, (1, 16))])
    layers = {n: m for n, m in find_linears(block).items()}
    assert input_groups(block, inputs, layers) == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]


def test_gptq_through_the_walker_reports_blocks_and_cancels_between_them() -> None:
    from core.errors import Cancelled
    from core.models import tiny_llama
    from core.recipe import recipe_from_steps
    from core.storage import AffineLinear as QuantLinear
    from core.walk import apply_recipe, find_linears

    calib = [
        torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    recipe = recipe_from_steps([{"method": "gptq", "bits": 4, "group_size": 32}])
    model = tiny_llama(layers=3)
    msgs: list[str] = []
    with pytest.raises(Cancelled):
        apply_recipe(
            model,
            recipe,
            on_progress=lambda f, m: msgs.append(m),
            should_cancel=lambda: len(msgs) >= 2,
            calib_batches=calib,
        )
    assert msgs == ["gptq: block 1/3", "gptq: block 2/3"]
    lin = find_linears(model)
    assert isinstance(lin["model.layers.1.mlp.down_proj"], QuantLinear)
    assert not isinstance(lin["model.layers.2.self_attn.q_proj"], QuantLinear)
    with pytest.raises(ValueError, match="needs a calibration set"):
        apply_recipe(
            tiny_llama(), recipe, on_progress=lambda f, m: None, should_cancel=lambda: False
        )


def test_gptq_config_refuses_act_order_with_dynamic_groups() -> None:
    from core.recipe import parse_recipe
    from core.registry import ConfigError

    with pytest.raises(ConfigError, match="static_groups"):
        parse_recipe('[{"method": "gptq", "act_order": true}]')
    parse_recipe('[{"method": "gptq", "act_order": true, "static_groups": true}]')
    parse_recipe('[{"method": "gptq", "act_order": true, "group_size": null}]')


@pytest.mark.parametrize(
    "out_f, in_f, spec, pruned, kw",
    [
        (96, 256, QuantSpec(bits=4, granularity="group", group_size=128), False, {}),
        (97, 200, QuantSpec(bits=3, symmetric=False, granularity="group", group_size=64), True, {}),
        (64, 100, QuantSpec(bits=3, granularity="channel"), False, {}),
        (50, 70, QuantSpec(bits=8, granularity="tensor"), False, {}),
        (80, 260, QuantSpec(bits=4, granularity="group", group_size=32), False, {"block_size": 48}),
        (
            64,
            256,
            QuantSpec(bits=4, granularity="group", group_size=64),
            True,
            {"act_order": True, "static_groups": True},
        ),
    ],
)
def test_native_column_loop_gives_the_torch_loops_bits(
    monkeypatch: pytest.MonkeyPatch, out_f: int, in_f: int, spec: QuantSpec, pruned: bool, kw: dict
) -> None:
    """The C++ column loop rounds step by step as the torch one does: the same codes,
    scales and zero points, bit for bit (odd widths, groups across blocks, act_order,
    pruned weights, one scale for the whole tensor)."""
    import core.quant.gptq as gptq
    from core.kernels import cpu

    if not cpu.native_available():
        pytest.skip("the native kernel library does not build here")
    W, H = _problem(out_f, in_f, seed=3)
    W, H = W.float(), H.float()
    if pruned:
        W[torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) < 0.4] = 0.0
    native = gptq_quantize(W, H, spec, **kw)
    monkeypatch.setattr(gptq, "_native_loop", lambda Wt: False)
    plain = gptq_quantize(W, H, spec, **kw)
    assert torch.equal(native.q, plain.q)
    assert torch.equal(native.scale, plain.scale)
    assert (native.zero is None) == (plain.zero is None)
    assert native.zero is None or torch.equal(native.zero, plain.zero)
    if pruned:
        assert bool((dequantize(native)[W == 0] == 0).all())
