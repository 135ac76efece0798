"""Compression at scale (issue 20) keeps the numbers of the one-at-a-time code: GPTQ's
stacked q/k/v (gate/up) sweep gives the codes of one sweep per linear, and the layer
Hessian does not depend on how calibration windows are batched through a block.

What moved the demo model's GPTQ 4-bit perplexity in 0759156 (42.5014 -> 42.5954 with
2 threads, 42.5403 -> 42.5276 with 1) was the second: H folded 16 windows at once was
rescaled once instead of 16 times, a float-rounding difference that flips codes on
rounding boundaries. The stacked sweep changed nothing (same perplexity to the last bit
with the batching undone). update_hessian now folds window by window, and the demo
perplexity is the pre-0759156 one bit for bit at 1 and at 2 threads.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import core.walk as walk
from core.methods.gptq import GPTQ
from core.models import tiny_llama
from core.onload import release_file_pages
from core.quant.gptq import gptq_quantize
from core.quant.hessian import init_hessian, update_hessian
from core.quant.rtn import QuantSpec
from core.recipe import recipe_from_steps
from core.storage import AffineLinear
from core.walk import apply_recipe

CALIB = [
    torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(6)
]


def _codes(steps: list[dict]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    model = tiny_llama(hidden=128, layers=2)
    apply_recipe(
        model,
        recipe_from_steps(steps),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=CALIB,
    )
    return {
        n: (m.qweight.clone(), m.scale.clone())
        for n, m in model.named_modules()
        if isinstance(m, AffineLinear)
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) == 14  # 7 linears per block
    for name in a:
        assert torch.equal(a[name][0], b[name][0]), name
        assert torch.equal(a[name][1], b[name][1]), name


def test_hessian_of_batched_windows_is_the_window_by_window_one() -> None:
    x = torch.randn(16, 64, 48, generator=torch.Generator().manual_seed(0))
    one_by_one = init_hessian(48)
    for w in x:
        update_hessian(one_by_one, w.unsqueeze(0))
    batched = update_hessian(update_hessian(init_hessian(48), x[:10]), x[10:])
    assert batched.n == one_by_one.n == 16 * 64
    assert torch.equal(batched.H, one_by_one.H)  # bit for bit, not approximately
    flat = update_hessian(init_hessian(48), x.reshape(-1, 48))  # rows, no windows: one fold
    assert torch.allclose(flat.H, one_by_one.H, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sym", [True, False])
def test_stacked_sweep_gives_each_linears_own_codes(sym: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(512, 96, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, 96)
    H = 2 * X.T @ X / X.shape[0]
    parts = [torch.randn(n, 96, generator=gen, dtype=torch.float64) for n in (64, 32, 32)]
    spec = QuantSpec(bits=4, symmetric=sym, granularity="group", group_size=32)
    stacked = gptq_quantize(torch.cat(parts), H, spec, block_size=16)
    alone = [gptq_quantize(p, H, spec, block_size=16) for p in parts]
    assert torch.equal(stacked.q, torch.cat([a.q for a in alone]))
    assert torch.equal(stacked.scale, torch.cat([a.scale for a in alone]))


def test_walker_stacked_sweep_and_batched_windows_keep_the_one_at_a_time_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = [{"method": "gptq", "bits": 4, "group_size": 32}]
    stacked_batched = _codes(steps)  # q/k/v and gate/up in one sweep, 6 windows per forward
    monkeypatch.setattr(walk, "CALIB_BATCH_TOKENS", 0)  # one window per forward
    monkeypatch.setattr(walk, "ONE_PASS_ACTIVATION_BYTES", 0)
    stacked = GPTQ.apply_group

    def one_sweep_each(self: GPTQ, layers: dict, stats: object, cfg: object) -> dict:
        return {n: stacked(self, {n: m}, stats, cfg)[n] for n, m in layers.items()}

    monkeypatch.setattr(GPTQ, "apply_group", one_sweep_each)
    one_at_a_time = _codes(steps)
    _assert_same(stacked_batched, one_at_a_time)


def _compressed(
    steps: list[dict], calib: list[torch.Tensor] = CALIB
) -> tuple[torch.nn.Module, list, int]:
    """The tiny model compressed, its layer reports, and how many times a block ran."""
    model = tiny_llama(hidden=128, layers=2)
    runs = [0]
    for block in model.model.layers:
        block.register_forward_pre_hook(lambda _m, _a: runs.__setitem__(0, runs[0] + 1))
    reports = apply_recipe(
        model,
        recipe_from_steps(steps),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=calib,
    )
    return model, [(r.name, r.rel_error) for r in reports], runs[0]


def _assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []


@pytest.mark.parametrize(
    "steps",
    [
        [{"method": "gptq", "bits": 4, "group_size": 32}],
        [{"method": "gptq", "bits": 3, "group_size": None, "symmetric": False}],
        [{"method": "sparsegpt", "sparsity": 0.5, "true_sequential": True}],
    ],
)
def test_one_pass_block_compression_is_the_group_by_group_one(
    monkeypatch: pytest.MonkeyPatch, steps: list[dict]
) -> None:
    """All calibration windows in one batch: each block is compressed in ONE forward (the
    groups compressed as the forward reaches them) and gives, bit for bit, the layers,
    layer errors and outputs of one forward per input group plus one for the outputs."""
    one_pass, one_reports, one_runs = _compressed(steps)

    def group_by_group(model, method, step, block, inputs, layers, groups, ctx):
        walk._compress_block_sequential(model, method, step, block, inputs, layers, ctx)
        return None  # the walk runs the block once more for its outputs

    monkeypatch.setattr(walk, "_compress_block_one_pass", group_by_group)
    grouped, grouped_reports, grouped_runs = _compressed(steps)
    _assert_same_model(one_pass, grouped)
    assert one_reports == grouped_reports and len(one_reports) == 14
    # block 0's inputs captured, its groups found, one run to compress it; block 1 reuses
    # the groups. Group by group (after the walk found block 0's groups): groups found,
    # q/k/v, o, gate/up, down, outputs, per block.
    assert (one_runs, grouped_runs) == (1 + 2 + 1, 1 + 1 + 2 * (1 + 4 + 1))


def test_the_default_calibration_set_is_one_pass_when_its_activations_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """32 windows of 256 tokens (the default set, 8192 tokens, two batches of
    CALIB_BATCH_TOKENS) go through a block together for GPTQ: their activations fit
    ONE_PASS_ACTIVATION_BYTES at this width. With less room, one forward per group."""
    gen = torch.Generator().manual_seed(5)
    default = [torch.randint(0, 256, (1, 256), generator=gen) for _ in range(32)]
    steps = [{"method": "gptq", "bits": 4, "group_size": 32}]
    assert sum(w.numel() for w in default) > walk.CALIB_BATCH_TOKENS
    assert _compressed(steps, default)[2] == 1 + 2 + 1  # captured, groups, block 0, block 1
    monkeypatch.setattr(walk, "ONE_PASS_ACTIVATION_BYTES", 1 << 20)
    # two batches: both captured; per block groups found, each group's forward and the
    # outputs run once per batch
    assert _compressed(steps, default)[2] == 2 + 2 * (1 + 2 * 4 + 2)


def test_a_wrong_guess_of_the_input_groups_costs_time_not_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every linear of a block guessed to read one input: q/k/v are compressed together as
    guessed, the others find their input is another and are calibrated on their own."""
    steps = [{"method": "gptq", "bits": 4, "group_size": 32}]
    right, right_reports, _ = _compressed(steps)
    monkeypatch.setattr(walk, "input_groups", lambda block, inputs, layers, **kw: [list(layers)])
    wrong, wrong_reports, _ = _compressed(steps)
    _assert_same_model(right, wrong)
    assert dict(right_reports) == dict(wrong_reports)


def test_input_groups_found_on_one_window_are_the_whole_batchs() -> None:
    model = tiny_llama(hidden=128, layers=1)
    block = model.model.layers[0]
    inputs = walk.capture_block_inputs(
        model, model.model.layers, walk.stack_windows(CALIB, walk.CALIB_BATCH_TOKENS)
    )
    assert len(inputs.args) == 1 and inputs.hidden(0).shape[0] == len(CALIB)
    layers = walk.find_linears(block)
    seen: list[int] = []
    block.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args or (kwargs["hidden_states"],))[0].shape[0]),
        with_kwargs=True,
    )
    one = walk.input_groups(block, inputs, layers, one_window=True)
    whole = walk.input_groups(block, inputs, layers)
    assert (
        one
        == whole
        == [
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            ["self_attn.o_proj"],
            ["mlp.gate_proj", "mlp.up_proj"],
            ["mlp.down_proj"],
        ]
    )
    assert seen == [1, len(CALIB)]  # the guess ran one window, not the batch


def _rss_file() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile")


def _from_file(folder: Path) -> torch.nn.Module:
    """tiny Llama saved and loaded back: its weights memory-mapped from the file (written
    out first: the kernel drops clean pages only)."""
    from transformers import AutoModelForCausalLM

    tiny_llama(hidden=256, layers=2).save_pretrained(folder, safe_serialization=True)
    for f in folder.glob("*.safetensors"):
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="Linux memory maps")
def test_file_mapped_weights_leave_the_resident_set_and_read_back_unchanged(tmp_path) -> None:
    model = _from_file(tmp_path)
    weights = [p for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2]
    total = sum(p.numel() * p.element_size() for p in weights)
    sums = [p.double().sum().item() for p in weights]  # every page read: resident now
    before = _rss_file()
    advised = release_file_pages(weights)
    assert advised > 0.9 * total  # all but the partial pages at the tensors' ends
    assert before - _rss_file() > 0.8 * advised  # gone from this process's resident set
    assert [p.double().sum().item() for p in weights] == sums  # read back from the file
    anon = torch.randn(1 << 20)
    assert release_file_pages([anon, torch.empty(0)]) == 0  # not file-backed: left alone


def test_walker_gives_back_the_float_weights_it_replaced(tmp_path) -> None:
    model = _from_file(tmp_path)
    weights = [p for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2]
    for p in weights:
        p.sum()
    before = _rss_file()
    apply_recipe(
        model,
        recipe_from_steps([{"method": "gptq", "bits": 4, "group_size": 64}]),
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=CALIB,
    )
    total = sum(p.numel() * p.element_size() for p in weights)
    assert before - _rss_file() > 0.7 * total
