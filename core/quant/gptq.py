"""GPTQ: one-shot weight quantization with second-order error compensation.

Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers" (arXiv:2210.17323), Algorithm 1. Pure math:
a weight, its layer Hessian and a :class:`QuantSpec` in, a :class:`QuantizedTensor` out.
"""

from __future__ import annotations

import logging

import torch

from core.kernels import cpu
from core.quant.hessian import damped_inverse_cholesky
from core.quant.rtn import QuantizedTensor, QuantSpec, _group_view, compute_scale_zero, qrange

log = logging.getLogger(__name__)

_FP16_TINY = 2.0**-24  # smallest positive float16 (subnormal): a stored scale never reaches 0


def _as_stored(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to the float16 they are stored as, so the error compensation sees the
    weights exactly as they will be dequantized."""
    s16 = scale.to(torch.float16).to(scale.dtype)
    return torch.clamp(s16, min=_FP16_TINY)


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse; retries with 10x the damping if H is
    too ill-conditioned (a few nearly dead inputs), as a numerically safe fallback."""
    for attempt in range(4):
        try:
            return damped_inverse_cholesky(H, damp * 10**attempt)[0]
        except torch.linalg.LinAlgError:
            log.warning("GPTQ: H not positive definite with damp=%g, retrying", damp * 10**attempt)
    raise ValueError("GPTQ: the layer Hessian stays singular even with 1000x damping")


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool = False,
) -> QuantizedTensor:
    """Quantize ``W`` column by column, spreading each column's rounding error over the
    columns not yet quantized with the OBS update, to minimise ||WX - W'X||^2.

    Shapes: ``W`` (out, in); ``H`` (in, in) = 2/n X X^T of the layer inputs; Hinv below is
    the upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, whose row q holds
    [H_F^-1]_{q,:} / sqrt([H_F^-1]_qq) for F the columns from q on (paper, eq. 4-5).
    Errors are applied lazily: within a block of ``block_size`` columns immediately,
    to the columns after it in one matmul at the end of the block.

    Scales come from ``spec`` (bits, symmetric, granularity, group_size, clip_search).
    With groups, a group's scale is computed when its first column is reached, from the
    columns as updated so far; ``static_groups`` computes them all from the original
    ``W`` up front. ``act_order`` visits columns by decreasing diag(H) (the most active
    inputs first) and needs static groups, so that a group keeps its contiguous columns
    in storage. Weights that are exactly zero on entry (pruned) are quantized to the
    level that dequantizes to zero, and the error of zeroing them is compensated like any
    other rounding error (as SparseGPT does with its mask), so a pruned model stays
    pruned. float64 inputs stay float64 (tests); anything else runs in float32.
    """
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(
            f"W must be (out, in) and H (in, in); got {tuple(W.shape)}, {tuple(H.shape)}"
        )
    grouped = spec.granularity == "group"
    if act_order and grouped and not static_groups:
        raise ValueError("act_order with group-wise scales needs static_groups=True")
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    # The sweep runs on the transpose: a column of W is a contiguous row of Wt, so the
    # per-column reads and the rank-1 updates stream memory instead of striding over it.
    Wt = W.detach().t().to(dtype).clone(memory_format=torch.contiguous_format)  # (in, out)
    W = Wt.t()  # (out, in) view
    H = H.detach().to(dtype)
    out_f, in_f = W.shape
    Wt[torch.diag(H) == 0] = 0  # inputs that never fire: their weights do not matter
    pruned_t = Wt == 0  # exact zeros (pruned weights) stay zero; their error is compensated

    g0, cols = _group_view(W, spec)
    n_groups = g0.shape[1]
    if grouped and not static_groups:
        scale = torch.ones(out_f, n_groups, dtype=dtype, device=W.device)
        zero = None if spec.symmetric else torch.zeros_like(scale)
    else:
        scale, zero = compute_scale_zero(g0, spec)
    scale = _as_stored(scale)

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
    if perm is not None:
        Wt, H, pruned_t = Wt[perm], H[perm][:, perm], pruned_t[perm]
    Hinv = _inverse_cholesky(H, damp)
    qmin, qmax = qrange(spec.bits, spec.symmetric)

    Qt = torch.zeros(in_f, out_f, dtype=torch.int16, device=W.device)
    scale_t = scale.t().contiguous()  # (n_groups, out)
    zero_t = None if zero is None else zero.t().contiguous()
    order = perm.tolist() if perm is not None else list(range(in_f))
    any_pruned = bool(pruned_t.any())
    native = _native_loop(Wt)
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1 = Wt[i1:i2]  # (b, out) the block, a view: updated as its columns are quantized
        Q1 = torch.zeros_like(W1)  # (b, out) the block's integers
        Err1 = torch.zeros_like(W1)  # (b, out) scaled errors, applied past the block at the end
        Hinv1 = Hinv[i1:i2, i1:i2].contiguous()
        pruned1 = pruned_t[i1:i2] if any_pruned else None
        i = 0
        while i < i2 - i1:
            col = i1 + i
            g = order[col] // cols
            if grouped and not static_groups and order[col] % cols == 0:
                cur = _current_columns(Wt, W1, Err1, Hinv, i1, i, min(col + cols, in_f))
                s, z = compute_scale_zero(cur.t().unsqueeze(1), spec)
                scale_t[g] = _as_stored(s[:, 0])
                if zero_t is not None and z is not None:
                    zero_t[g] = z[:, 0]
            # the run of columns from i on that share group g (a new group starts a run)
            end = i + 1
            while end < i2 - i1 and order[i1 + end] // cols == g and order[i1 + end] % cols:
                end += 1
            z = zero_t[g] if zero_t is not None else None
            _sweep_columns(W1, Q1, Err1, Hinv1, i, end, scale_t[g], z, pruned1, qmin, qmax, native)
            i = end
        Qt[i1:i2] = Q1.to(torch.int16)
        Wt[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1.0)
    Q = Qt.t().contiguous()
    scale = scale_t.t().contiguous()
    zero = None if zero_t is None else zero_t.t().contiguous()

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return QuantizedTensor(
        q=Q,
        scale=scale.float(),
        zero=None if zero is None else zero.float(),
        bits=spec.bits,
        group_cols=cols,
    )


def _native_loop(Wt: torch.Tensor) -> bool:
    """The column loop in C++ (core/kernels: same bits, no per-column op dispatch) for
    float32 weights on the CPU where the native library builds."""
    return Wt.dtype == torch.float32 and Wt.device.type == "cpu" and cpu.native_available()


def _sweep_columns(
    W1: torch.Tensor,
    Q1: torch.Tensor,
    Err1: torch.Tensor,
    Hinv1: torch.Tensor,
    i0: int,
    i1: int,
    s: torch.Tensor,
    z: torch.Tensor | None,
    pruned1: torch.Tensor | None,
    qmin: int,
    qmax: int,
    native: bool,
) -> None:
    """Columns i0..i1-1 of a transposed block (rows of W1), quantized with the scales
    ``s`` (and zero points ``z``) in place: codes into Q1, scaled errors into Err1, each
    column's error spread over the block's later columns (the OBS update). ``native``:
    the same loop in C++ (cpu.gptq_columns), one scale for the whole tensor spread to
    every row."""
    if native:
        n = W1.shape[1]
        z = None if z is None else z.expand(n)
        cpu.gptq_columns(W1, Q1, Err1, Hinv1, i0, i1, s.expand(n), z, pruned1, qmin, qmax)
        return
    diag = torch.diagonal(Hinv1).tolist()  # python floats: fewer tensor ops per column
    w_rows, q_rows, e_rows, h_rows = W1.unbind(), Q1.unbind(), Err1.unbind(), Hinv1.unbind()
    for i in range(i0, i1):
        w, q, err = w_rows[i], q_rows[i], e_rows[i]
        torch.div(w, s, out=q).round_()  # q = clamp(round(w / s) + z)
        if z is not None:
            q.add_(z)
        q.clamp_(qmin, qmax)
        if pruned1 is not None:  # the level that dequantizes to exactly 0
            q.copy_(torch.where(pruned1[i], 0.0 if z is None else z, q))
        torch.mul(q - z if z is not None else q, s, out=err)  # err = (w - (q - z) s) / d
        torch.sub(w, err, out=err).div_(diag[i])
        W1[i:].addr_(h_rows[i][i:], err, alpha=-1.0)


def _current_columns(
    Wt: torch.Tensor,
    W1: torch.Tensor,
    Err1: torch.Tensor,
    Hinv: torch.Tensor,
    i1: int,
    i: int,
    end: int,
) -> torch.Tensor:
    """Columns i1+i .. end-1 (as rows of the transposes) with every update so far
    applied, including the pending ones of the current block on columns past it (a group
    may span two blocks)."""
    i2 = i1 + W1.shape[0]
    inside = W1[i : min(end, i2) - i1]
    if end <= i2:
        return inside
    beyond = torch.addmm(Wt[i2:end], Hinv[i1 : i1 + i, i2:end].t(), Err1[:i], alpha=-1.0)
    return torch.cat([inside, beyond], dim=0)
