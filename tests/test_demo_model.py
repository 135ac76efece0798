"""The bundled demo model: loads offline, is a GQA Llama, and is really trained."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from core.data import get_text_set
from core.zoo import DEMO_EVAL_FILE, DEMO_MODEL_DIR
from core.zoo.train_demo import GENERATION_PROMPT, greedy_sample, heldout_eval

MAX_WEIGHT_BYTES = 10_000_000


@pytest.fixture(scope="module")
def no_network() -> Iterator[None]:
    """Offline as the product must be: env flags set and sockets refusing to connect."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access in a test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def model(no_network: None) -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR).eval()


@pytest.fixture(scope="module")
def tokenizer(no_network: None) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(DEMO_EVAL_FILE.read_text())


def test_files_and_size() -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (DEMO_MODEL_DIR / name).is_file(), name
    assert (DEMO_MODEL_DIR / "model.safetensors").stat().st_size <= MAX_WEIGHT_BYTES


def test_is_llama_with_gqa(model: LlamaForCausalLM) -> None:
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert model.dtype == torch.float32
    # every linear input width divides into groups of 128 for group-wise quantization
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.in_features % 128 == 0 for m in linears)


def test_tokenizer_round_trip(tokenizer: PreTrainedTokenizerBase) -> None:
    text = 'def f(x):\n    """Ünïcode — ok."""\n    return x  # done\n'
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert len(tokenizer(GENERATION_PROMPT)["input_ids"]) == 1  # "def " is one token


def test_heldout_perplexity_matches_record(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    recorded: dict,
) -> None:
    heldout = get_text_set("stdlib-heldout")
    if heldout.sha256 != recorded["heldout_sha256"]:
        pytest.skip(
            f"held-out text differs from the recorded one (Python {recorded['python']}); "
            "its figures do not apply to this interpreter's standard library"
        )
    budget = recorded["test_budget"]
    assert budget["ctx"] == budget["stride"]
    got = heldout_eval(
        model, tokenizer, heldout.text, ctx=budget["ctx"], eval_tokens=budget["eval_tokens"]
    )
    want = budget["trained"]
    assert got["perplexity"] == pytest.approx(want["perplexity"], rel=0.02)
    assert got["bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=0.02)
    assert got["predicted_bytes"] == want["predicted_bytes"]
    # really trained: far below the same architecture untrained
    assert got["perplexity"] < budget["untrained"]["perplexity"] / 20
    assert recorded["trained"]["perplexity"] < recorded["untrained"]["perplexity"] / 20


def test_greedy_generation_looks_like_python(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase
) -> None:
    text = greedy_sample(model, tokenizer, GENERATION_PROMPT, max_new_tokens=12)
    assert text.startswith(GENERATION_PROMPT)
    continuation = text[len(GENERATION_PROMPT) :]
    assert re.match(r"[A-Za-z_][A-Za-z0-9_]*\(", continuation), continuation


def test_card_states_the_recorded_figures(recorded: dict) -> None:
    card = (DEMO_MODEL_DIR / "README.md").read_text()
    for which in ("trained", "untrained"):
        assert f"{recorded[which]['perplexity']:.2f}" in card
        assert f"{recorded[which]['bits_per_byte']:.4f}" in card
    assert "python -m core.zoo.train_demo" in card
    assert recorded["python"] in card
