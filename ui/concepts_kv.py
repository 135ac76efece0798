"""Concepts, KV cache: one head's attention map on a real prompt, the sink column, and
which tokens each cache policy keeps at a chosen budget (computed live)."""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import streamlit as st
import torch

from core.kv.cache import KVSpec, PolicyCache, PolicyLayer, model_rope
from core.models import LoadedModel, load_model

PROMPT = '''import os


def read_config(path):
    """Read a key = value file into a dict."""
    result = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition("=")
            result[key.strip()] = value.strip()
    return result
'''


@dataclass(frozen=True)
class AttentionMap:
    pieces: list[str]  # the prompt's tokens as text
    weights: torch.Tensor  # (T, T) one head's attention, query rows
    sink_mass: list[float]  # per layer: mean attention on token 0 (queries after the 8th)


@st.cache_resource(show_spinner=False)
def _model(name: str) -> LoadedModel:
    return load_model(name)


def _ids(lm: LoadedModel, text: str) -> torch.Tensor:
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][:160]
    bos = lm.tokenizer.bos_token_id
    return torch.tensor(([bos] if bos is not None else []) + ids, dtype=torch.long)


@torch.no_grad()
def attention_map(lm: LoadedModel, text: str, layer: int, head: int) -> AttentionMap:
    model = lm.model
    ids = _ids(lm, text)
    before = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        out = model(input_ids=ids[None], output_attentions=True)
    finally:
        model.config._attn_implementation = before
    pieces = [lm.tokenizer.decode([i]) for i in ids.tolist()]
    sinks = [float(a[0, :, 8:, 0].mean()) for a in out.attentions]
    return AttentionMap(pieces, out.attentions[layer][0, head].float(), sinks)


@torch.no_grad()
def kept_tokens(lm: LoadedModel, text: str, spec: KVSpec, layer: int, kv_head: int) -> list[int]:
    """Stream indices a policy still holds after the prompt went through it token by token."""
    model = lm.model
    ids = _ids(lm, text)
    cache = PolicyCache(spec, model.config.num_hidden_layers, model_rope(model))
    before = model.config._attn_implementation
    model.config._attn_implementation = "eager" if spec.needs_attention else before
    try:
        for t in range(len(ids)):
            out = model(
                input_ids=ids[None, t : t + 1],
                past_key_values=cache,
                use_cache=True,
                output_attentions=spec.needs_attention,
            )
            cache.after_step(out.attentions if spec.needs_attention else None)
    finally:
        model.config._attn_implementation = before
    lay = cache.layers[layer]
    assert isinstance(lay, PolicyLayer) and lay.origin is not None
    return sorted(lay.origin[0, kv_head].tolist())


@st.cache_data(show_spinner=False, max_entries=64)
def _kept(name: str, text: str, spec: KVSpec, layer: int, kv_head: int) -> list[int]:
    return kept_tokens(_model(name), text, spec, layer, kv_head)


def attention_figure(m: AttentionMap) -> go.Figure:
    labels = [f"{i}:{p!r}"[:18] for i, p in enumerate(m.pieces)]
    fig = go.Figure(
        go.Heatmap(
            z=m.weights.numpy() ** 0.5,
            x=labels,
            y=labels,
            colorscale="Blues",
            showscale=False,
            hovertemplate="query %{y}<br>key %{x}<extra></extra>",
        )
    )
    fig.update_layout(
        height=520,
        margin={"t": 30},
        yaxis={"autorange": "reversed"},
        xaxis={"showticklabels": False},
        yaxis_showticklabels=False,
        title="attention (square root, for contrast): rows are queries, "
        "columns keys; a sink is a bright first column",
    )
    return fig


def kept_figure(n: int, kept: dict[str, list[int]]) -> go.Figure:
    fig = go.Figure()
    for name, idx in kept.items():
        held = set(idx)
        fig.add_trace(
            go.Scatter(
                x=list(range(n)),
                y=[name] * n,
                mode="markers",
                showlegend=False,
                marker={
                    "symbol": "square",
                    "size": 7,
                    "color": ["#1f77b4" if i in held else "#e6e6e6" for i in range(n)],
                },
                hovertemplate="token %{x}<extra></extra>",
            )
        )
    fig.update_layout(
        height=80 + 40 * len(kept),
        margin={"t": 10},
        xaxis_title="token of the prompt (blue: still in the cache at the end)",
    )
    return fig


def section() -> None:
    st.header("KV cache: what a cache policy keeps")
    st.markdown(
        "While decoding, each layer caches the **keys and values** of every token seen: "
        "2 × layers × KV heads × head dim × bytes per token. Policies shrink it by storing "
        "fewer bits (quantized caches) or fewer tokens: **StreamingLLM** keeps the first "
        "tokens (attention **sinks**, which soak up attention mass) and a recent window; "
        "**H2O** keeps the recent tokens and the **heavy hitters**, the tokens that received "
        "the most attention so far."
    )
    if not st.toggle("Run a model on a prompt to see it (a few seconds)", key="kv_live"):
        return
    c1, c2, c3 = st.columns(3)
    name = c1.selectbox(
        "Model",
        ("demo-long", "demo"),
        key="kv_model",
        help="demo-long was trained with a start token at 1,024 tokens",
    )
    lm = _model(name)
    cfg = lm.model.config
    layer = c2.slider("Layer", 0, cfg.num_hidden_layers - 1, 0, key="kv_layer")
    head = c3.slider("Query head", 0, cfg.num_attention_heads - 1, 0, key="kv_head")
    text = st.text_area("Prompt (first 160 tokens used)", PROMPT, height=160, key="kv_prompt")
    amap = attention_map(lm, text, layer, head)
    st.plotly_chart(attention_figure(amap), key="kvc_attention_map")
    st.caption(
        "Attention mass on the first token, per layer (uniform would be about "
        f"{1 / max(1, len(amap.pieces) / 2):.3f}): "
        + ", ".join(f"layer {i}: {m:.3f}" for i, m in enumerate(amap.sink_mass))
    )
    budget = st.slider(
        "Cache budget (tokens)", 8, max(9, len(amap.pieces) - 1), 32, key="kv_budget"
    )
    kv_head = head // (cfg.num_attention_heads // cfg.num_key_value_heads)
    policies = {
        "recent only": KVSpec(window=budget),
        "sinks 4 + recent": KVSpec(sinks=4, window=max(1, budget - 4)),
        "H2O (half heavy)": KVSpec(heavy=budget // 2, window=budget - budget // 2),
    }
    kept = {k: _kept(name, text, s, layer, kv_head) for k, s in policies.items()}
    st.plotly_chart(kept_figure(len(amap.pieces), kept), key="kvc_kept")
    st.caption(
        f"Layer {layer}, KV head {kv_head} (shared by query heads "
        f"{kv_head * (cfg.num_attention_heads // cfg.num_key_value_heads)}..). "
        "H2O chooses per KV head; the others keep the same slots in every head."
    )
