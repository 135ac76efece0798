"""Export any compressed model as a dense checkpoint (float16 by default) that plain
``AutoModelForCausalLM.from_pretrained`` loads, with no extra package, in any engine.

Every compressed or pruned linear becomes an ``nn.Linear`` whose weight is the layer's
dequantized weight (:meth:`CompressedLinear.dequantized_weight`) cast to the dtype; every
other tensor is cast too. This keeps what the weights became (rounding, pruned zeros)
but not what a format does to activations at run time: W8A8 and LLM.int8 quantize
activations per token, which a dense model does not, and nothing is smaller on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.export.folder import run_sections, unique_state, write_folder
from core.storage import CompressedLinear, PrunedLinear

DENSE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Formats whose forward also rounds activations: a dense export keeps their weights only.
ACTIVATION_FORMATS = ("W8A8Linear", "LLMInt8Linear", "BnbInt8Linear")


def dense_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The linears whose dense weight has to be rebuilt (compressed or pruned)."""
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, CompressedLinear | PrunedLinear)
    }


def dense_state_dict(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A plain model's state dict: each compressed linear as ``weight`` (+ ``bias``), every
    floating tensor cast to ``dtype``, each storage once (tied embeddings)."""
    layers = dense_layers(model)
    state = unique_state(model, set(layers))
    for name, mod in layers.items():
        weight = mod.weight if isinstance(mod, PrunedLinear) else mod.dequantized_weight()
        state[f"{name}.weight"] = weight.detach().cpu()
        bias = getattr(mod, "bias", None)
        if isinstance(bias, torch.Tensor):
            state[f"{name}.bias"] = bias.detach().cpu()
    return {k: (t.to(dtype) if t.is_floating_point() else t).contiguous() for k, t in state.items()}


def dense_readme(
    model: nn.Module, dtype_name: str, recipe: Any, metrics: Any, fingerprint: Any
) -> str:
    layers = dense_layers(model)
    formats = sorted({getattr(m, "format_name", "pruned") for m in layers.values()})
    act = sorted({type(m).__name__ for m in layers.values()} & set(ACTIVATION_FORMATS))
    lines = [
        f"# Dense {dtype_name} checkpoint\n",
        "Exported by CompressLab: every compressed linear holds its dequantized weight, so "
        "`transformers.AutoModelForCausalLM.from_pretrained(folder)` and any engine load "
        "it with no extra package. It is as large as an uncompressed model.\n",
        f"- layers rebuilt dense: {len(layers)} (stored formats: {', '.join(formats)})",
    ]
    if act:
        lines.append(
            f"- {', '.join(act)} also rounded activations per token at run time; this "
            "checkpoint keeps their weights only (activations stay in float)"
        )
    return "\n".join([*lines, "", *run_sections(recipe, metrics, fingerprint)])


def export_dense(
    model: nn.Module,
    out: str | Path,
    *,
    tokenizer: Any = None,
    recipe: Any = None,
    metrics: dict[str, Any] | None = None,
    fingerprint: dict[str, Any] | None = None,
    dtype: str = "float16",
) -> Path:
    """Write ``model`` as a dense ``dtype`` checkpoint to the folder ``out``; returns it."""
    if dtype not in DENSE_DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(DENSE_DTYPES)}")
    return write_folder(
        model,
        out,
        dense_state_dict(model, DENSE_DTYPES[dtype]),
        config={"dtype": dtype},
        tokenizer=tokenizer,
        readme=dense_readme(model, dtype, recipe, metrics, fingerprint),
    )
