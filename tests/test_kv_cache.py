"""KV-cache policies (core/kv) against straightforward references on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from core.kv.cache import KVSpec, PolicyCache, PolicyLayer, keep_indices, model_rope, rotate
from core.kv.quant import analytic_bytes_per_token, dequantize, quantize_fp8, quantize_int
from core.kv.stream import by_bucket, compare, decode_stream, one_pass
from core.models import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random").model


@pytest.fixture(scope="module")
def stream_ids(tiny):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, tiny.config.vocab_size, (72,), generator=g)


def test_plain_cache_stream_equals_one_pass(tiny, stream_ids):
    """Same tokens, same definition: decoding through the plain cache one token at a
    time gives the one-pass perplexity."""
    s = decode_stream(tiny, stream_ids, KVSpec(), prefix=8)
    o = one_pass(tiny, stream_ids, 8)
    assert torch.equal(s.positions, o.positions)
    assert math.isclose(s.perplexity, o.perplexity, rel_tol=1e-5)
    assert torch.allclose(s.nll, o.nll, atol=1e-4)


def test_window_larger_than_stream_is_the_plain_cache(tiny, stream_ids):
    """With nothing to evict, storing keys before rotation and re-rotating them by slot
    changes nothing (slot = position)."""
    plain = decode_stream(tiny, stream_ids, KVSpec(), prefix=8)
    big = decode_stream(tiny, stream_ids, KVSpec(sinks=4, window=500), prefix=8)
    assert compare(plain, big)["kl"] < 1e-8
    assert torch.equal(plain.top1, big.top1)


def _origins(cache: PolicyCache) -> list[int]:
    layer = cache.layers[0]
    assert isinstance(layer, PolicyLayer) and layer.origin is not None
    return layer.origin[0, 0].tolist()


@torch.no_grad()
def test_sinks_and_window_keep_the_first_and_last_tokens(tiny, stream_ids):
    spec = KVSpec(sinks=3, window=10)
    cache = PolicyCache(spec, tiny.config.num_hidden_layers, model_rope(tiny))
    n = 40
    for t in range(n):
        tiny(input_ids=stream_ids[None, t : t + 1], past_key_values=cache, use_cache=True)
        cache.after_step()
    assert cache.get_seq_length() == 13
    assert _origins(cache) == [0, 1, 2] + list(range(n - 10, n))


def test_kept_keys_are_rotated_by_their_slot():
    """A key stored before rotation comes back rotated at its slot in the cache, not at
    the position it arrived at (StreamingLLM's positions within the cache)."""
    d = 8
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))

    def rope(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ang = pos.float()[:, None] * inv[None, :]
        emb = torch.cat([ang, ang], dim=-1)
        return emb.cos(), emb.sin()

    raw = torch.randn(1, 1, 6, d)
    layer = PolicyLayer(KVSpec(sinks=1, window=2), rope)
    for t in range(6):  # each key arrives rotated at its stream position, as in the model
        cos, sin = rope(torch.tensor([layer.length]))
        layer.update(rotate(raw[:, :, t : t + 1], cos, sin), raw[:, :, t : t + 1])
        layer.evict()
    assert layer.origin is not None and layer.origin[0, 0].tolist() == [0, 4, 5]
    keys, values = layer.update(torch.zeros(1, 1, 0, d), torch.zeros(1, 1, 0, d))
    cos, sin = rope(torch.arange(3))
    want = rotate(raw[:, :, [0, 4, 5]], cos, sin)
    assert torch.allclose(keys, want, atol=1e-5)
    assert torch.equal(values, raw[:, :, [0, 4, 5]])


def test_h2o_keeps_recent_and_top_scored_per_head():
    scores = torch.tensor([[[5.0, 1, 9, 2, 8, 0, 0], [0.0, 7, 1, 6, 2, 0, 0]]])  # (1, 2, 7)
    keys = torch.zeros(1, 2, 7, 4)
    idx = keep_indices(KVSpec(window=2, heavy=2), 7, scores, keys)
    assert idx is not None
    # brute force: per head, the 2 largest scores among slots 0..4, plus slots 5, 6
    for h in range(2):
        top = sorted(scores[0, h, :5].topk(2).indices.tolist())
        assert idx[0, h].tolist() == sorted(top + [5, 6])


@torch.no_grad()
def test_h2o_runs_on_eager_attention_and_stays_in_budget(tiny, stream_ids):
    tiny.config._attn_implementation = "eager"
    try:
        s = decode_stream(tiny, stream_ids, KVSpec(window=6, heavy=6), prefix=8)
    finally:
        tiny.config._attn_implementation = "sdpa"
    assert s.end_tokens == 12
    with pytest.raises(ValueError, match="attention"):
        PolicyCache(KVSpec(window=6, heavy=6), 2, model_rope(tiny)).after_step(None)


@pytest.mark.parametrize(("bits", "bound"), [(8, 0.01), (4, 0.12), (2, 0.6)])
def test_per_token_codes_within_stated_error(bits, bound):
    """Relative error of per-token asymmetric codes on Gaussian keys: under 1% at 8 bits,
    12% at 4 bits, 60% at 2 bits (the statement in the method card's terms)."""
    x = torch.randn(2, 4, 64, 32)
    c = quantize_int(x, bits, dim=-1)
    err = (dequantize(c, torch.float32) - x).norm() / x.norm()
    assert err < bound
    assert c.data.dtype == torch.uint8 and c.data.shape[-1] == 32 * bits // 8  # really packed


def test_per_channel_keys_beat_per_token_with_an_outlier_channel():
    """KIVI's argument: an outlier channel spoils every per-token scale, not per-channel."""
    x = torch.randn(1, 2, 64, 32)
    x[..., 3] *= 40.0
    tok = quantize_int(x, 2, dim=-1)
    chan = quantize_int(x, 2, dim=-2)
    e_tok = (dequantize(tok, torch.float32) - x)[..., 4:].norm()
    e_chan = (dequantize(chan, torch.float32) - x)[..., 4:].norm()
    assert e_chan < 0.5 * e_tok


def test_fp8_codes_per_token():
    x = torch.randn(1, 2, 16, 32)
    c = quantize_fp8(x, "e4m3")
    assert c.data.dtype == torch.float8_e4m3fn and c.zero is None
    assert (dequantize(c, torch.float32) - x).norm() / x.norm() < 0.05


@pytest.mark.parametrize(
    ("spec", "key_group"),
    [
        (KVSpec(), None),
        (KVSpec(bits=4, key_axis="token"), None),
        (KVSpec(bits=2, key_axis="channel"), 32),
        (KVSpec(bits=8, fp8="e5m2", key_axis="token"), None),
    ],
)
def test_measured_bytes_match_the_formula(tiny, spec, key_group):
    """The stored tensors' bytes per token equal the analytic figure (per-channel keys:
    once the stream is a whole number of blocks, so no residual is held)."""
    ids = torch.randint(0, tiny.config.vocab_size, (65,))
    s = decode_stream(tiny, ids, spec, prefix=8)
    assert s.end_tokens == 64
    cfg = tiny.config
    want = analytic_bytes_per_token(
        n_layers=cfg.num_hidden_layers,
        kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        bits=spec.bits,
        fp8=bool(spec.fp8),
        key_group=key_group,
        float_bytes=4,
    )
    assert s.bytes_per_token == pytest.approx(want)


def test_per_channel_quantized_cache_cannot_evict(tiny):
    with pytest.raises(ValueError, match="per-token keys"):
        PolicyCache(KVSpec(bits=2, key_axis="channel", window=8), 2, model_rope(tiny))


def test_buckets_by_position():
    pos = torch.tensor([10, 300, 600, 700])
    vals = torch.tensor([1.0, 2.0, 3.0, 5.0])
    assert by_bucket(pos, vals) == {"<=256": 1.0, "<=512": 2.0, "<=1024": 4.0}
