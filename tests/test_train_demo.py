"""The demo model's training script is seeded: the same inputs give the same tokenizer and
the same weights (checked on a miniature configuration; the tests never retrain the
bundled model)."""

from __future__ import annotations

import torch

from core.data import get_text_set
from core.zoo.train_demo import DemoConfig, build_model, encode, train, train_tokenizer

MINI = DemoConfig(
    vocab_size=400,
    hidden_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=64,
    ctx=32,
    batch_size=2,
    steps=4,
    warmup_steps=1,
)


def _train_once(text: str) -> tuple[dict[str, int], dict[str, torch.Tensor], dict]:
    torch.set_num_threads(MINI.threads)
    tok = train_tokenizer(text, MINI.vocab_size)
    model = build_model(MINI, tok)
    report = train(model, encode(tok, text), MINI)
    return tok.get_vocab(), {k: v.clone() for k, v in model.state_dict().items()}, report


def test_training_is_reproducible_from_its_seed() -> None:
    text = get_text_set("stdlib-code").text[:100_000]
    threads = torch.get_num_threads()
    try:
        vocab1, weights1, report1 = _train_once(text)
        vocab2, weights2, report2 = _train_once(text)
    finally:
        torch.set_num_threads(threads)
    assert vocab1 == vocab2 and len(vocab1) == MINI.vocab_size
    assert weights1.keys() == weights2.keys()
    assert all(torch.equal(weights1[k], weights2[k]) for k in weights1)
    assert report1["steps"] == report2["steps"] == MINI.steps
    assert report1["final_loss_nats"] == report2["final_loss_nats"]
