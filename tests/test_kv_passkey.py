"""The passkey probe (core/kv/passkey): the key is planted where asked, the bundled
long-context model finds it through the full cache, and a cache that evicted the line
loses it (what perplexity alone would not show)."""

from __future__ import annotations

import pytest
import torch

from core.data import get_text_set
from core.kv import passkey
from core.kv.cache import KVSpec
from core.models import load_model


@pytest.fixture(scope="module")
def long_model():
    return load_model("demo-long")


@pytest.fixture(scope="module")
def filler(long_model) -> torch.Tensor:
    text = get_text_set("stdlib-heldout").text[:20_000]
    return passkey.encode(long_model.tokenizer, text)[:700]


def test_the_key_line_sits_at_the_asked_depth_and_the_question_last(long_model, filler):
    tok = long_model.tokenizer
    plant = passkey.encode(tok, passkey.PLANT.format(key="12345"))
    question = passkey.encode(tok, passkey.QUESTION)
    for depth in passkey.DEPTHS:
        probe = passkey.make_probe(tok, filler, depth, seed=3, bos=0)
        ids = probe.context.tolist()
        assert ids[0] == 0 and ids[-len(question) :] == question.tolist()
        key_line = passkey.encode(tok, passkey.PLANT.format(key=probe.key)).tolist()
        at = next(i for i in range(len(ids)) if ids[i : i + len(key_line)] == key_line)
        assert at == 1 + round(depth * len(filler))
        assert len(ids) == 1 + len(filler) + len(plant) + len(question)
        assert tok.decode(probe.answer) == probe.key + '"'


def test_the_long_context_model_finds_the_key_through_the_full_cache(long_model, filler):
    """Three keys at each depth: the greedy answer spells the key for at least two of
    each three and eight of all nine (measured: three of three at 10% and 90%, two of
    three at 50%), and the answer costs far less than guessing (a 5-digit key drawn
    uniformly is 11.4 nats)."""
    runs = {
        (depth, seed): passkey.run_probe(
            long_model.model,
            passkey.make_probe(long_model.tokenizer, filler, depth, seed, 0),
            KVSpec(),
        )
        for depth in passkey.DEPTHS
        for seed in range(3)
    }
    found = {k: r["found"] for k, r in runs.items()}
    assert sum(found.values()) >= 8, found
    for depth in passkey.DEPTHS:
        assert sum(found[depth, s] for s in range(3)) >= 2, found
    mean_nll = sum(r["answer_nll"] for r in runs.values()) / len(runs)
    assert mean_nll < 2.0, mean_nll


def test_a_window_that_evicted_the_key_line_loses_it(long_model, filler):
    """A recent window of 64 tokens (plus 4 sinks) no longer holds a line planted at 10%
    of a 700-token context: the key is not found, and its answer costs more nats."""
    probe = passkey.make_probe(long_model.tokenizer, filler, 0.1, seed=0, bos=0)
    full = passkey.run_probe(long_model.model, probe, KVSpec())
    window = passkey.run_probe(long_model.model, probe, KVSpec(sinks=4, window=64))
    assert full["found"] and not window["found"]
    assert window["answer_nll"] > full["answer_nll"] + 2.0
