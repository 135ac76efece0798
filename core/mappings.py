"""Architecture knowledge as data: where the decoder blocks live, which norms feed which linears.

The walker and the scale-migration methods (SmoothQuant, AWQ) read these tables;
no code path is copied per model family.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# model_type -> the norm -> linears groups inside one block.
NORM_GROUPS: dict[str, tuple[NormGroup, ...]] = {
    "llama": (
        NormGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        NormGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ),
    "mistral": (
        NormGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        NormGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ),
    "qwen2": (
        NormGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        NormGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ),
    "opt": (
        NormGroup(
            "self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        ),
        NormGroup("final_layer_norm", ("fc1",)),
    ),
}
