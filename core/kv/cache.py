"""A key/value cache with a compression policy, on transformers' Cache API.

:class:`PolicyCache` holds one :class:`PolicyLayer` per decoder layer. Each layer keeps
its keys and values in a store (full precision, per-token codes or per-channel blocks,
see core.kv.quant) and, when the policy evicts, chooses which tokens stay.

Positions. An evicting policy assigns positions within the cache (StreamingLLM): the
token in slot ``i`` is at position ``i``. Transformers rotates keys (RoPE) before the
cache sees them, so such a layer stores each key *before* rotation (it undoes the
rotation of the position the key arrived at) and rotates the kept keys by their slot
at every step. A new token's position is the cache length, which transformers already
uses when no ``position_ids`` are given. The plain and quantized caches keep absolute
positions, like transformers' DynamicCache.

Eviction runs between forward passes (:meth:`PolicyCache.after_step`), so the mask
transformers builds from the cache length always matches the keys returned. H2O's
scores are the attention weights each kept key received (eager attention, passed to
``after_step``), summed over the query heads that share its key/value head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from core.kv.quant import Codes, concat, dequantize, quantize_fp8, quantize_int, select_tokens

# positions (T,) -> (cos, sin), each (T, head_dim): the model's rotary embedding
Rope = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class KVSpec:
    """What a cache keeps and how it stores it (a policy's config turned into numbers)."""

    bits: int = 16  # 16: full precision; 8 / 4 / 2: integer codes; 8 with fp8 set: FP8
    fp8: str = ""  # "e4m3" or "e5m2" with bits = 8
    key_axis: str = "token"  # "token" or "channel" (KIVI keys)
    group: int = 32  # tokens per per-channel key block (and the full-precision residual)
    sinks: int = 0  # first tokens always kept (attention sinks)
    window: int = 0  # most recent tokens kept; 0 = keep everything (no eviction)
    heavy: int = 0  # H2O: tokens kept for their accumulated attention

    @property
    def evicts(self) -> bool:
        return self.window > 0

    @property
    def budget(self) -> int:
        return self.sinks + self.window + self.heavy

    @property
    def needs_attention(self) -> bool:
        return self.heavy > 0

    @property
    def quantized(self) -> bool:
        return self.bits < 16


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    """RoPE of (B, H, T, D) ``x`` with (T, D) cos / sin (its inverse with ``inverse``)."""
    s = -sin if inverse else sin
    return x * cos + rotate_half(x) * s


class TokenStore:
    """Keys or values of one layer, stored per token: full precision or per-token codes."""

    def __init__(self, spec: KVSpec, dtype: torch.dtype):
        self.spec, self.dtype = spec, dtype
        self.full_prec: torch.Tensor | None = None
        self.codes: Codes | None = None

    def _encode(self, x: torch.Tensor) -> Codes:
        if self.spec.fp8:
            return quantize_fp8(x, self.spec.fp8)
        return quantize_int(x, self.spec.bits, dim=-1)

    def append(self, x: torch.Tensor) -> None:
        if not self.spec.quantized:
            self.full_prec = x if self.full_prec is None else torch.cat([self.full_prec, x], dim=2)
        else:
            self.codes = concat(self.codes, self._encode(x))

    def tensor(self) -> torch.Tensor:
        if self.spec.quantized:
            assert self.codes is not None
            return dequantize(self.codes, self.dtype)
        assert self.full_prec is not None
        return self.full_prec

    def keep(self, idx: torch.Tensor) -> None:
        if self.spec.quantized:
            assert self.codes is not None
            self.codes = select_tokens(self.codes, idx)
        else:
            assert self.full_prec is not None
            d = self.full_prec.shape[-1]
            self.full_prec = self.full_prec.gather(2, idx[..., None].expand(*idx.shape, d))

    @property
    def nbytes(self) -> int:
        if self.spec.quantized:
            return 0 if self.codes is None else self.codes.nbytes
        t = self.full_prec
        return 0 if t is None else t.numel() * t.element_size()


class ChannelStore:
    """Keys quantized per channel in blocks of ``group`` tokens; the tokens of the block
    being filled stay in full precision (KIVI's residual)."""

    def __init__(self, spec: KVSpec, dtype: torch.dtype):
        self.spec, self.dtype = spec, dtype
        self.blocks: list[Codes] = []
        self.residual: torch.Tensor | None = None

    def append(self, x: torch.Tensor) -> None:
        r = x if self.residual is None else torch.cat([self.residual, x], dim=2)
        g = self.spec.group
        while r.shape[2] >= g:
            self.blocks.append(quantize_int(r[:, :, :g], self.spec.bits, dim=-2))
            r = r[:, :, g:]
        self.residual = r

    def tensor(self) -> torch.Tensor:
        parts = [dequantize(b, self.dtype) for b in self.blocks]
        if self.residual is not None and self.residual.shape[2]:
            parts.append(self.residual)
        return torch.cat(parts, dim=2)

    def keep(self, idx: torch.Tensor) -> None:
        raise ValueError("per-channel keys are quantized in blocks of tokens: they cannot evict")

    @property
    def nbytes(self) -> int:
        total = sum(b.nbytes for b in self.blocks)
        r = self.residual
        return total + (0 if r is None else r.numel() * r.element_size())


class PolicyLayer(CacheLayerMixin):
    """One decoder layer's cache under a :class:`KVSpec`."""

    is_sliding = False
    is_croppable = False

    def __init__(self, spec: KVSpec, rope: Rope | None):
        super().__init__()
        self.spec, self.rope = spec, rope
        self.length = 0
        self.seen = 0  # tokens that entered the cache, evicted ones included
        self.scores: torch.Tensor | None = None  # (B, KV heads, T) accumulated attention
        self.origin: torch.Tensor | None = None  # (B, KV heads, T) stream index of each slot

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        key_cls = (
            ChannelStore if self.spec.key_axis == "channel" and self.spec.quantized else TokenStore
        )
        self.k_store = key_cls(self.spec, self.dtype)
        self.v_store = TokenStore(self.spec, self.dtype)
        self.is_initialized = True

    def _slots_rope(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.rope is not None
        return self.rope(torch.arange(start, start + n, device=self.device))

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[2]
        if self.spec.evicts:  # store keys before rotation
            cos, sin = self._slots_rope(self.length, n)
            key_states = rotate(key_states, cos, sin, inverse=True)
        self.k_store.append(key_states)
        self.v_store.append(value_states)
        self.length += n
        new = torch.arange(self.seen, self.seen + n, device=self.device)
        new = new.expand(*key_states.shape[:2], n)
        self.origin = new if self.origin is None else torch.cat([self.origin, new], dim=2)
        self.seen += n
        if self.scores is not None:
            pad = torch.zeros(*self.scores.shape[:2], n, device=self.device)
            self.scores = torch.cat([self.scores, pad], dim=2)
        keys = self.k_store.tensor()
        if self.spec.evicts:
            cos, sin = self._slots_rope(0, self.length)
            keys = rotate(keys, cos, sin)
        self.keys, self.values = keys, self.v_store.tensor()
        return self.keys, self.values

    def observe(self, attn: torch.Tensor) -> None:
        """Add one step's attention weights (B, query heads, q, T) to the H2O scores."""
        b, hq, _, t = attn.shape
        hkv = self.keys.shape[1] if self.keys is not None else hq
        per_kv = attn.float().sum(dim=2).view(b, hkv, hq // hkv, t).sum(dim=2)
        self.scores = per_kv if self.scores is None else self.scores + per_kv

    def evict(self) -> None:
        idx = keep_indices(self.spec, self.length, self.scores, self.keys)
        if idx is None:
            return
        self.k_store.keep(idx)
        self.v_store.keep(idx)
        if self.scores is not None:
            self.scores = self.scores.gather(2, idx)
        assert self.origin is not None
        self.origin = self.origin.gather(2, idx)
        self.length = idx.shape[2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    @property
    def nbytes(self) -> int:
        if not self.is_initialized:
            return 0
        return self.k_store.nbytes + self.v_store.nbytes


def keep_indices(
    spec: KVSpec, length: int, scores: torch.Tensor | None, keys: torch.Tensor | None
) -> torch.Tensor | None:
    """Sorted slots (B, KV heads, budget) to keep, or None while everything fits.

    The first ``sinks`` and the last ``window`` slots always stay; with ``heavy``, the
    ``heavy`` slots between them with the largest accumulated attention stay too, chosen
    per key/value head."""
    if not spec.evicts or length <= spec.budget or keys is None:
        return None
    b, h = keys.shape[:2]
    dev = keys.device
    fixed = list(range(spec.sinks)) + list(range(length - spec.window, length))
    base = torch.tensor(fixed, device=dev).expand(b, h, len(fixed))
    if not spec.heavy:
        return base.contiguous()
    assert scores is not None, "H2O needs attention scores (after_step with attentions)"
    middle = scores[:, :, spec.sinks : length - spec.window]
    top = middle.topk(spec.heavy, dim=2).indices + spec.sinks
    return torch.cat([base, top], dim=2).sort(dim=2).values


class PolicyCache(Cache):
    """The whole model's cache under one :class:`KVSpec`."""

    def __init__(self, spec: KVSpec, n_layers: int, rope: Rope | None):
        if spec.evicts and rope is None:
            raise ValueError("an evicting cache re-rotates keys: it needs the model's RoPE")
        if spec.evicts and spec.key_axis == "channel" and spec.quantized:
            raise ValueError(
                "per-channel keys are quantized in blocks of tokens and cannot be evicted one "
                "by one: use per-token keys with an eviction policy"
            )
        super().__init__(layers=[PolicyLayer(spec, rope) for _ in range(n_layers)])
        self.spec = spec

    def after_step(self, attentions: Sequence[torch.Tensor] | None = None) -> None:
        """Between forward passes: fold attention into H2O scores, then evict."""
        if self.spec.needs_attention:
            if not attentions:
                raise ValueError("H2O needs the attention weights: run with eager attention")
            for layer, attn in zip(self.layers, attentions, strict=True):
                layer.observe(attn)
        for layer in self.layers:
            layer.evict()

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor: codes, scales, zero points and residuals."""
        return sum(layer.nbytes for layer in self.layers)


def model_rope(model: torch.nn.Module) -> Rope:
    """The rotary embedding of a Llama-style ``model`` as positions -> (cos, sin)."""
    rotary = model.model.rotary_emb  # type: ignore[union-attr]
    param = next(model.parameters())

    def rope(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dummy = torch.zeros(1, device=positions.device, dtype=param.dtype)
        cos, sin = rotary(dummy, positions[None, :])
        return cos[0], sin[0]

    return rope
