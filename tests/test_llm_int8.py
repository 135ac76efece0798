"""Our LLM.int8()-style decomposition: exactly W8A8 without outliers, exactly the float +
int8 split with them, more accurate than plain W8A8 on outlier inputs, and comparable in
accuracy with bitsandbytes' implementation of the same idea."""

from __future__ import annotations

import pytest
import torch

from core.kernels import ops, ref
from core.models import tiny_llama
from core.recipe import parse_recipe
from core.storage import LLMInt8Linear, W8A8Linear
from core.walk import apply_recipe, find_linears


def _layer_and_input(outliers: bool) -> tuple[torch.nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    x = torch.randn(2, 12, 256)
    if outliers:
        x[..., [5, 77, 200]] *= 60.0  # a few feature dimensions far above the threshold
    return lin, x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_without_outliers_it_is_plain_w8a8() -> None:
    lin, x = _layer_and_input(outliers=False)
    layer = LLMInt8Linear.build(lin.weight, lin.bias, threshold=6.0)
    assert layer.outlier_columns(x.reshape(-1, 256)).numel() == 0
    assert torch.equal(layer(x), W8A8Linear.build(lin.weight, lin.bias)(x))


def test_decomposition_matches_its_definition() -> None:
    lin, x = _layer_and_input(outliers=True)
    layer = LLMInt8Linear.build(lin.weight, lin.bias, threshold=6.0)
    x2 = x.reshape(-1, 256)
    cols = layer.outlier_columns(x2)
    assert set(cols.tolist()) == {5, 77, 200}
    regular = x2.clone()
    regular[:, cols] = 0
    w = layer.w_int8.float() * layer.w_scale[:, None]
    want = ref.int8_linear(regular, layer.w_int8, layer.w_scale, layer.bias, "dynamic")
    want = want + x2[:, cols] @ w[:, cols].t()
    assert _rel(layer(x).reshape(-1, 96), want) < 1e-5


@pytest.mark.parametrize("path", ["native", "int_mm", "dequant"])
@pytest.mark.parametrize(
    "shape", [(1, 100, 17), (3, 257, 40), (16, 130, 70), (37, 96, 33), (5, 300, 37, "dense")]
)
def test_every_path_computes_the_decomposition(path: str, shape: tuple) -> None:
    """Odd shapes (M = 1, 3; K not a multiple of 64) on each W8A8 path, with a few outlier
    columns or with most of them ("dense": 150 of 300, several vectors of them). With
    AVX-512 VNNI the native path sums the outlier columns inside the int8 kernel's pass
    over the weight; the other paths split them off first. All give the definition in
    float64."""
    if not ops.CPU_PATHS["int8_linear"][path].available():
        pytest.skip(f"{path} is not available here")
    m, k, n, *dense = shape
    torch.manual_seed(k)
    lin = torch.nn.Linear(k, n)
    x = torch.randn(m, k) * 2
    x[:, :: 2 if dense else max(1, k // 5)] *= 20
    layer = LLMInt8Linear.build(lin.weight, lin.bias, threshold=6.0)
    cols = layer.outlier_columns(x)
    assert 0 < cols.numel() < k
    w = layer.w_int8.double() * layer.w_scale.double()[:, None]
    regular = x.index_fill(1, cols, 0)
    want = ref.int8_linear(regular, layer.w_int8, layer.w_scale, layer.bias, "dynamic").double()
    want = want + x[:, cols].double() @ w[:, cols].t()
    with ops.use_path(path):
        got = layer(x)
    assert got.shape == (m, n) and got.dtype == x.dtype
    assert _rel(got, want) < 1e-6


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_the_native_split_of_each_instruction_set_is_exact(
    isa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The split the int_mm and AVX2 paths use (cpu.llm_int8_split) gives exactly: the
    input with its outlier columns zeroed (an infinite outlier too), their values, and
    their dequantized weight columns; None without outliers. K = 300 is not a multiple of
    16; the outliers are sparse, dense, or in the last column (the weight's last byte)."""
    from core.kernels import cpu

    if not cpu.native_available():
        pytest.skip("no native kernels here")
    if isa == "avx512" and not all(f in cpu.cpu_flags() for f in cpu.AVX512_FLAGS):
        pytest.skip("this CPU has no AVX-512")
    monkeypatch.setenv("COMPRESSLAB_NO_AVX512", "1" if isa == "avx2" else "0")
    cpu.load_library.cache_clear()
    try:
        assert cpu.native_vector_bits() == (512 if isa == "avx512" else 256)
        torch.manual_seed(1)
        m, k, n = 7, 300, 45
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        ws = torch.rand(n) * 0.01
        for outliers in ([299], [0, 17, 150, 299], list(range(1, 300, 2))):
            x = torch.randn(m, k)
            x[2, outliers] = 9.0
            x[4, outliers[-1]] = float("inf")
            xr, xo, wo = cpu.llm_int8_split(x, 6.0, w, ws)
            cols = torch.tensor(outliers)
            assert torch.equal(xr, x.index_fill(1, cols, 0))
            assert torch.equal(xo, x[:, cols])
            assert torch.equal(wo, w[:, cols].float() * ws[:, None])
        assert cpu.llm_int8_split(torch.randn(m, k), 6.0, w, ws) is None
    finally:
        cpu.load_library.cache_clear()


def test_more_accurate_than_w8a8_on_outliers_and_close_to_bitsandbytes() -> None:
    lin, x = _layer_and_input(outliers=True)
    exact = lin(x)
    ours = _rel(LLMInt8Linear.build(lin.weight, lin.bias, threshold=6.0)(x), exact)
    plain = _rel(W8A8Linear.build(lin.weight, lin.bias)(x), exact)
    # 60x outliers set every token's scale, crushing the other 253 features: the split
    # must be several times more accurate (measured ~10x; asserted 3x).
    assert ours < plain / 3, (ours, plain)
    pytest.importorskip("bitsandbytes")
    from core.storage import BnbInt8Linear

    theirs = _rel(BnbInt8Linear.build(lin.weight, lin.bias, threshold=6.0)(x), exact)
    # Same idea, bitsandbytes computes in float16: expect the same order of error.
    assert ours < 2 * theirs + 1e-3, (ours, theirs)


def test_threshold_zero_disables_the_split() -> None:
    lin, x = _layer_and_input(outliers=True)
    assert torch.equal(
        LLMInt8Linear.build(lin.weight, lin.bias, threshold=0.0)(x),
        W8A8Linear.build(lin.weight, lin.bias)(x),
    )


def test_recipe_runs_the_int8_op() -> None:
    model = tiny_llama(hidden=64, layers=2, seed=2)
    ids = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        want = model(ids).logits
    apply_recipe(
        model, parse_recipe("llm-int8"), on_progress=lambda f, m: None, should_cancel=lambda: False
    )
    layers = [m for m in find_linears(model).values() if isinstance(m, LLMInt8Linear)]
    assert len(layers) == 14  # 7 per block; lm_head is ignored by default
    ops.reset_path_log()
    with torch.no_grad():
        got = model(ids).logits
    assert _rel(got, want) < 0.05
    assert {r["op"] for r in ops.path_log()} == {"int8_linear"}
    p, q = want.log_softmax(-1), got.log_softmax(-1)
    assert (p.exp() * (p - q)).sum(-1).mean() < 0.01  # KL(float || int8) per token, nats


def test_decode_batches_take_one_native_call_where_vnni_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up to LLM_INT8_FUSED_MAX_M rows the fused VNNI call runs whatever path the W8A8
    table picked (the torch decomposition's extra ops cost more on small layers), and it
    gives the split computation's result; larger batches follow the table."""
    from core.kernels import cpu

    if not cpu.native_w8a8_vnni():
        pytest.skip("no AVX-512 VNNI here")
    lin, x = _layer_and_input(outliers=True)
    layer = LLMInt8Linear.build(lin.weight, lin.bias, threshold=6.0)
    calls: list[int] = []
    fused = cpu.llm_int8_native
    monkeypatch.setattr(
        cpu, "llm_int8_native", lambda x2, *a: calls.append(len(x2)) or fused(x2, *a)
    )
    monkeypatch.setattr(ops, "choose_cpu_path_and_source", lambda *a: ("int_mm", "measured"))
    monkeypatch.setattr(ops, "verify_enabled", lambda: False)
    ops.forget_choices()
    small = x[0, :3]
    got = layer(small)
    with ops.use_path("int_mm"):  # forced: the split decomposition on _int_mm
        want = layer(small)
    assert calls == [3]
    assert _rel(got, want) < 1e-6
    layer(x.reshape(1, 24, 256).expand(2, 24, 256))  # 48 rows: the table's int_mm
    assert calls == [3]
    ops.forget_choices()
