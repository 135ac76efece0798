"""Round-to-nearest math: error bounds, integer ranges, zero points, outliers and clipping."""

from __future__ import annotations

import pytest
import torch

from core.quant.rtn import QuantSpec, dequantize, qrange, quantize
from core.storage import AffineLinear as QuantLinear


def _step(qt) -> torch.Tensor:
    """Per-weight step size (out, in)."""
    in_f = qt.q.shape[1]
    return qt.scale.float().repeat_interleave(qt.group_cols, dim=1)[:, :in_f].expand_as(qt.q)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_round_trip_error_is_at_most_half_a_step(
    bits: int, symmetric: bool, granularity: str
) -> None:
    torch.manual_seed(bits)
    w = torch.randn(48, 200)  # 200 is not a multiple of the group size: last group is padded
    qt = quantize(
        w, QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity, group_size=64)
    )
    lo, hi = qrange(bits, symmetric)
    assert qt.q.min() >= lo and qt.q.max() <= hi
    err = (dequantize(qt) - w).abs()
    assert torch.all(err <= _step(qt) / 2 + 1e-6)


def test_int8_absmax_uses_the_symmetric_range_and_hits_both_ends() -> None:
    w = torch.tensor([[-3.2, 0.1, 1.0, 3.2]])
    qt = quantize(w, QuantSpec(bits=8, symmetric=True, granularity="tensor"))
    assert qt.q.tolist() == [[-127, 4, 40, 127]]
    # The CONCEPTS example: 0.1 -> round(0.1 * 127 / 3.2) = 4 -> 4 * 3.2 / 127 = 0.1008
    assert dequantize(qt)[0, 1].item() == pytest.approx(0.1008, abs=1e-4)


def test_zero_point_uses_the_full_range_for_skewed_values() -> None:
    torch.manual_seed(0)
    w = torch.rand(16, 64) * 5 + 0.5  # all positive
    asym = quantize(w, QuantSpec(bits=8, symmetric=False, granularity="channel"))
    sym = quantize(w, QuantSpec(bits=8, symmetric=True, granularity="channel"))
    # The range is [min(w, 0), max(w)] = [0, max]: zero stays representable at -128.
    assert asym.q.max() == 127 and asym.q.min() >= -128
    assert torch.all(asym.zero == -128)
    err_asym = (dequantize(asym) - w).pow(2).mean()
    err_sym = (dequantize(sym) - w).pow(2).mean()
    # 255 levels over [0, max] against ~127 used levels of [-max, max]: about 4x less MSE.
    assert err_asym < err_sym / 3
    assert torch.all((dequantize(asym) - w).abs() <= _step(asym) / 2 + 1e-6)


def test_zero_stays_exactly_zero() -> None:
    w = torch.randn(8, 64)
    w[:, ::3] = 0.0
    for sym in (True, False):
        for bits in (2, 3, 4, 8):
            deq = dequantize(quantize(w, QuantSpec(bits=bits, symmetric=sym)))
            assert torch.all(deq[:, ::3] == 0.0)


@pytest.mark.parametrize("symmetric", [True, False])
def test_constant_and_all_zero_tensors(symmetric: bool) -> None:
    for value in (0.0, 0.7, -2.5):
        w = torch.full((4, 32), value)
        qt = quantize(w, QuantSpec(bits=4, symmetric=symmetric))
        assert torch.isfinite(qt.scale).all()
        assert torch.allclose(dequantize(qt), w, atol=1e-6)


def test_one_huge_outlier_crushes_the_rest_unless_clipped() -> None:
    torch.manual_seed(0)
    w = torch.randn(1, 4096) * 0.02
    w[0, 7] = 50.0  # one outlier 2500 sigma away
    plain = quantize(w, QuantSpec(bits=8, granularity="tensor"))
    # Every ordinary weight rounds to a handful of levels around zero.
    assert plain.q[0, torch.arange(4096) != 7].abs().max() <= 1
    clipped = quantize(w, QuantSpec(bits=8, granularity="tensor", clip_percentile=99.9))
    normal = torch.arange(4096) != 7
    err_plain = (dequantize(plain) - w)[0, normal].pow(2).mean()
    err_clip = (dequantize(clipped) - w)[0, normal].pow(2).mean()
    assert err_clip < err_plain / 100
    assert dequantize(clipped)[0, 7] < 1.0  # the outlier itself is clipped


def test_group_wise_scales_shape_and_isolate_an_outlier() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 256) * 0.02
    w[:, 0] = 10.0  # outliers in the first group only
    qt = quantize(w, QuantSpec(bits=4, granularity="group", group_size=64))
    assert tuple(qt.scale.shape) == (4, 4)
    err = (dequantize(qt) - w).abs()
    assert err[:, 64:].max() < 0.02  # the other groups keep fine steps


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quant_linear_stores_packed_bytes_and_reproduces_the_math(bits: int) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 32)
    spec = QuantSpec(bits=bits, symmetric=False, granularity="group", group_size=64)
    qt = quantize(lin.weight, spec)
    mod = QuantLinear.build(qt, lin.bias)
    assert mod.qweight.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert mod.qweight.numel() == (32 * 128 * bits + 7) // 8
    assert torch.equal(mod.int_weight(), qt.q)
    # fp16 scales: the stored model differs from the fp32 math by scale rounding only
    assert torch.allclose(mod.dequantized_weight(), dequantize(qt), rtol=1e-3, atol=1e-4)
    x = torch.randn(5, 128)
    ref = torch.nn.functional.linear(x, mod.dequantized_weight(), lin.bias)
    assert torch.allclose(mod(x), ref, atol=1e-5)
