"""The concept explorer's numbers: bit layouts of number formats, how one value is encoded,
and a small matrix quantized with absmax or zero-point (pure: no Streamlit, no I/O).

Float formats are read from torch itself (``torch.finfo`` and a real cast, the bits read
back with ``Tensor.view``), so what the page shows is what torch computes. Integer
formats use the project's own round-to-nearest code (``core.quant.rtn``), the same
math the ``rtn`` method runs on a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from core.quant.rtn import QuantSpec, dequantize, qrange, quantize, quantize_with

FIELD_COLORS = {
    "sign": "#EF553B",
    "exponent": "#636EFA",
    "fraction": "#00CC96",
    "integer": "#AB63FA",
}
FP32_BYTES = 4  # the matrix "before", and the scales kept with the integers
ZERO_POINT_BYTES = 1  # an int8 zero point per scale (asymmetric only)


@dataclass(frozen=True)
class Format:
    name: str
    bits: int
    dtype: torch.dtype | None  # None for the integer formats (two's complement)
    note: str  # what it is used for (CONCEPTS.md)

    @property
    def is_float(self) -> bool:
        return self.dtype is not None

    @property
    def fraction_bits(self) -> int:
        """Stored fraction bits, from the dtype's machine epsilon (eps = 2^-fraction)."""
        return round(-math.log2(torch.finfo(self.dtype).eps)) if self.dtype else 0

    @property
    def exponent_bits(self) -> int:
        return self.bits - 1 - self.fraction_bits if self.dtype else 0

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1 if self.dtype else 0


FORMATS: tuple[Format, ...] = (
    Format("FP32", 32, torch.float32, "training and the master copy of the weights"),
    Format("FP16", 16, torch.float16, "inference; its range is too small for some activations"),
    Format("BF16", 16, torch.bfloat16, "FP32's range with fewer digits: training and inference"),
    Format("FP8 E4M3", 8, torch.float8_e4m3fn, "weights and activations; no infinities"),
    Format("FP8 E5M2", 8, torch.float8_e5m2, "gradients: more range, less precision"),
    Format("INT8", 8, None, "quantized weights and activations, with a scale"),
    Format("INT4", 4, None, "weight-only quantization, with a scale per group"),
)
BY_NAME = {f.name: f for f in FORMATS}


def format_table() -> pd.DataFrame:
    """One row per format: field widths, range and precision (floats from torch.finfo)."""
    rows = []
    for f in FORMATS:
        if f.dtype is not None:
            fi = torch.finfo(f.dtype)
            rows.append(
                {
                    "format": f.name,
                    "bits": f.bits,
                    "sign": 1,
                    "exponent": f.exponent_bits,
                    "fraction": f.fraction_bits,
                    "bias": f.bias,
                    "max": fi.max,
                    "smallest normal": fi.smallest_normal,
                    "smallest subnormal": fi.smallest_normal * fi.eps,
                    "step at 1.0 (eps)": fi.eps,
                    "decimal digits": (f.fraction_bits + 1) * math.log10(2),
                    "use": f.note,
                }
            )
        else:
            lo, hi = -(2 ** (f.bits - 1)), 2 ** (f.bits - 1) - 1
            rows.append(
                {
                    "format": f.name,
                    "bits": f.bits,
                    "sign": 0,
                    "exponent": 0,
                    "fraction": 0,
                    "bias": 0,
                    "max": float(hi),
                    "smallest normal": float("nan"),
                    "smallest subnormal": float("nan"),
                    "step at 1.0 (eps)": 1.0,  # uniform steps of one (times the scale)
                    "decimal digits": float("nan"),
                    "use": f"{f.note}; range {lo}..{hi} (symmetric schemes: {-hi}..{hi})",
                }
            )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Encoding:
    """One value stored in one format."""

    format: str
    bits: str  # most significant bit first
    fields: tuple[str, ...]  # the field of each bit, same order
    stored: float  # the value the bits decode to
    error: float  # stored - value (NaN if not finite)
    formula: str  # how the bits give the stored value
    status: str  # "exact", "rounded", "overflow: ...", "underflow to zero", ...


def _int_view(t: torch.Tensor, bits: int) -> int:
    view = {32: torch.int32, 16: torch.int16, 8: torch.uint8}[bits]
    return int(t.view(view).item()) & ((1 << bits) - 1)


def _float_formula(f: Format, bits: str, stored: float) -> str:
    e, m = f.exponent_bits, f.fraction_bits
    sign, exp, frac = int(bits[0]), int(bits[1 : 1 + e], 2), int(bits[1 + e :], 2)
    if math.isnan(stored):
        return "NaN (a reserved bit pattern)"
    if math.isinf(stored):
        return f"{'-' if sign else '+'}infinity (exponent all ones, fraction zero)"
    if exp == 0:
        return (
            f"(-1)^{sign} × (0 + {frac}/2^{m}) × 2^(1 - {f.bias})  [subnormal: no implicit 1]"
            f" = {stored:.10g}"
        )
    return (
        f"(-1)^{sign} × (1 + {frac}/2^{m}) × 2^({exp} - {f.bias}) = "
        f"{'-' if sign else ''}{1 + frac / 2**m:.10g} × 2^{exp - f.bias} = {stored:.10g}"
    )


def _status(value: float, stored: float, fmt: Format) -> str:
    if math.isnan(stored):
        return "overflow: not representable, became NaN"
    if math.isinf(stored) and math.isfinite(value):
        return "overflow: became infinity"
    if fmt.dtype is not None and math.isfinite(value):
        fmax = torch.finfo(fmt.dtype).max
        if abs(value) > fmax and abs(stored) == fmax:
            return f"overflow: saturated to ±{fmax:g}"
    if stored == 0 and value != 0:
        return "underflow: became zero"
    return "exact" if stored == value else "rounded to the nearest value"


def encode_float(value: float, fmt: Format) -> Encoding:
    """``value`` cast to ``fmt`` by torch (round to nearest even), with its bits read back."""
    if fmt.dtype is None:
        raise ValueError(f"{fmt.name} is an integer format: use encode_int")
    # Through float64 so the FP32 error is FP32's own, not float64's.
    t = torch.tensor([value], dtype=torch.float64).to(fmt.dtype)
    stored = float(t.double().item())
    n = _int_view(t, fmt.bits)
    bits = format(n, f"0{fmt.bits}b")
    fields = ("sign",) + ("exponent",) * fmt.exponent_bits + ("fraction",) * fmt.fraction_bits
    err = stored - value if math.isfinite(stored) else float("nan")
    return Encoding(
        fmt.name,
        bits,
        fields,
        stored,
        err,
        _float_formula(fmt, bits, stored),
        _status(value, stored, fmt),
    )


def encode_int(value: float, fmt: Format, absmax: float) -> Encoding:
    """``value`` quantized with absmax to ``fmt``: scale = absmax / qmax, q = round(x / scale)
    clipped to the symmetric range, stored in two's complement (core.quant.rtn)."""
    if fmt.dtype is not None:
        raise ValueError(f"{fmt.name} is a float format: use encode_float")
    if not absmax > 0:
        raise ValueError("absmax (the largest |x| of the tensor) must be positive")
    qmin, qmax = qrange(fmt.bits, symmetric=True)
    scale = torch.tensor([[absmax / qmax]])
    q = int(quantize_with(torch.tensor([[[value]]]), scale, None, fmt.bits).item())
    stored = q * absmax / qmax
    bits = format(q & ((1 << fmt.bits) - 1), f"0{fmt.bits}b")
    fields = ("sign",) + ("integer",) * (fmt.bits - 1)
    clipped = abs(value) > absmax
    formula = (
        f"scale = {absmax:g} / {qmax} = {absmax / qmax:.6g}; q = round({value:g} / scale) = "
        f"{q}{' (clipped to ' + str(qmin) + '..' + str(qmax) + ')' if clipped else ''}; "
        f"dequantized: {q} × scale = {stored:.6g}"
    )
    status = (
        "clipped: |x| exceeds the scale's range"
        if clipped
        else ("exact" if stored == value else "rounded to the nearest level")
    )
    return Encoding(fmt.name, bits, fields, stored, stored - value, formula, status)


def encode_all(value: float, absmax: float) -> list[Encoding]:
    """``value`` in every format of :data:`FORMATS` (integers with the given absmax)."""
    if not math.isfinite(value):
        raise ValueError(f"pick a finite number, not {value}")
    return [encode_float(value, f) if f.is_float else encode_int(value, f, absmax) for f in FORMATS]


def encodings_frame(encs: list[Encoding]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "format": e.format,
                "bits": " ".join(_groups(e)),
                "stored value": e.stored,
                "error": e.error,
                "what happened": e.status,
            }
            for e in encs
        ]
    )


def _groups(e: Encoding) -> list[str]:
    """The bits split by field: '0 10000000 1001...'."""
    out, cur, last = [], "", None
    for b, f in zip(e.bits, e.fields, strict=True):
        if last is not None and f != last:
            out.append(cur)
            cur = ""
        cur += b
        last = f
    return [*out, cur]


def bit_layout_figure(encs: list[Encoding], value: float) -> go.Figure:
    """One row per format, one cell per bit (most significant first), coloured by field,
    the bit of ``value``'s encoding written in it."""
    fields = list(FIELD_COLORS)
    width = max(len(e.bits) for e in encs)
    z, text, hover = [], [], []
    for e in encs:
        pad = width - len(e.bits)
        z.append([fields.index(f) for f in e.fields] + [None] * pad)
        text.append(list(e.bits) + [""] * pad)
        hover.append(
            [f"{e.format} bit {len(e.bits) - 1 - i}: {f}" for i, f in enumerate(e.fields)]
            + [""] * pad
        )
    n = len(fields)
    scale = []
    for i, f in enumerate(fields):  # a stepped colour scale: one flat colour per field
        scale += [[i / n, FIELD_COLORS[f]], [(i + 1) / n, FIELD_COLORS[f]]]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(width)),
            y=[e.format for e in encs],
            text=text,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale=scale,
            zmin=-0.5,
            zmax=n - 0.5,
            showscale=False,
            xgap=2,
            ygap=6,
        )
    )
    for f in fields:  # legend entries for the fields
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=f,
                marker={"color": FIELD_COLORS[f], "symbol": "square", "size": 12},
            )
        )
    fig.update_layout(
        title={
            "text": f"Bit layouts, each holding {value:g}",
            "subtitle": {
                "text": "sign · exponent · fraction; integers: two's complement of round(x / scale)"
            },
        },
        xaxis_title="Bit (most significant first)",
        yaxis_title="Format",
        yaxis={"autorange": "reversed"},
        xaxis={"dtick": 4, "showgrid": False},
        legend={"orientation": "h", "y": -0.25},
        plot_bgcolor="white",
        height=380,
        margin={"t": 70, "l": 80, "r": 20, "b": 60},
    )
    return fig


# --- a small matrix, quantized live ----------------------------------------------------


@dataclass(frozen=True)
class MatrixQuant:
    x: np.ndarray  # (rows, cols) the matrix as given (float32)
    q: np.ndarray  # (rows, cols) integers
    deq: np.ndarray  # (rows, cols) dequantized
    scale: np.ndarray  # (rows,) or (1,) step sizes: x ≈ (q - zero) * scale
    zero: np.ndarray | None  # same shape as scale; None for absmax (symmetric)
    bits: int
    per_channel: bool

    @property
    def error(self) -> np.ndarray:
        return self.deq - self.x

    @property
    def bytes_before(self) -> int:
        return self.x.size * FP32_BYTES

    @property
    def storage(self) -> dict[str, int]:
        """Bytes after: packed integers, FP32 scales, int8 zero points (asymmetric only)."""
        return {
            "integers": math.ceil(self.x.size * self.bits / 8),
            "scales": self.scale.size * FP32_BYTES,
            "zero points": 0 if self.zero is None else self.zero.size * ZERO_POINT_BYTES,
        }

    @property
    def bytes_after(self) -> int:
        return sum(self.storage.values())

    def levels_used(self, exclude_largest: bool = False) -> int:
        """Distinct integers the entries landed on (optionally without the largest |x|)."""
        q = self.q.reshape(-1)
        if exclude_largest and q.size > 1:
            q = np.delete(q, int(np.abs(self.x).argmax()))
        return int(np.unique(q).size)

    def mean_abs_error(self, exclude_largest: bool = False) -> float:
        e = np.abs(self.error).reshape(-1)
        if exclude_largest and e.size > 1:
            e = np.delete(e, int(np.abs(self.x).argmax()))
        return float(e.mean())


def quantize_matrix(
    x: Any,
    *,
    bits: int = 8,
    symmetric: bool = True,
    per_channel: bool = False,
    clip_percentile: float = 100.0,
) -> MatrixQuant:
    """Round-to-nearest quantization of a small matrix with core.quant.rtn: absmax
    (symmetric) or zero-point, one scale for the tensor or one per row, optionally
    clipping to a percentile of |x| (of min/max for zero-point) first."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("every entry must be a finite number")
    spec = QuantSpec(
        bits=bits,
        symmetric=symmetric,
        granularity="channel" if per_channel else "tensor",
        clip_percentile=clip_percentile,
    )
    qt = quantize(torch.from_numpy(arr), spec)
    return MatrixQuant(
        x=arr,
        q=qt.q.numpy().astype(np.int32),
        deq=dequantize(qt).numpy(),
        scale=qt.scale.reshape(-1).numpy(),
        zero=None if qt.zero is None else qt.zero.reshape(-1).numpy().astype(np.int32),
        bits=bits,
        per_channel=per_channel,
    )


def grid_figure(mq: MatrixQuant) -> go.Figure:
    """Each row's values on a number line, with the levels its scale can represent (grey
    ticks) and where each value lands (crosses): an outlier spreads the ticks apart."""
    fig = go.Figure()
    qmin, qmax = qrange(mq.bits, mq.zero is None)
    rows = mq.x.shape[0]
    lo, hi = float(min(mq.x.min(), mq.deq.min())), float(max(mq.x.max(), mq.deq.max()))
    for r in range(rows):
        k = r if mq.per_channel else 0
        s, z = float(mq.scale[k]), 0 if mq.zero is None else int(mq.zero[k])
        levels = (np.arange(qmin, qmax + 1) - z) * s
        levels = levels[(levels >= lo - s) & (levels <= hi + s)]
        fig.add_trace(
            go.Scatter(
                x=levels,
                y=[f"row {r}"] * len(levels),
                mode="markers",
                name="levels",
                marker={"symbol": "line-ns-open", "size": 14, "color": "rgba(120,120,120,0.5)"},
                showlegend=r == 0,
                hovertemplate="level %{x:.4g}<extra></extra>",
            )
        )
    label = [f"row {r}" for r in range(rows) for _ in range(mq.x.shape[1])]
    fig.add_trace(
        go.Scatter(
            x=mq.x.reshape(-1),
            y=label,
            mode="markers",
            name="original",
            marker={"color": "#636EFA", "size": 13, "symbol": "circle-open", "line": {"width": 2}},
            hovertemplate="original %{x:.4g}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=mq.deq.reshape(-1),
            y=label,
            mode="markers",
            name="dequantized",
            marker={"color": "#EF553B", "symbol": "x", "size": 9},
            hovertemplate="dequantized %{x:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title={
            "text": "Where each value lands",
            "subtitle": {
                "text": f"grey ticks: the {qmax - qmin + 1} levels of {mq.bits}-bit integers times the scale"
            },
        },
        xaxis_title="Value",
        yaxis_title="Matrix row",
        yaxis={"autorange": "reversed"},
        legend={"orientation": "h", "y": -0.3},
        height=150 + 45 * rows,
        margin={"t": 70, "l": 60, "r": 20, "b": 60},
    )
    return fig


# The matrix the page starts from: CONCEPTS.md's absmax example (max |X| = 3.2, 0.1 -> 4).
DEFAULT_MATRIX: list[list[float]] = [
    [0.1, -0.5, 0.8, 3.2],
    [-1.2, 0.3, 0.05, -0.7],
    [0.6, -0.25, 1.1, -0.4],
]
