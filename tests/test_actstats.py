"""Activation statistics: the running fold, collection over a tiny Llama through hooks that
leave no trace, a planted outlier channel, SmoothQuant's reshaping, and the pipeline's rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.actstats import (
    ActStats,
    collect_activation_stats,
    difficulty,
    smoothed_ranges,
    summarize,
    update_act_stats,
)
from core.calib import CalibSettings
from core.data import get_text_set
from core.errors import Cancelled
from core.metrics import EvalSettings
from core.models import tiny_llama
from core.quant.smoothquant import smoothing_scales
from core.recipe import parse_recipe
from runs.pipeline import run_job
from runs.spec import JobSpec


def _batches(n: int = 3, seq: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (1, seq), generator=g) for _ in range(n)]


def test_fold_keeps_channel_maxima_and_counts_values_above_threshold() -> None:
    a = torch.tensor([[1.0, -7.0, 0.5], [2.0, 0.1, -0.2]])
    b = torch.tensor([[[-3.0, 6.5, 0.0]]])  # (batch, seq, in): any leading shape
    s = update_act_stats(update_act_stats(ActStats(), a), b)
    assert s.channel_absmax.tolist() == [3.0, 7.0, 0.5]
    assert (s.n_values, s.n_tokens, s.n_above) == (9, 3, 2)  # |-7| and 6.5 exceed 6.0
    out = summarize(s)
    assert out["channel_absmax"] == [3.0, 7.0, 0.5] and out["absmax"] == 7.0
    assert out["top_channels"][0] == 1 and out["channels_above"] == 1
    assert out["frac_above"] == pytest.approx(2 / 9)
    assert summarize(ActStats()) == {}


def test_collect_over_a_tiny_llama_leaves_the_model_untouched() -> None:
    model = tiny_llama(layers=2)
    ids = _batches(1)[0]
    ref = model(ids).logits
    acts = collect_activation_stats(model, _batches())
    assert torch.equal(model(ids).logits, ref)
    assert all(not m._forward_pre_hooks for m in model.modules())
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert set(acts) == set(names)
    for name, mod in model.named_modules():
        if name in acts:
            assert len(acts[name]["channel_absmax"]) == mod.in_features
            assert acts[name]["n_tokens"] == 3 * 16
    # q, k and v read the same normed hidden state: identical statistics.
    q, k = acts["model.layers.0.self_attn.q_proj"], acts["model.layers.0.self_attn.k_proj"]
    assert q["channel_absmax"] == k["channel_absmax"]


def test_a_planted_outlier_channel_is_found() -> None:
    model = tiny_llama(layers=1)
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[5] = 400.0  # hidden dim 5 explodes
    acts = collect_activation_stats(model, _batches(), threshold=6.0)
    q = acts["model.layers.0.self_attn.q_proj"]
    assert q["top_channels"][0] == 5
    assert q["n_above"] > 0 and q["channels_above"] >= 1
    assert q["max_over_median"] > 20
    gate = acts["model.layers.0.mlp.gate_proj"]  # read after a different norm: unaffected
    assert gate["top_channels"][0] != 5 or gate["max_over_median"] < q["max_over_median"]


def test_collect_checks_cancel_between_batches() -> None:
    model = tiny_llama(layers=1)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        collect_activation_stats(model, _batches(), should_cancel=cancel)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_smoothed_ranges_reuse_smoothquant_scales() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 6, generator=g) * 0.05
    act = torch.tensor([0.5, 20.0, 1.0, 0.8, 3.0, 0.6])
    sm = smoothed_ranges(act.tolist(), W.abs().amax(dim=0).tolist(), 0.5)
    assert torch.allclose(sm.scale, smoothing_scales(act, W, 0.5))
    # X' W'^T = X W^T: the products of the maxima do not move; at alpha 0.5 they split evenly.
    assert torch.allclose(sm.act_after * sm.weight_after, act * sm.weight_before, rtol=1e-5)
    assert torch.allclose(sm.act_after, sm.weight_after, rtol=1e-5)
    spreads = [difficulty(smoothed_ranges(act, sm.weight_before, a).act_after) for a in (0, 0.5, 1)]
    assert spreads[0] > spreads[1] > spreads[2]  # more alpha: flatter activations
    with pytest.raises(ValueError):
        smoothed_ranges([1.0, 2.0], [1.0], 0.5)


def test_pipeline_rows_carry_activation_statistics(tmp_path: Path) -> None:
    recipe = parse_recipe("rtn-int8")
    spec = JobSpec(
        model="tiny-random",
        recipe=recipe.to_list(),
        recipe_name=recipe.name,
        eval=EvalSettings(ctx=64, eval_tokens=256, prompt_len=16, decode_tokens=2, repeats=1),
        calib_settings=CalibSettings(n_samples=2, seq_len=32),
    )
    res = run_job(spec, cache_dir=tmp_path, resolve_text=get_text_set)
    rows = {r["name"]: r for r in res.layers}
    q = rows["model.layers.0.self_attn.q_proj"]
    assert len(q["act"]["channel_absmax"]) == 64 and q["act"]["n_tokens"] == 64
    assert rows["lm_head"]["act"]["n_tokens"] == 64  # outside the blocks, seen all the same
