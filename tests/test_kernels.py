"""Every kernel path against the plain-torch reference (core/kernels/ref.py), odd shapes
included, plus the op registration, the path choice and the layers that use the ops.

Tolerances: the integer paths (native, int_mm, triton) sum int8 products exactly, so
they differ from the reference only by float32 rounding in the epilogue (rtol 1e-5);
the float emulation ("dequant") sums in float32 (rtol 1e-4 of the output norm); the
weight-only kernels sum float products in another order (rtol 1e-5 of the norm).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.kernels import cpu, ops, ref
from core.quant.actquant import quantize_per_token
from core.quant.rtn import QuantSpec, quantize
from core.storage import AffineLinear, W8A8Linear

ROOT = Path(__file__).resolve().parent.parent
NATIVE = cpu.native_available()
needs_native = pytest.mark.skipif(not NATIVE, reason="no C++ compiler or no AVX2/FMA/F16C")

# (M, K, N): M = 1 and 3 (decode), K not a multiple of 16/32/64, K above the kernel's K
# block (2048) with M > 4 so the blocked path with int32 partial sums runs too.
SHAPES = [(1, 64, 32), (3, 100, 17), (1, 257, 40), (16, 130, 70), (37, 96, 33), (6, 2100, 9)]


@pytest.fixture(autouse=True)
def _no_tuned_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Path choices here come from the committed table or the heuristic, never from a
    table some earlier run measured in ./data."""
    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path))
    ops.forget_tuned_table()
    yield
    ops.forget_tuned_table()


def _w8(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    ws = torch.rand(n, generator=g) * 0.01 + 1e-3
    bias = torch.randn(n, generator=g)
    return w, ws, bias


def _x(m: int, k: int, seed: int) -> torch.Tensor:
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * 2
    x[:, : max(1, k // 50)] *= 20  # a few outlier channels, as real activations have
    return x


def _int4(lin: torch.nn.Linear, group: int) -> AffineLinear:
    """4-bit asymmetric group-wise storage, as the int4 weight-only method builds it."""
    spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=group)
    return AffineLinear.build(quantize(lin.weight, spec), lin.bias)


def _int8(lin: torch.nn.Linear) -> AffineLinear:
    """8-bit symmetric per-row storage, float32 scales, as int8 weight-only builds it."""
    spec = QuantSpec(bits=8, symmetric=True, granularity="channel")
    return AffineLinear.build(quantize(lin.weight, spec), lin.bias, scale_dtype=torch.float32)


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    err = ((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-12)).item()
    assert err <= rtol, f"relative error {err:.3g} > {rtol:g}"


def _int8_paths() -> list[str]:
    return [p for p, kp in ops.CPU_PATHS["int8_linear"].items() if kp.available()]


@pytest.mark.parametrize("path", ["native", "int_mm", "dequant"])
@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("shape", SHAPES)
def test_int8_linear_paths_match_reference(path: str, mode: str, shape: tuple) -> None:
    if path not in _int8_paths():
        pytest.skip(f"{path} is not available here")
    m, k, n = shape
    w, ws, b = _w8(n, k, seed=m + k)
    x = _x(m, k, seed=n)
    # a static scale that clips the outlier channels: clipping must agree too
    xs = torch.tensor(float(x.abs().max()) / 127 / 4) if mode == "static" else None
    want = ref.int8_linear(x, w, ws, b, mode, xs)
    with ops.use_path(path):
        got = ops.int8_linear(x, w, ws, b, mode, xs)
        got_nobias = ops.int8_linear(x, w, ws, None, mode, xs)
    assert got.shape == (m, n) and got.dtype == x.dtype
    tol = 1e-4 if path == "dequant" else 1e-5
    _close(got, want, tol)
    _close(got_nobias, ref.int8_linear(x, w, ws, None, mode, xs), tol)


@needs_native
@pytest.mark.parametrize("shape", SHAPES)
def test_native_gemm_is_exact_on_integers(shape: tuple) -> None:
    m, k, n = shape
    w, _, _ = _w8(n, k, seed=1)
    q = torch.randint(-127, 128, (m, k), dtype=torch.int16)
    exact = (q.long() @ w.long().t()).float()  # |sums| < 2**24 here: exact in float32
    got = cpu.w8a8_gemm_native(q, torch.ones(m), w, torch.ones(n), None)
    assert torch.equal(got, exact)


@needs_native
def test_native_quantization_matches_reference_bit_for_bit() -> None:
    x = _x(9, 203, seed=3)
    x[4] = 0.0  # an all-zero row gets scale 1 and zero codes
    # a row with max 127 has scale exactly 1: .5 ties must round half to even like torch
    x[5, :6] = torch.tensor([127.0, 2.5, -3.5, 0.5, -0.5, 1.5])
    q_ref, s_ref = quantize_per_token(x)
    q, s = cpu.quantize_rows(x)
    assert torch.equal(q.to(torch.int8), q_ref)
    assert torch.equal(s, s_ref.reshape(-1))
    assert q[5, :6].tolist() == [127, 2, -4, 0, 0, 2]
    assert s[4] == 1.0 and not q[4].any()


@pytest.mark.parametrize("path", ["native", "dequant"])
@pytest.mark.parametrize("shape", SHAPES)
def test_int8_weight_only_paths_match_reference(path: str, shape: tuple) -> None:
    if path == "native" and not NATIVE:
        pytest.skip("no native kernels here")
    m, k, n = shape
    w, ws, b = _w8(n, k, seed=5)
    x = _x(m, k, seed=6)
    with ops.use_path(path):
        got = ops.int8_weight_only_linear(x, w, ws, b)
    _close(got, ref.int8_weight_only_linear(x, w, ws, b), 1e-5)


@pytest.mark.parametrize("path", ["native", "dequant"])
@pytest.mark.parametrize("group", [32, 64, 128, 256])
@pytest.mark.parametrize("shape", SHAPES)
def test_int4_weight_only_paths_match_reference(path: str, group: int, shape: tuple) -> None:
    if path == "native" and not NATIVE:
        pytest.skip("no native kernels here")
    m, k, n = shape
    lin = torch.nn.Linear(k, n)
    layer = _int4(lin, group)
    x = _x(m, k, seed=7)
    args = (layer.qweight, layer.scale, layer.zero, layer.group_size, layer.bias)
    want = ref.int4_weight_only_linear(x, *args)
    with ops.use_path(path):
        got = ops.int4_weight_only_linear(x, *args)
    _close(got, want, 1e-5)


@needs_native
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_weight_only_kernels_of_each_instruction_set_match_reference(
    isa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library is compiled with AVX-512 only where the CPU has it; the AVX2 kernels
    it would otherwise use are built and checked here too (odd shapes, groups 32-128)."""
    have512 = all(f in cpu.cpu_flags() for f in cpu.AVX512_FLAGS)
    if isa == "avx512" and not have512:
        pytest.skip("this CPU has no AVX-512")
    monkeypatch.setenv("COMPRESSLAB_NO_AVX512", "1" if isa == "avx2" else "0")
    cpu.load_library.cache_clear()
    try:
        assert cpu.native_vector_bits() == (512 if isa == "avx512" else 256)
        for (m, k, n), group in zip(SHAPES, [32, 64, 128, 64, 32, 256], strict=True):
            w, ws, b = _w8(n, k, seed=k)
            x = _x(m, k, seed=m)
            got = cpu.int8_weight_only_native(x, w, ws, b)
            _close(got, ref.int8_weight_only_linear(x, w, ws, b), 1e-5)
            layer = _int4(torch.nn.Linear(k, n), group)  # a group past K shrinks to K
            args = (layer.qweight, layer.scale, layer.zero, layer.group_size, layer.bias)
            got = cpu.int4_weight_only_native(x, *args)
            _close(got, ref.int4_weight_only_linear(x, *args), 1e-5)
    finally:
        cpu.load_library.cache_clear()


@needs_native
@pytest.mark.parametrize("vnni", [False, True])
def test_w8a8_native_kernel_of_each_instruction_set_is_the_reference_bit_for_bit(
    vnni: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The native W8A8 kernel multiplies bytes with AVX-512 VNNI (codes + 128, minus 128
    times each weight row's sum) where the CPU has it, with AVX2 int16 madds elsewhere:
    both give the reference's int32 sums and epilogue exactly, K = 70,000 included (the
    VNNI lanes wrap past 2^31 there before the correction)."""
    if vnni and "avx512_vnni" not in cpu.cpu_flags():
        pytest.skip("this CPU has no AVX-512 VNNI")
    monkeypatch.setenv("COMPRESSLAB_NO_VNNI", "0" if vnni else "1")
    cpu.load_library.cache_clear()
    try:
        assert cpu.native_w8a8_vnni() == vnni
        for m, k, n in [*SHAPES, (5, 70_000, 3)]:
            w, ws, b = _w8(n, k, seed=m + k)
            x = _x(m, k, seed=n)
            xs = torch.tensor(float(x.abs().max()) / 127 / 4)
            for mode, scale in (("dynamic", None), ("static", xs)):
                want = ref.int8_linear(x, w, ws, b, mode, scale).float()
                assert torch.equal(cpu.w8a8_linear_native(x, w, ws, b, mode, scale), want)
            q = torch.randint(-127, 128, (m, k), dtype=torch.int16)
            got = cpu.w8a8_gemm_native(q, torch.ones(m), w, torch.ones(n), None)
            assert torch.equal(got, (q.long() @ w.long().t()).float())  # float(exact int)
    finally:
        cpu.load_library.cache_clear()


@needs_native
def test_native_dequantization_matches_reference() -> None:
    w, ws, _ = _w8(33, 203, seed=8)
    assert torch.equal(cpu.dequantize_int8_native(w, ws), w.float() * ws[:, None])
    layer = _int4(torch.nn.Linear(203, 33), 32)
    args = (layer.qweight, layer.scale, layer.zero, 32, 203)
    want = ref.dequantize_int4(*args)
    assert torch.allclose(cpu.dequantize_int4_native(*args), want, rtol=1e-6, atol=1e-7)


def test_op_registration_cpu_meta_and_batched_shapes() -> None:
    w, ws, b = _w8(24, 48, seed=2)
    x = _x(10, 48, seed=3).reshape(2, 5, 48)
    y = torch.ops.compresslab.int8_linear(x, w, ws, b, "dynamic", None)
    assert y.shape == (2, 5, 24)
    _close(y, ref.int8_linear(x, w, ws, b, "dynamic"), 1e-4)
    meta = torch.ops.compresslab.int8_linear(
        x.to("meta"), w.to("meta"), ws.to("meta"), None, "dynamic", None
    )
    assert meta.shape == (2, 5, 24) and meta.device.type == "meta"
    wo = torch.ops.compresslab.int8_weight_only_linear(x, w, ws, b)
    _close(wo, ref.int8_weight_only_linear(x, w, ws, b), 1e-5)
    with pytest.raises(ValueError, match="act_mode"):
        ops.int8_linear(x, w, ws, b, "per-channel")


def test_path_log_records_every_call() -> None:
    w, ws, b = _w8(8, 32, seed=4)
    ops.reset_path_log()
    with ops.use_path("dequant"):
        ops.int8_linear(torch.randn(1, 32), w, ws, b, "dynamic")
        ops.int8_linear(torch.randn(200, 32), w, ws, b, "dynamic")
    log = ops.path_log()
    assert [(r["op"], r["path"], r["m_le"], r["calls"]) for r in log] == [
        ("int8_linear", "dequant", 1, 1),
        ("int8_linear", "dequant", 512, 1),
    ]
    assert {r["table"] for r in log} == {"forced"}
    ops.reset_path_log()
    assert ops.path_log() == []


@pytest.mark.parametrize("native", [True, False])
def test_int_mm_quantization_is_the_reference_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    if native and not NATIVE:
        pytest.skip("no native kernels here")
    monkeypatch.setattr(cpu, "native_available", lambda: native)
    for m, k in [(1, 100), (3, 257), (2, 7), (37, 4096)]:
        x = _x(m, k, seed=k)
        x[0] = 0.0  # a zero row keeps scale 1
        q, s = cpu.quantize_per_token_fast(x)
        q_ref, s_ref = quantize_per_token(x)
        assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


@needs_native
@pytest.mark.parametrize("bias", [True, False])
def test_int32_epilogue_native_equals_torch_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, bias: bool
) -> None:
    """Same float32 operations in the same order as ref.int8_linear: identical bits."""
    g = torch.Generator().manual_seed(3)
    acc = torch.randint(-(2**24), 2**24, (5, 37), dtype=torch.int32, generator=g)
    s, ws = torch.rand(5, 1, generator=g), torch.rand(37, generator=g)
    b = torch.randn(37, generator=g) if bias else None
    got = cpu.int32_epilogue(acc, s, ws, b)
    assert torch.equal(cpu.int32_epilogue(acc.clone(), s, ws, b, in_place=True), got)
    monkeypatch.setattr(cpu, "native_available", lambda: False)
    assert torch.equal(got, cpu.int32_epilogue(acc, s, ws, b))
    assert torch.equal(
        cpu.int32_epilogue(acc, s[:1], ws, b), cpu.int32_epilogue(acc, s[0].expand(5, 1), ws, b)
    )


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("shape", [(1, 100, 17), (3, 257, 40), (5, 64, 8), (20, 130, 9)])
def test_int_mm_is_exact_with_and_without_padding(
    monkeypatch: pytest.MonkeyPatch, pad: bool, shape: tuple
) -> None:
    """torch._int_mm on CPU takes odd shapes in this torch; where a build does not, the
    zero padding to M >= 17 and K, N multiples of 8 must not change a single sum."""
    if pad:
        monkeypatch.setattr(cpu, "int_mm_takes_any_shape", lambda: False)
    m, k, n = shape
    w, _, _ = _w8(n, k, seed=k)
    q = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    got = cpu._int_mm_padded(q, w)
    assert got.shape == (m, n) and got.dtype == torch.int32
    assert torch.equal(got.long(), q.long() @ w.long().t())


def test_int_mm_path_keeps_bfloat16_inputs_and_batches() -> None:
    w, ws, b = _w8(24, 100, seed=9)
    x = _x(6, 100, seed=2).to(torch.bfloat16).reshape(2, 3, 100)
    with ops.use_path("int_mm"):
        got = ops.int8_linear(x, w, ws, b, "dynamic")
    assert got.shape == (2, 3, 24) and got.dtype == torch.bfloat16
    _close(got, ref.int8_linear(x, w, ws, b, "dynamic"), 1e-2)  # bf16 output rounding


def test_dispatch_table_lookup_and_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {
        "rules": {
            "int8_linear": [
                {"m": 1, "k": 1024, "path": "int_mm"},
                {"m": 1, "k": 4096, "path": "dequant"},
                {"m": 128, "k": 1024, "path": "ref"},
            ]
        }
    }
    assert ops.table_path(table, "int8_linear", 1, 300) == "int_mm"
    assert ops.table_path(table, "int8_linear", 1, 2000) == "dequant"
    assert ops.table_path(table, "int8_linear", 1, 9000) == "dequant"  # largest K measured
    assert ops.table_path(table, "int8_linear", 100, 64) == "ref"
    assert ops.table_path(table, "int8_linear", 600, 64) is None  # no M=2048 cell
    assert ops.table_path(None, "int8_linear", 1, 64) is None
    monkeypatch.setattr(ops, "_TABLE", table)
    monkeypatch.setattr(ops, "_TABLE_LOADED", True)
    assert ops.choose_cpu_path("int8_linear", 1, 512) == "int_mm"
    # no cell for this M: the heuristic decides (native here, float emulation without it)
    assert ops.choose_cpu_path("int8_linear", 600, 512) == ops.heuristic_path(
        "int8_linear", 600, 512
    )
    monkeypatch.setattr(cpu, "native_available", lambda: False)
    assert ops.heuristic_path("int8_weight_only_linear", 1, 64) == "dequant"
    with pytest.raises(RuntimeError, match="not available"), ops.use_path("native"):
        ops.choose_cpu_path("int8_linear", 1, 64)


def test_heuristic_sends_w8a8_batches_to_int_mm_only_with_int8_dot_products(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ops, "int_mm_has_int8_dot", lambda: True)
    assert ops.heuristic_path("int8_linear", 128, 4096) == "int_mm"
    assert ops.heuristic_path("int8_linear", 1, 4096) != "int_mm"
    assert ops.heuristic_path("int8_weight_only_linear", 128, 4096) != "int_mm"
    monkeypatch.setattr(ops, "int_mm_has_int8_dot", lambda: False)
    assert ops.heuristic_path("int8_linear", 128, 4096) != "int_mm"


def test_checked_in_dispatch_table_names_real_paths() -> None:
    data = ops.load_dispatch_table()
    if data is None:
        pytest.skip(f"no measured table for {ops.cpu_description()}")
    for op, rules in data["rules"].items():
        assert op in ops.OPS
        for r in rules:
            assert r["path"] in ops.CPU_PATHS[op] and r["m"] in ops.M_BUCKETS


def test_no_compiler_falls_back_to_plain_torch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COMPRESSLAB_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    cpu.load_library.cache_clear()
    try:
        if cpu.cpu_supported():
            assert cpu.load_library() is None
        assert ops.heuristic_path("int8_linear", 1, 64) == "dequant"
        w, ws, b = _w8(8, 32, seed=4)
        x = torch.randn(3, 32)
        _close(
            ops.int8_linear(x, w, ws, b, "dynamic"), ref.int8_linear(x, w, ws, b, "dynamic"), 1e-4
        )
    finally:
        cpu.load_library.cache_clear()


def test_weight_only_layers_store_integers_and_match_dequantized_weights() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 48)  # K a whole number of groups: no padding columns
    x = torch.randn(2, 3, 256)
    for layer, bits in ((_int8(lin), 8), (_int4(lin, 128), 4)):
        want = torch.nn.functional.linear(x, layer.dequantized_weight(), layer.bias)
        _close(layer(x), want, 1e-5)
        w_err = (layer.dequantized_weight() - lin.weight).norm() / lin.weight.norm()
        assert w_err < (0.01 if bits == 8 else 0.15)
        stored = sum(t.numel() * t.element_size() for t in layer.buffers())
        assert stored * 8 / (256 * 48) < bits + 0.5  # real bytes, not floats
    w8a8 = W8A8Linear.build(lin.weight, lin.bias, act_mode="dynamic")
    assert w8a8.w_int8.dtype == torch.int8 and w8a8.w_scale.dtype == torch.float32


TRITON_SCRIPT = """
import torch
from core.kernels import ref, triton_int8
assert triton_int8.available()
for m, k, n in {shapes}:
    g = torch.Generator().manual_seed(m * k)
    x = torch.randn(m, k, generator=g)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    ws, b = torch.rand(n, generator=g), torch.randn(n, generator=g)
    for mode, xs in (("dynamic", None), ("static", torch.tensor(0.01))):
        got = triton_int8.int8_linear(x, w, ws, b, mode, xs)
        want = ref.int8_linear(x, w, ws, b, mode, xs)
        err = ((got - want).norm() / want.norm()).item()
        assert err < 1e-5, (m, k, n, mode, err)
print("ok")
"""


def test_triton_kernel_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    script = TRITON_SCRIPT.format(shapes=[(1, 64, 32), (3, 100, 17), (20, 130, 70)])
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@needs_native
def test_the_kernels_as_torch_ops_give_the_ctypes_calls_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where torch_ops.cpp builds, the native calls go through torch's dispatcher; they
    give the ctypes calls' results bit for bit on odd and batched shapes (M = 1, 3; K not a
    multiple of 64; a float16 bias converted on the way), and use the kernels of the
    library loaded now."""
    if cpu.torch_ops() is None:
        pytest.skip("the torch ops could not be built here")

    def both(fn, *args):
        via_ops = fn(*args)
        assert cpu._OPS_KERNELS[0] is cpu.load_library()
        with monkeypatch.context() as mp:
            mp.setattr(cpu, "_ops", lambda: None)
            return via_ops, fn(*args)

    for m, k, n in SHAPES:
        w, ws, b = _w8(n, k, seed=k)
        x = _x(m, k, seed=m).reshape(1, m, k)
        for bias in (b, None, b.half()):
            got, want = both(cpu.int8_weight_only_native, x, w, ws, bias)
            assert got.shape == (1, m, n) and torch.equal(got, want)
            got, want = both(cpu.w8a8_linear_native, x, w, ws, bias, "dynamic", None)
            assert torch.equal(got, want)
            if cpu.native_w8a8_vnni():
                xo = x.clone()
                xo[..., :: max(1, k // 4)] *= 30  # outlier columns
                got, want = both(cpu.llm_int8_native, xo, 6.0, w, ws, bias)
                assert torch.equal(got, want)
        layer = _int4(torch.nn.Linear(k, n), 32)
        args = (layer.qweight, layer.scale, layer.zero, 32, layer.bias)
        got, want = both(cpu.int4_weight_only_native, x, *args)
        assert torch.equal(got, want)
