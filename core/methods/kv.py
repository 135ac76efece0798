"""KV-cache policies as recipe steps: quantized caches, StreamingLLM and H2O.

They change no weight: a step records on the model how its cache will be kept
(``core.kv.cache.KVSpec``), and the job's KV stage decodes through that cache
(core/kv/stream.py). Several KV steps combine (an eviction policy then a quantized
cache); they may follow weight steps in one recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from core.kv.cache import KVSpec
from core.registry import (
    ConfigError,
    MethodCard,
    MethodConfig,
    MethodContext,
    ModelMethod,
    param,
    register,
)

SPEC_ATTR = "compresslab_kv"  # where a model carries its KVSpec


def kv_spec(model: nn.Module) -> KVSpec | None:
    """The cache policy the recipe gave ``model`` (None: the plain cache)."""
    return getattr(model, SPEC_ATTR, None)


def _merge(model: nn.Module, **changes: object) -> None:
    spec = kv_spec(model) or KVSpec()
    setattr(model, SPEC_ATTR, dataclasses.replace(spec, **changes))


class KVMethod(ModelMethod):
    needs_calibration = False

    def apply_model(
        self, model: nn.Module, cfg: MethodConfig, targets: dict, ctx: MethodContext
    ) -> None:
        _merge(model, **self.spec_changes(cfg))
        ctx.on_progress(1.0, f"{self.name}: cache policy set")

    def spec_changes(self, cfg: MethodConfig) -> dict[str, object]:
        raise NotImplementedError


@dataclass(frozen=True)
class KVQuantConfig(MethodConfig):
    bits: int = param(8, "bits per cached key/value element", choices=(2, 4, 8))
    format: str = param(
        "int", "integer codes, or FP8 (bits must be 8)", choices=("int", "e4m3", "e5m2")
    )
    key_axis: str = param(
        "channel",
        "keys: one scale per token, or per channel over a block of tokens (KIVI)",
        choices=("token", "channel"),
    )
    group: int = param(
        32,
        "tokens per per-channel key block (the newest tokens of an "
        "unfilled block stay in full precision)",
        min=8,
        max=256,
        power_of_two=True,
    )

    def validate(self) -> None:
        if self.format != "int" and self.bits != 8:
            raise ConfigError(f"an FP8 cache ({self.format}) has 8 bits, not {self.bits}")
        if self.format != "int" and self.key_axis == "channel":
            raise ConfigError("an FP8 cache scales per token: set key_axis to 'token'")


@register(
    "kv-quant",
    kind="kv",
    config=KVQuantConfig,
    card=MethodCard(
        idea="Store cached keys and values in 8, 4 or 2 bits (or FP8) with a scale and zero "
        "point per group. Keys have outlier channels, so KIVI scales keys per channel over "
        "a block of tokens and values per token.",
        calibration=False,
        static_or_dynamic="dynamic: each token (or block of tokens) gets its own scale as "
        "it enters the cache",
        scope="the key/value cache (activations), not the weights",
        parameters="none learned: min/max of each group",
        hardware="any; here the cache is dequantized at each step in PyTorch (no fused "
        "kernel), so it saves memory but costs time",
        memory="about 16/bits x smaller cache than float16 (scales, zero points and the "
        "full-precision residual are counted)",
        speed="slower per token here (dequantization); fused kernels can make long-context "
        "decoding faster by reading fewer bytes",
        reference="Liu et al. 2024, KIVI (arXiv:2402.02750); Hooper et al. 2024, KVQuant",
    ),
)
class KVQuant(KVMethod):
    def spec_changes(self, cfg: KVQuantConfig) -> dict[str, object]:  # type: ignore[override]
        fp8 = "" if cfg.format == "int" else cfg.format
        return {"bits": cfg.bits, "fp8": fp8, "key_axis": cfg.key_axis, "group": cfg.group}


@dataclass(frozen=True)
class KVWindowConfig(MethodConfig):
    sinks: int = param(4, "first tokens always kept (attention sinks)", min=0, max=64)
    window: int = param(252, "most recent tokens kept", min=1, max=65536)


@register(
    "kv-window",
    kind="kv",
    config=KVWindowConfig,
    card=MethodCard(
        idea="StreamingLLM: keep the first few tokens (attention sinks, which soak up "
        "attention mass) and a window of recent tokens; positions are assigned by slot in "
        "the cache, so a model can stream past its trained length.",
        calibration=False,
        static_or_dynamic="dynamic: the kept tokens move with the stream",
        scope="the key/value cache",
        parameters="heuristic: sink count and window length",
        hardware="any",
        memory="the cache is capped at sinks + window tokens, whatever the stream length",
        speed="constant time per token once the cache is full (keys are re-rotated by slot "
        "each step here)",
        reference="Xiao et al. 2023, Efficient Streaming Language Models with Attention Sinks "
        "(arXiv:2309.17453)",
    ),
)
class KVWindow(KVMethod):
    def spec_changes(self, cfg: KVWindowConfig) -> dict[str, object]:  # type: ignore[override]
        return {"sinks": cfg.sinks, "window": cfg.window, "heavy": 0}


@dataclass(frozen=True)
class KVH2OConfig(MethodConfig):
    heavy: int = param(
        64, "tokens kept for their accumulated attention (heavy hitters)", min=1, max=65536
    )
    recent: int = param(64, "most recent tokens kept", min=1, max=65536)
    sinks: int = param(0, "first tokens always kept", min=0, max=64)


@register(
    "kv-h2o",
    kind="kv",
    config=KVH2OConfig,
    card=MethodCard(
        idea="H2O: keep the recent tokens plus the heavy hitters, the tokens that received "
        "the most attention so far, under a fixed budget; chosen per key/value head, the "
        "scores summed over the query heads that share it.",
        calibration=False,
        static_or_dynamic="dynamic: scores accumulate while decoding",
        scope="the key/value cache",
        parameters="heuristic: budget split between heavy hitters and recent tokens",
        hardware="needs the attention weights, so it runs with eager attention (no "
        "FlashAttention / SDPA): the run records it",
        memory="the cache is capped at heavy + recent (+ sinks) tokens",
        speed="eager attention and score bookkeeping cost time per token",
        reference="Zhang et al. 2023, H2O: Heavy-Hitter Oracle (arXiv:2306.14048)",
    ),
)
class KVH2O(KVMethod):
    def spec_changes(self, cfg: KVH2OConfig) -> dict[str, object]:  # type: ignore[override]
        return {"sinks": cfg.sinks, "window": cfg.recent, "heavy": cfg.heavy}
