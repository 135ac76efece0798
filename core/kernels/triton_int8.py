"""W8A8 linear as a Triton kernel (CUDA), same signature and meaning as ref.int8_linear.

Import-guarded: without the ``triton`` package :func:`available` is False and nothing
here runs. Activations are quantized by torch (the same function the reference uses,
so the integers agree exactly); the kernel does the int8 x int8 -> int32 tiles with
``tl.dot`` and the dequantize + bias epilogue in one pass. Tests run it on the CPU
with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os

import torch

from core.quant.actquant import quantize_per_tensor_static, quantize_per_token

try:  # triton is a large CUDA package: optional, never a requirement
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # not installed (ImportError) or a broken install: stay off
    triton = None
    tl = None
    HAVE_TRITON = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def available(device: torch.device | None = None) -> bool:
    """Triton importable and a device it can run on (a GPU, or the CPU interpreter)."""
    if not HAVE_TRITON:
        return False
    return interpreting() or torch.cuda.is_available()


if HAVE_TRITON:

    @triton.jit
    def _w8a8_kernel(
        q_ptr,
        w_ptr,
        xs_ptr,
        ws_ptr,
        b_ptr,
        out_ptr,
        M,
        N,
        K,
        stride_qm,
        stride_wn,
        stride_om,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            a = tl.load(
                q_ptr + rm[:, None] * stride_qm + kk[None, :],
                mask=(rm[:, None] < M) & (kk[None, :] < K),
                other=0,
            )
            # (BLOCK_K, BLOCK_N) view of the (N, K) weight: w^T without a copy.
            b = tl.load(
                w_ptr + rn[None, :] * stride_wn + kk[:, None],
                mask=(rn[None, :] < N) & (kk[:, None] < K),
                other=0,
            )
            acc += tl.dot(a, b, out_dtype=tl.int32)
        xs = tl.load(xs_ptr + rm, mask=rm < M, other=0.0)
        ws = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
        y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(
            out_ptr + rm[:, None] * stride_om + rn[None, :],
            y,
            mask=(rm[:, None] < M) & (rn[None, :] < N),
        )


def _blocks(m: int) -> tuple[int, int, int]:
    """Tile sizes: small M (decode) wants narrow M tiles; tl.dot needs >= 16 everywhere."""
    return (16 if m <= 16 else 64), 64, 64


def int8_linear(
    x2: torch.Tensor,
    w_int8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    act_mode: str,
    x_scale: torch.Tensor | None,
) -> torch.Tensor:
    """x2 (M, K) float -> (M, N) float32 through the Triton int8 GEMM."""
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    if act_mode == "static":
        assert x_scale is not None
        q = quantize_per_tensor_static(x2, x_scale)
        xs = x_scale.float().reshape(1).expand(q.shape[0]).contiguous()
    else:
        q, s = quantize_per_token(x2)
        xs = s.reshape(-1).contiguous()
    q, w = q.contiguous(), w_int8.contiguous()
    m, k = q.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=torch.float32, device=x2.device)
    bm, bn, bk = _blocks(m)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    b = bias.float().contiguous() if bias is not None else out  # unused when no bias
    _w8a8_kernel[grid](
        q,
        w,
        xs,
        w_scale.float().contiguous(),
        b,
        out,
        m,
        n,
        k,
        q.stride(0),
        w.stride(0),
        out.stride(0),
        HAS_BIAS=bias is not None,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
    )
    return out
