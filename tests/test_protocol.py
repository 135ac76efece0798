"""The reference protocol: calibration windows drawn exactly as IST-DASLab/gptq and
locuslab/wanda draw them, evaluation text with the tokenizer's BOS; the default
protocol as it was."""

from __future__ import annotations

import copy
import hashlib
import random

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from core.calib import CalibSettings, calibration_batches
from core.data import get_text_set
from core.metrics import EvalSettings, eval_windows
from core.models import load_model
from core.registry import ConfigError
from runs import catalogue as cat
from runs.baseline_cache import baseline_key
from runs.spec import JobSpec, build_spec


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture(scope="module")
def bos_tokenizer(demo):
    """The demo tokenizer made to add BOS as Llama's does (the demo's adds nothing)."""
    tok = copy.deepcopy(demo.tokenizer)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)]
    )
    assert tok("x").input_ids[0] == tok.bos_token_id
    return tok


@pytest.fixture(scope="module")
def text() -> str:
    return get_text_set("stdlib-heldout").text[:60_000]


def _gptq_draw(tokenizer, text: str, nsamples: int, seed: int, seqlen: int) -> list:
    """The loop of gptq's datautils.get_wikitext2 (and wanda's lib/data.py), written out."""
    trainenc = tokenizer(text, return_tensors="pt")
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        i = random.randint(0, trainenc.input_ids.shape[1] - seqlen - 1)
        out.append(trainenc.input_ids[:, i : i + seqlen])
    return out


@pytest.mark.parametrize("seed", [0, 7])
def test_reference_windows_are_the_gptq_draw(bos_tokenizer, text: str, seed: int) -> None:
    cs = CalibSettings(n_samples=12, seq_len=64, seed=seed)
    state = random.getstate()
    ours = calibration_batches(bos_tokenizer, text, cs, "reference")
    assert random.getstate() == state  # no global random state touched
    theirs = _gptq_draw(bos_tokenizer, text, 12, seed, 64)
    assert len(ours) == 12
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def test_reference_eval_has_bos_and_whole_windows(bos_tokenizer, text: str) -> None:
    ev = EvalSettings(ctx=64, eval_tokens=300)
    ref = eval_windows(bos_tokenizer, text, ev, "reference")
    assert ref[0][0].item() == bos_tokenizer.bos_token_id
    assert [w.numel() for w in ref] == [64] * 4  # 300 tokens: 4 whole windows, no rest
    expected = bos_tokenizer(text[:20_000], return_tensors="pt").input_ids[0][:256]
    assert torch.equal(torch.cat(ref), expected)
    default = eval_windows(bos_tokenizer, text, ev)
    assert default[0][0].item() != bos_tokenizer.bos_token_id
    assert [w.numel() for w in default] == [64, 64, 64, 64, 44]


def test_default_protocol_is_unchanged(demo, text: str) -> None:
    """The default draws what it always drew: a torch generator over a prefix, no BOS."""
    tok = demo.tokenizer
    cs = CalibSettings(n_samples=5, seq_len=32, seed=3)
    ids = tok(text[: 5 * 32 * 8 * 6], add_special_tokens=False, return_tensors="pt").input_ids[0]
    gen = torch.Generator().manual_seed(3)
    starts = torch.randint(0, ids.numel() - 32, (5,), generator=gen).tolist()
    got = calibration_batches(tok, text, cs)
    assert [g.squeeze(0).tolist() for g in got] == [ids[s : s + 32].tolist() for s in starts]
    ev = EvalSettings(ctx=64, eval_tokens=200)
    flat = torch.cat(eval_windows(tok, text, ev))
    assert flat.tolist() == tok(text[:4000], add_special_tokens=False).input_ids[:200]


def test_baseline_cache_key_of_the_default_is_unchanged(demo) -> None:
    ts = get_text_set("stdlib-heldout")
    ev = EvalSettings()
    raw = f"{demo.model_id}|{demo.revision}|{ts.sha256}|{ev.ctx}|{ev.eval_tokens}"
    old = hashlib.sha256(raw.encode()).hexdigest()[:20]
    assert baseline_key(demo, ts, ev) == old
    assert baseline_key(demo, ts, ev, "reference") != old


def test_the_spec_records_the_protocol_and_refuses_unknown_ones() -> None:
    spec, _ = build_spec("demo", [{"method": "rtn"}], text_exists=lambda n: True)
    assert spec.protocol == "default"
    ref, _ = build_spec(
        "demo", [{"method": "rtn"}], text_exists=lambda n: True, protocol="reference"
    )
    assert JobSpec.from_json(ref.to_json()).protocol == "reference"
    with pytest.raises(ConfigError, match="allowed: default, reference"):
        build_spec("demo", [{"method": "rtn"}], text_exists=lambda n: True, protocol="gptq")
    assert set(cat.PROTOCOLS) == {"default", "reference"}
