"""Plain-torch references: what every fast kernel must compute, written for clarity.

Shapes: ``x`` is (..., K) float; ``w_int8`` is (N, K) int8 with one float32 scale per
output row (``w_scale``, (N,)); the result is (..., N) in ``x``'s dtype. Integer
products are accumulated exactly (in float64, exact below 2**53), so a fast path that
accumulates in int32 must match to float rounding of the epilogue only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.quant.actquant import quantize_per_tensor_static, quantize_per_token
from core.quant.pack import unpack_bits

ACT_MODES = ("dynamic", "static")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).float()


def int8_linear(
    x: torch.Tensor,
    w_int8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    act_mode: str,
    x_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """W8A8: int8 activations (per token if dynamic, one calibrated scale if static) times
    int8 weights, exact integer accumulation, then ``acc * x_scale * w_scale + bias``."""
    x2 = _flat(x)
    if act_mode == "dynamic":
        q, s = quantize_per_token(x2)
    elif act_mode == "static":
        if x_scale is None:
            raise ValueError("static activation quantization needs x_scale")
        q = quantize_per_tensor_static(x2, x_scale)
        s = x_scale.float().reshape(1, 1).expand(x2.shape[0], 1)
    else:
        raise ValueError(f"act_mode={act_mode!r}: expected one of {ACT_MODES}")
    acc = (q.double() @ w_int8.double().t()).float()  # (M, N) exact integers
    y = acc * s * w_scale.float().reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*x.shape[:-1], -1).to(x.dtype)


def int8_weight_only_linear(
    x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Float activations times int8 weights dequantized per output row."""
    w = w_int8.float() * w_scale.float().reshape(-1, 1)
    b = None if bias is None else bias.float()
    return F.linear(x.float(), w, b).to(x.dtype)


def unpack_int4_rows(w_packed: torch.Tensor) -> torch.Tensor:
    """(N, KP/2) uint8, two 4-bit codes per byte (low nibble first) -> (N, KP) uint8 codes."""
    n, half = w_packed.shape
    return unpack_bits(w_packed.reshape(-1), 4, n * half * 2).reshape(n, half * 2)


def dequantize_int4(
    w_packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int, k: int
) -> torch.Tensor:
    """Float (N, k) weights: (code - zero[g]) * scale[g] for the group g of each column."""
    q = unpack_int4_rows(w_packed).float()
    s = scale.float().repeat_interleave(group_size, dim=1)
    z = zero.float().repeat_interleave(group_size, dim=1)
    return ((q - z) * s)[:, :k]


def int4_weight_only_linear(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Float activations times 4-bit group-quantized weights (asymmetric, one float16
    scale and one integer zero point per group of ``group_size`` input columns)."""
    w = dequantize_int4(w_packed, scale, zero, group_size, x.shape[-1])
    b = None if bias is None else bias.float()
    return F.linear(x.float(), w, b).to(x.dtype)
