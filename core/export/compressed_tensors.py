"""Export a compressed model as a compressed-tensors checkpoint (vLLM, SGLang, transformers).

The folder holds ``model.safetensors``, ``config.json`` with a ``quantization_config``
of ``quant_method: "compressed-tensors"``, the tokenizer and a README (recipe, metrics,
fingerprint). Each stored format maps to one of the library's formats:

- ``AffineLinear`` (int-N weight-only, per group or per channel, symmetric or with zero
  points: RTN, GPTQ, AWQ) -> ``pack-quantized``: ``weight_packed`` int32 (signed codes
  plus ``2**(bits-1)``, a dense little-endian bit stream along each row: element ``i``
  of a run of 32 starts at bit ``i * bits``), ``weight_scale`` (N, G),
  ``weight_shape`` [N, K], and for zero points ``weight_zero_point`` (N, G) signed,
  packed the same way along the output dimension.
- ``W8A8Linear`` with dynamic per-token activations -> ``int-quantized``: ``weight``
  int8 (N, K), ``weight_scale`` (N, 1); input activations int8, per token, dynamic.
- ``FP8Linear`` E4M3 -> ``float-quantized``: ``weight`` float8_e4m3fn, ``weight_scale``
  (N, 1) per channel or (1,) per tensor; activations stay in float (weight-only).

A sparse affine layer (pruned, then quantized: 2:4 + int4) goes out as ``pack-quantized``
through its dense affine codes: the zeros stay, the sparse storage does not, because
compressed-tensors 0.20.0 dropped its sparsity compressors (``sparse-24-bitmask`` is a
legacy name only) and transformers 5.23.0 reads no ``sparsity_config``; 2:4 sparsity
alone is refused for the same reason. Every other layer format is refused with
:class:`ExportError`, naming the layer, its format and the supported ones. The layout follows compressed-tensors 0.20.0, read from
its source; nothing here imports it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.export.folder import run_sections, unique_state, write_folder
from core.storage import (
    AffineLinear,
    CompressedLinear,
    FP8Linear,
    NMSparseLinear,
    SparseAffineLinear,
    W8A8Linear,
)

QUANT_METHOD = "compressed-tensors"
PACK, INT, FLOAT = "pack-quantized", "int-quantized", "float-quantized"
SUPPORTED_FORMATS = (
    "affine-int int2..int8 weight-only per group or channel, symmetric or asymmetric "
    f"(RTN, GPTQ, AWQ) -> {PACK}",
    f"W8A8 int8 with dynamic per-token activations -> {INT}",
    f"FP8 E4M3 weights, per tensor or per channel -> {FLOAT}",
)
DENSE_HINT = "any run exports as a dense float16 checkpoint with --format dense"
# Asymmetric zero points. "packed": the library's own layout, (ceil(N*bits/32), G) int32
# packed along the output dimension -- what its compressor writes, its decompress and
# vLLM's loader read; transformers 5.23.0 cannot load it (it builds the parameter on
# the meta device unpacked, (N, G), and refuses the size mismatch). "padded": the same
# words in an (N, G) int32 tensor, rows past ceil(N*bits/32) zero -- transformers 5.23.0
# + compressed-tensors 0.20.0 load it (unpack reads only the first words of the stream)
# with our weights exactly; vLLM's loader expects the packed shape.
ZP_PACKED, ZP_PADDED = "packed", "padded"
ZP_LAYOUTS = (ZP_PACKED, ZP_PADDED)
SPARSE_WHY = (
    "compressed-tensors 0.20.0 registers no sparsity compressor (sparse-24-bitmask is a "
    "legacy name only) and transformers 5.23.0 reads no sparsity_config"
)


class ExportError(ValueError):
    """The model holds a layer no compressed-tensors format can represent."""


@dataclass(frozen=True)
class LayerExport:
    """One layer in the library's terms: its scheme (JSON), format and tensors."""

    scheme: dict[str, Any]
    fmt: str
    tensors: dict[str, torch.Tensor]


# ---------------------------------------------------------------------- packing


def pack_int32(values: torch.Tensor, bits: int, dim: int = 1) -> torch.Tensor:
    """Pack signed ``bits``-bit integers (a 2-D tensor) into int32 words along ``dim``.

    Each value is offset by ``2**(bits-1)`` to an unsigned code; the codes of a row form
    a little-endian bit stream (value ``i`` at bits ``i*bits .. i*bits+bits-1``, a value
    may straddle two words), padded with zero codes to whole runs of 32 values, then cut
    to ``ceil(cols * bits / 32)`` words."""
    if values.dim() != 2 or dim not in (0, 1):
        raise ValueError("pack_int32 packs a 2-D tensor along dim 0 or 1")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits}: packing holds 1..8 bits")
    v = values.t() if dim == 0 else values
    codes = v.to(torch.int64) + (1 << (bits - 1))
    if codes.min() < 0 or codes.max() >= (1 << bits):
        raise ValueError(f"values outside the signed {bits}-bit range")
    rows, cols = codes.shape
    padded = math.ceil(cols / 32) * 32
    codes = torch.nn.functional.pad(codes, (0, padded - cols))
    bit_idx = torch.arange(bits, dtype=torch.int64)
    stream = (codes.unsqueeze(-1) >> bit_idx) & 1  # (rows, padded, bits), LSB first
    stream = stream.reshape(rows, padded * bits // 32, 32)
    words = (stream << torch.arange(32, dtype=torch.int64)).sum(dim=-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    words = words[:, : math.ceil(cols * bits / 32)]
    return (words.t() if dim == 0 else words).contiguous()


# ---------------------------------------------------------------------- layers


def _args(bits: int, kind: str, strategy: str, **extra: Any) -> dict[str, Any]:
    return {
        "num_bits": bits,
        "type": kind,
        "symmetric": extra.pop("symmetric", True),
        "group_size": extra.pop("group_size", None),
        "strategy": strategy,
        "dynamic": extra.pop("dynamic", False),
    }


def _zero_points(mod: AffineLinear, layout: str) -> torch.Tensor:
    """The zero points, signed, packed along the output dimension (see ZP_LAYOUTS)."""
    zp = (mod.zero.to(torch.int16) - (1 << (mod.bits - 1))).to(torch.int8)
    packed = pack_int32(zp, mod.bits, dim=0)
    if layout == ZP_PACKED:
        return packed
    padded = torch.zeros(zp.shape, dtype=torch.int32)
    padded[: packed.shape[0]] = packed
    return padded


def _affine(mod: AffineLinear, dtype: torch.dtype, zero_points: str) -> LayerExport:
    n, k = mod.out_features, mod.in_features
    groups = mod.scale.shape[1]
    channel = groups == 1
    if not channel and k % mod.group_size:
        raise ExportError(
            f"group size {mod.group_size} does not divide in_features {k}: only whole "
            "groups are exported"
        )
    strategy = "channel" if channel else "group"
    weights = _args(
        mod.bits,
        "int",
        strategy,
        symmetric=mod.symmetric,
        group_size=None if channel else mod.group_size,
    )
    tensors = {
        "weight_packed": pack_int32(mod.int_weight().to(torch.int8), mod.bits),
        "weight_scale": mod.scale.to(dtype).contiguous(),
        "weight_shape": torch.tensor([n, k], dtype=torch.int64),
    }
    if not mod.symmetric:
        tensors["weight_zero_point"] = _zero_points(mod, zero_points)
    return LayerExport(_scheme(weights, None, PACK), PACK, tensors)


def _w8a8(mod: W8A8Linear, dtype: torch.dtype) -> LayerExport:
    weights = _args(8, "int", "channel")
    acts = _args(8, "int", "token", dynamic=True)
    tensors = {
        "weight": mod.w_int8.contiguous(),
        "weight_scale": mod.w_scale.reshape(-1, 1).to(dtype).contiguous(),
    }
    return LayerExport(_scheme(weights, acts, INT), INT, tensors)


def _fp8(mod: FP8Linear, dtype: torch.dtype) -> LayerExport:
    channel = mod.weight_scale.numel() > 1
    weights = _args(8, "float", "channel" if channel else "tensor")
    scale = mod.weight_scale.reshape(-1, 1) if channel else mod.weight_scale.reshape(1)
    tensors = {"weight": mod.weight.contiguous(), "weight_scale": scale.to(dtype).contiguous()}
    return LayerExport(_scheme(weights, None, FLOAT), FLOAT, tensors)


def _scheme(weights: dict, acts: dict | None, fmt: str) -> dict[str, Any]:
    return {
        "weights": weights,
        "input_activations": acts,
        "output_activations": None,
        "format": fmt,
    }


def _refusal(name: str, mod: nn.Module, why: str) -> ExportError:
    fmt = mod.format_name if isinstance(mod, CompressedLinear) else type(mod).__name__
    scheme = mod.scheme() if isinstance(mod, CompressedLinear) else "?"
    return ExportError(
        f"{name}: format {fmt} ({scheme}) cannot be exported to compressed-tensors ({why}); "
        f"supported: {'; '.join(SUPPORTED_FORMATS)}; {DENSE_HINT}"
    )


def export_layer(
    name: str, mod: CompressedLinear, dtype: torch.dtype, zero_points: str = ZP_PACKED
) -> LayerExport:
    """The layer in compressed-tensors terms, or :class:`ExportError`."""
    if type(mod) is SparseAffineLinear:  # lossless: exported as its dense affine codes
        mod = mod.to_affine()
    if type(mod) is AffineLinear:
        try:
            return _affine(mod, dtype, zero_points)
        except ExportError as e:
            raise _refusal(name, mod, str(e)) from None
    if type(mod) is W8A8Linear:
        if mod.act_mode != "dynamic":
            raise _refusal(name, mod, "static activation scales are not exported")
        return _w8a8(mod, dtype)
    if type(mod) is FP8Linear:
        if mod.weight.dtype != torch.float8_e4m3fn:
            raise _refusal(name, mod, "only E4M3 weights are exported")
        return _fp8(mod, dtype)
    if type(mod) is NMSparseLinear:
        raise _refusal(name, mod, SPARSE_WHY)
    raise _refusal(name, mod, "no equivalent format")


def export_layers(
    model: nn.Module, dtype: torch.dtype, zero_points: str = ZP_PACKED
) -> dict[str, LayerExport]:
    """Every compressed layer of ``model``, exported; the first refusal raises."""
    out = {
        name: export_layer(name, mod, dtype, zero_points)
        for name, mod in model.named_modules()
        if isinstance(mod, CompressedLinear)
    }
    if not out:
        raise ExportError("the model holds no compressed layer: nothing to export")
    return out


# ---------------------------------------------------------------------- config


def quantization_config(model: nn.Module, layers: dict[str, LayerExport]) -> dict[str, Any]:
    """The ``quantization_config`` of config.json: one group per distinct scheme, whose
    targets are the exact layer names; every plain ``nn.Linear`` is ignored."""
    groups: dict[str, dict[str, Any]] = {}
    for name, layer in layers.items():
        key = json.dumps(layer.scheme, sort_keys=True)
        groups.setdefault(key, {"targets": [], **layer.scheme})["targets"].append(name)
    formats = {layer.fmt for layer in layers.values()}
    ignore = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    return {
        "quant_method": QUANT_METHOD,
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": {f"group_{i}": g for i, g in enumerate(groups.values())},
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def export_state_dict(model: nn.Module, layers: dict[str, LayerExport]) -> dict[str, torch.Tensor]:
    """Plain tensors as they are (each storage once: tied embeddings) and each compressed
    layer's tensors (plus its bias) under the layer's name."""
    out = unique_state(model, set(layers))
    for name, layer in layers.items():
        bias = getattr(model.get_submodule(name), "bias", None)
        if isinstance(bias, torch.Tensor):
            out[f"{name}.bias"] = bias.detach().contiguous().cpu()
        for suffix, t in layer.tensors.items():
            out[f"{name}.{suffix}"] = t.detach().contiguous().cpu()
    return out


# ---------------------------------------------------------------------- README


def readme_text(
    qcfg: dict[str, Any],
    recipe: Any,
    metrics: dict[str, Any] | None,
    fingerprint: dict[str, Any] | None,
) -> str:
    """The README: what the folder is, how to load it, and the run it came from."""
    groups = qcfg["config_groups"].values()
    lines = [
        "# Compressed model (compressed-tensors)\n",
        "Exported by CompressLab. Load with `transformers.AutoModelForCausalLM."
        "from_pretrained(folder)` (needs the `compressed-tensors` package) or serve with "
        "vLLM / SGLang.\n",
        f"- format: `{qcfg['format']}`",
        f"- quantized layers: {sum(len(g['targets']) for g in groups)}",
        f"- layers kept in float: {', '.join(qcfg['ignore']) or 'none'}\n",
        *run_sections(recipe, metrics, fingerprint),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- export


def export_compressed_tensors(
    model: nn.Module,
    out: str | Path,
    *,
    tokenizer: Any = None,
    recipe: Any = None,
    metrics: dict[str, Any] | None = None,
    fingerprint: dict[str, Any] | None = None,
    zero_points: str = ZP_PACKED,
) -> Path:
    """Write ``model`` (its linears in core.storage formats) to the folder ``out`` as a
    compressed-tensors checkpoint; returns the folder. Raises :class:`ExportError` before
    writing anything when a layer's format cannot be exported. ``zero_points`` lays out
    asymmetric zero points (see :data:`ZP_LAYOUTS`)."""
    if zero_points not in ZP_LAYOUTS:
        raise ExportError(f"zero_points={zero_points!r}: expected one of {', '.join(ZP_LAYOUTS)}")
    layers = export_layers(model, _model_dtype(model), zero_points)
    qcfg = quantization_config(model, layers)
    return write_folder(
        model,
        out,
        export_state_dict(model, layers),
        config={"quantization_config": qcfg},
        tokenizer=tokenizer,
        readme=readme_text(qcfg, recipe, metrics, fingerprint),
    )
