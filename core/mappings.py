"""Architecture knowledge as data: where the decoder blocks live, which norms feed which linears.

The walker and the scale-migration methods (SmoothQuant, AWQ) read these tables;
no code path is copied per model family.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from core.registry import ConfigError

# Attribute paths of the decoder block list, tried in order.
BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2, SmolLM, Gemma
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Bloom
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "transformer.blocks",  # MPT
)


@dataclass(frozen=True)
class NormGroup:
    """A normalisation layer and the linears that read its output (names relative to a block)."""

    norm: str
    linears: tuple[str, ...]


# The Llama layout, shared by the families that copied it.
_LLAMA_LIKE = ("llama", "mistral", "qwen2")
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # Llama and OPT alike

# model_type -> the norm -> linears groups inside one block.
NORM_GROUPS: dict[str, tuple[NormGroup, ...]] = {
    **dict.fromkeys(
        _LLAMA_LIKE,
        (
            NormGroup("input_layernorm", _QKV),
            NormGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        ),
    ),
    "opt": (NormGroup("self_attn_layer_norm", _QKV), NormGroup("final_layer_norm", ("fc1",))),
}


@dataclass(frozen=True)
class LinearPair:
    """A linear whose output channels feed another linear's input channels one to one with
    nothing but per-channel-linear operations between (attention's weighted sum of values,
    SwiGLU's gate product), so a per-channel scale can move from one to the other."""

    prev: str
    next: str


# model_type -> linear pairs inside one block that AWQ may also scale (AWQ scales are
# positive, and ReLU(x / s) = ReLU(x) / s for s > 0, so OPT's fc1 -> fc2 qualifies). A pair
# is skipped when the shapes differ (v_proj -> o_proj under grouped-query attention).
SCALE_PAIRS: dict[str, tuple[LinearPair, ...]] = {
    **dict.fromkeys(
        _LLAMA_LIKE,
        (
            LinearPair("self_attn.v_proj", "self_attn.o_proj"),
            LinearPair("mlp.up_proj", "mlp.down_proj"),
        ),
    ),
    "opt": (LinearPair("self_attn.v_proj", "self_attn.out_proj"), LinearPair("fc1", "fc2")),
}

# model_type -> the linears whose outputs meet in the attention scores q . k. AWQ's clip
# search skips them: their errors multiply, so a per-layer output error misleads.
ATTENTION_SCORE_LINEARS: dict[str, tuple[str, ...]] = {mt: _QKV[:2] for mt in (*_LLAMA_LIKE, "opt")}


def norm_groups(model: nn.Module, method: str) -> tuple[str, tuple[NormGroup, ...]]:
    """The model's ``model_type`` and its norm -> linears groups, for the scale-migration
    method ``method``; refuses a model type without a mapping, naming the known ones."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in NORM_GROUPS:
        raise ConfigError(
            f"{method} has no norm -> linears mapping for model type {mt!r}; known: "
            f"{', '.join(sorted(NORM_GROUPS))} (add one to core/mappings.py)"
        )
    return str(mt), NORM_GROUPS[mt]
