"""demo-long's training mixture (core/zoo/train_long.py): planted passkeys and the loss
weights on their answers."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from core.kv import passkey
from core.zoo import train_long as tl


def test_passkey_windows_keep_their_length_and_weight_exactly_the_key() -> None:
    tok = PreTrainedTokenizerFast.from_pretrained(tl.LONG_MODEL_DIR)
    cfg = tl.LongConfig(ctx=128, batch_size=4, passkey_fraction=1.0, answer_weight=7.0)
    tokens = torch.randint(5, 4000, (10_000,), generator=torch.Generator().manual_seed(0))
    batch, weights = next(tl.long_batches(tokens, cfg, 0, tok))
    assert batch.shape == weights.shape == (4, 128)
    assert (batch[:, 0] == 0).all()  # the start token first
    for row, w in zip(batch, weights, strict=True):
        text = tok.decode(row[1:])
        key = text.rsplit(passkey.QUESTION, 1)[1].split('"')[0]
        assert passkey.PLANT.format(key=key) in text  # the line the question asks about
        weighted = (w == 7.0).nonzero().flatten()
        assert tok.decode(row[weighted]) == key
        assert ((w == 1.0) | (w == 7.0)).all()


def test_weighted_loss_is_the_plain_mean_when_every_weight_is_one() -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    batch = torch.randint(0, 64, (2, 12))
    ones = torch.ones(2, 12)
    plain = model(input_ids=batch, labels=batch).loss
    assert torch.allclose(tl.weighted_loss(model, batch, ones), plain)
    heavy = ones.clone()
    heavy[:, -3:] = 10.0  # the weighted mean moves toward the last tokens' losses
    logits = model(input_ids=batch).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 64), batch[:, 1:].reshape(-1), reduction="none"
    ).view(2, 11)
    want = (ce * heavy[:, 1:]).sum() / heavy[:, 1:].sum()
    assert torch.allclose(tl.weighted_loss(model, batch, heavy), want)
