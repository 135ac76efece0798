"""The contract every stored format keeps: built by ``Cls.build(weight, bias, **params)``,
rebuilt from its JSON layout plus its tensors, and reported by ``storage_info`` with the
bytes it really holds (no fake quantization counted as a saving)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

from core.prune.masks import nm_mask, row_mask
from core.quant.fp8 import quantize_fp8
from core.quant.rtn import QuantSpec, quantize
from core.storage import (
    AffineLinear,
    BitmaskSparseLinear,
    CastLinear,
    CompressedLinear,
    CSRSparseLinear,
    FP8Linear,
    LLMInt8Linear,
    NMSparseLinear,
    PrunedLinear,
    W8A8Linear,
    storage_info,
    tensor_bytes,
)

OUT, IN = 48, 256


def _affine(bits: int, symmetric: bool, group: int | None) -> Callable[..., CompressedLinear]:
    gran = "channel" if group is None else "group"
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=gran, group_size=group or 128)
    return lambda w, b: AffineLinear.build(quantize(w, spec), b)


def _bnb(kind: str) -> Callable[..., CompressedLinear]:
    def build(w: torch.Tensor, b: torch.Tensor) -> CompressedLinear:
        pytest.importorskip("bitsandbytes")
        from core.storage import Bnb4bitLinear, BnbInt8Linear

        if kind == "int8":
            return BnbInt8Linear.build(w, b, threshold=6.0)
        return Bnb4bitLinear.build(w, b, quant_type="nf4", blocksize=64)

    return build


def _sparse(w: torch.Tensor) -> torch.Tensor:
    return w * row_mask(w.abs(), 0.5)


# name -> (builder, format, nominal bits, how close its output is to the float layer's)
FORMATS: dict[str, tuple[Callable[..., CompressedLinear], str, float, float]] = {
    "int4-sym-g128": (_affine(4, True, 128), "affine-int", 4, 0.2),
    "int4-asym-g64": (_affine(4, False, 64), "affine-int", 4, 0.2),
    "int3-sym-g64": (_affine(3, True, 64), "affine-int", 3, 0.4),
    "int2-asym-channel": (_affine(2, False, None), "affine-int", 2, 1.0),
    "int8-sym-channel": (_affine(8, True, None), "affine-int", 8, 0.02),
    "w8a8-dynamic": (lambda w, b: W8A8Linear.build(w, b), "int8-rows", 8, 0.05),
    "w8a8-static": (
        lambda w, b: W8A8Linear.build(w, b, act_mode="static", act_absmax=4.0),
        "int8-rows",
        8,
        0.05,
    ),
    "llm-int8": (lambda w, b: LLMInt8Linear.build(w, b, threshold=2.0), "int8-rows", 8, 0.05),
    "fp8": (lambda w, b: FP8Linear.build(quantize_fp8(w, "e4m3", "channel"), b), "fp8", 8, 0.1),
    "bnb-int8": (_bnb("int8"), "bnb-int8", 8, 0.05),
    "bnb-nf4": (_bnb("nf4"), "bnb-4bit", 4, 0.2),
    "cast-bf16": (
        lambda w, b: CastLinear.build(w, b, dtype=torch.bfloat16),
        "cast",
        16,
        0.02,
    ),
    "2:4": (
        lambda w, b: NMSparseLinear.build(w * nm_mask(w.abs(), 2, 4), b, n=2, m=4),
        "nm-sparse",
        32,
        1.0,
    ),
    "bitmask": (lambda w, b: BitmaskSparseLinear.build(_sparse(w), b), "sparse-bitmask", 32, 1.0),
    "csr": (lambda w, b: CSRSparseLinear.build(_sparse(w), b), "sparse-csr", 32, 1.0),
}


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(IN, OUT)


def _held_bytes(mod: nn.Module) -> int:
    return sum(tensor_bytes(t) for t in list(mod.parameters()) + list(mod.buffers()))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_round_trips_through_its_saved_layout(name: str, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    build, fmt, bits, rel = FORMATS[name]
    lin = _linear()
    mod = build(lin.weight.detach(), lin.bias)
    x = torch.randn(5, IN)
    y = mod(x)
    with torch.no_grad():
        ref = lin(x)
    assert (y - ref).norm() / ref.norm() < rel
    # What core.save writes: the JSON layout and the tensors in safetensors.
    layout = json.loads(json.dumps(mod.storage_config()))
    save_file({k: v.contiguous() for k, v in mod.state_dict().items()}, str(tmp_path / "m.st"))
    again = type(mod).from_storage_config(layout)
    again.load_state_dict(load_file(str(tmp_path / "m.st")), strict=True)
    assert torch.equal(again(x), y)
    assert again.scheme() == mod.scheme()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_storage_info_reports_the_bytes_the_module_holds(name: str) -> None:
    build, fmt, bits, _ = FORMATS[name]
    lin = _linear()
    mod = build(lin.weight.detach(), lin.bias)
    info = storage_info(mod)
    assert info.format == fmt and info.bits == bits and info.scheme == mod.scheme()
    assert info.n_weights == OUT * IN
    assert info.weight_bytes == _held_bytes(mod)


@pytest.mark.parametrize("symmetric", [True, False])
def test_affine_4_bit_is_half_a_byte_per_weight_plus_scales(symmetric: bool) -> None:
    lin = _linear()
    mod = _affine(4, symmetric, 128)(lin.weight.detach(), lin.bias)
    groups = OUT * IN // 128
    # codes + float16 scale per group (+ uint8 zero per group) + float32 bias
    want = OUT * IN // 2 + groups * 2 + (0 if symmetric else groups) + OUT * 4
    assert storage_info(mod).weight_bytes == want
    assert 8 * (want - OUT * 4) / (OUT * IN) < 4.2  # not 32 bits of dequantized floats


def test_a_plain_and_a_pruned_linear_are_dense_storage() -> None:
    lin = _linear()
    info = storage_info(lin)
    assert (info.format, info.scheme, info.bits) == ("dense", "float32", 32.0)
    assert info.weight_bytes == (OUT * IN + OUT) * 4
    keep = row_mask(lin.weight.detach().abs(), 0.5)
    pruned = storage_info(
        PrunedLinear.build(lin.weight, lin.bias, keep=keep, pattern="unstructured")
    )
    assert pruned.format == "dense" and pruned.scheme == "float32-pruned-unstructured"
    assert pruned.weight_bytes == info.weight_bytes  # zeros still take their bytes
