"""bitsandbytes LLM.int8() and 4-bit storage: same numbers as bitsandbytes' own modules,
real bytes, and the outlier decomposition at work (on the CPU)."""

from __future__ import annotations

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from core.storage import Bnb4bitLinear, BnbInt8Linear, module_storage_bytes  # noqa: E402


def _linear(seed: int = 0, in_f: int = 256, out_f: int = 128) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(in_f, out_f)


def _bnb_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of bitsandbytes' own state dict, less the bias and its packed JSON metadata."""
    return sum(
        t.numel() * t.element_size()
        for k, t in state.items()
        if k != "bias" and "quant_state.bitsandbytes__" not in k and k != "weight_format"
    )


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [True, False])
def test_4bit_matches_bitsandbytes_linear4bit(quant_type: str, double_quant: bool) -> None:
    lin = _linear()
    ours = Bnb4bitLinear.build(
        lin.weight,
        lin.bias,
        quant_type=quant_type,
        double_quant=double_quant,
        compute_dtype=torch.float32,
        blocksize=64,
    )
    ref = bnb.nn.Linear4bit(
        256,
        128,
        compute_dtype=torch.float32,
        compress_statistics=double_quant,
        quant_type=quant_type,
    )
    ref.weight = bnb.nn.Params4bit(
        lin.weight.detach().clone(),
        requires_grad=False,
        quant_type=quant_type,
        compress_statistics=double_quant,
    )
    ref.bias = torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
    ref = ref.to("cpu")
    x = torch.randn(3, 256)
    assert torch.equal(ours(x), ref(x))
    # Real bytes: exactly what bitsandbytes itself stores (packed codes, absmax, maps).
    stored = module_storage_bytes(ours) - lin.bias.numel() * 4
    assert stored == _bnb_bytes(ref.state_dict())
    assert ours.weight.dtype == torch.uint8 and ours.weight.numel() == 256 * 128 // 2
    # 4 bits + one absmax per 64 weights (8 bits double-quantized, else 32) + the maps.
    per_weight = 8 * stored / (256 * 128)
    expected = 4 + (8 if double_quant else 32) / 64
    assert expected < per_weight < expected + 0.3
    err = (ours.dequantized_weight() - lin.weight).norm() / lin.weight.norm()
    assert err < 0.15


def test_nf4_fits_normal_weights_better_than_fp4() -> None:
    lin = _linear(1)
    err = {}
    for qt in ("nf4", "fp4"):
        mod = Bnb4bitLinear.build(
            lin.weight, lin.bias, quant_type=qt, double_quant=False, blocksize=64
        )
        err[qt] = (mod.dequantized_weight() - lin.weight).norm().item()
    # Kaiming-uniform init is not normal, yet NF4's levels still win (measured ~0.09 vs 0.11
    # relative); the margin asks for 10% less error.
    assert err["nf4"] < 0.9 * err["fp4"]


def test_int8_matches_bitsandbytes_linear8bitlt_and_stores_int8_rows() -> None:
    lin = _linear(2)
    ours = BnbInt8Linear.build(lin.weight, lin.bias, threshold=6.0)
    ref = bnb.nn.Linear8bitLt(256, 128, has_fp16_weights=False, threshold=6.0)
    ref.weight = bnb.nn.Int8Params(
        lin.weight.detach().clone(), requires_grad=False, has_fp16_weights=False
    )
    ref.bias = torch.nn.Parameter(lin.bias.detach().half().clone(), requires_grad=False)
    ref = ref.to("cpu").eval()  # in training mode bitsandbytes takes a float path on the CPU
    x = torch.randn(4, 256).half()
    x[:, 7] = 20.0  # an outlier feature column
    assert torch.equal(ours(x), ref(x))
    assert ours.CB.dtype == torch.int8 and ours.CB.shape == (128, 256)
    assert module_storage_bytes(ours) - 128 * 4 == 128 * 256 + 128 * 4  # CB + SCB (float32)


def test_int8_outlier_decomposition_keeps_large_features_exact() -> None:
    lin = _linear(3)
    x = torch.randn(16, 256)
    x[:, [5, 99]] *= 40.0  # two outlier feature dimensions, as in large LLMs
    ref = lin(x)
    err = {}
    for t in (0.0, 6.0):
        y = BnbInt8Linear.build(lin.weight, lin.bias, threshold=t)(x)
        err[t] = ((y - ref).norm() / ref.norm()).item()
    # Without the decomposition the outliers set every row's int8 scale and crush the
    # other features; with it they go through float16 (measured: ~10x less error).
    assert err[6.0] < 0.3 * err[0.0]
