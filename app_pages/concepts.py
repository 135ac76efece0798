"""Concepts: how numbers are stored (FP32 down to INT4, bit by bit) and what quantizing a
small matrix does, live, with an outlier to see why clipping and per-channel scales matter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from ui import concepts, concepts_kv
from ui.frames import fmt_bytes

st.title("Concepts")
st.caption(
    "Everything here is computed as you type: float formats by torch itself (a real cast, "
    "its bits read back), integers by the same round-to-nearest code the rtn method runs."
)

# --- number formats ------------------------------------------------------------------

st.header("Number formats")
st.markdown(
    "A float is stored as **sign**, **exponent** and **fraction**: value = (−1)^sign × "
    "(1 + fraction) × 2^(exponent − bias). More exponent bits buy range, more fraction bits "
    "buy precision. An integer format has uniform steps and needs a **scale** to represent "
    "real numbers: x ≈ q × scale."
)
c1, c2 = st.columns(2)
value = c1.number_input(
    "Value to encode", value=0.1, format="%.6g", step=0.1, key="cx_value",
    help="Try 65504 (FP16's largest), 70000 (too large for FP16, fine for BF16), 500 "
    "(beyond FP8 E4M3's 448) or 1e-6 (too small for FP16).",
)  # fmt: skip
absmax = c2.number_input(
    "Largest |x| of its tensor (sets the integer scale)", min_value=1e-6, value=3.2,
    format="%.6g", key="cx_absmax",
    help="Integers store round(x / scale) with scale = max|x| / 127 (INT8) or / 7 (INT4).",
)  # fmt: skip
encs = concepts.encode_all(float(value), float(absmax))
st.plotly_chart(concepts.bit_layout_figure(encs, float(value)), key="cx_bits")
st.dataframe(
    concepts.encodings_frame(encs),
    hide_index=True,
    width="stretch",
    key="cx_encodings",
    column_config={
        "bits": st.column_config.TextColumn("bits (fields separated)", width="large"),
        "stored value": st.column_config.NumberColumn(format="%.10g"),
        "error": st.column_config.NumberColumn("error (stored − value)", format="%.3e"),
    },
)
with st.expander("How each format decodes its bits"):
    for e in encs:
        st.markdown(f"**{e.format}** `{e.bits}`: {e.formula}")


def _readable(v: float) -> str:
    return "—" if v != v else f"{v:.6g}"  # NaN: not applicable to integers


table = concepts.format_table()
for col in ("max", "smallest normal", "smallest subnormal", "step at 1.0 (eps)"):
    table[col] = table[col].map(_readable)
table["decimal digits"] = table["decimal digits"].map(lambda v: "—" if v != v else f"{v:.1f}")
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    key="cx_formats",
    column_config={
        "max": st.column_config.TextColumn("largest"),
        "use": st.column_config.TextColumn(width="large"),
    },
)
st.caption(
    "Mixed-precision training computes in FP16/BF16/FP8 and keeps an FP32 master copy of the "
    "weights; inference can drop to 8 or 4 bits with a scale per tensor, row or group."
)

# --- a matrix, quantized live ----------------------------------------------------------

st.header("Quantize a small matrix")
st.markdown(
    "**Absmax** (symmetric): scale = max|X| / 127, X_q = round(X / scale); zero stays exactly "
    "zero. **Zero-point** (asymmetric): scale = (max − min) / 255, zero point = −128 − "
    "round(min / scale), X_q = clip(round(X / scale) + zero point, −128, 127): the whole "
    "range is used, which helps skewed data. Edit the cells; add an outlier to see one large "
    "value stretch the scale and crush the rest."
)
o1, o2, o3, o4 = st.columns(4)
scheme = o1.radio(
    "Scheme",
    ["absmax", "zero-point"],
    format_func={"absmax": "absmax (symmetric)", "zero-point": "zero-point (asymmetric)"}.get,
    key="cx_scheme",
)
bits = o2.radio("Bits", [8, 4], horizontal=True, key="cx_bits_n")
per_row = (
    o3.radio(
        "One scale per",
        ["tensor", "row"],
        format_func={"tensor": "tensor", "row": "row (per channel)"}.get,
        key="cx_granularity",
    )
    == "row"
)
clip = o4.slider(
    "Clip to this percentile of |x|",
    50.0,
    100.0,
    100.0,
    1.0,
    key="cx_clip",
    help="100: no clipping. Lower: values beyond the percentile saturate, the rest get finer steps.",
)
e1, e2 = st.columns([1, 3])
outlier = e1.toggle("Add an outlier", key="cx_outlier")
outlier_value = e2.number_input(
    "Outlier value (placed at row 1, column 2)", value=40.0, key="cx_outlier_value",
    disabled=not outlier,
)  # fmt: skip

edited = st.data_editor(
    pd.DataFrame(concepts.DEFAULT_MATRIX, columns=[f"c{j}" for j in range(4)]),
    key="cx_matrix",
    width="stretch",
    num_rows="fixed",
)
x = edited.to_numpy(dtype=float, copy=True)  # pandas may hand out a read-only view
if outlier:
    x[1, 2] = float(outlier_value)
try:
    mq = concepts.quantize_matrix(
        x, bits=int(bits), symmetric=scheme == "absmax", per_channel=per_row, clip_percentile=clip
    )
except ValueError as e:
    st.error(f"Cannot quantize this matrix: {e}. Fill every cell with a number.")
    st.stop()

s = mq.storage
m = st.columns(4)
scales = ", ".join(f"{v:.4g}" for v in mq.scale)
m[0].metric("Scale" + ("s (one per row)" if per_row else ""), scales)
m[1].metric(
    "Zero point" + ("s" if per_row else ""),
    "none" if mq.zero is None else ", ".join(map(str, mq.zero)),
    help="Absmax needs none: 0 maps to 0. Zero-point stores the integer that 0.0 maps to.",
)
m[2].metric(
    "Storage",
    f"{mq.bytes_before} B → {mq.bytes_after} B",
    delta=f"{mq.bytes_after / mq.bytes_before:.0%} of FP32",
    delta_color="off",
    delta_arrow="off",
    help=f"FP32: {mq.x.size} × 4 B. After: {s['integers']} B of {bits}-bit integers + "
    f"{s['scales']} B of FP32 scales + {s['zero points']} B of zero points",
)
m[3].metric(
    "Mean |error|",
    f"{mq.mean_abs_error():.4g}",
    delta=f"{mq.mean_abs_error(exclude_largest=True):.4g} without the largest |x|",
    delta_color="off",
    delta_arrow="off",
)
levels = 2**bits - (1 if scheme == "absmax" else 0)
st.caption(
    f"The other {mq.x.size - 1} values land on {mq.levels_used(exclude_largest=True)} "
    f"distinct integers out of {levels} levels. "
    f"Storage: {fmt_bytes(mq.bytes_before)} as FP32 → {s['integers']} B integers + "
    f"{s['scales']} B scales + {s['zero points']} B zero points."
)


def _grid(values: np.ndarray, fmt: str) -> pd.DataFrame:
    return pd.DataFrame(values, columns=[f"c{j}" for j in range(values.shape[1])]).style.format(fmt)


def _shade(v: float, top: float) -> str:
    """Red in proportion to |error| (no matplotlib needed)."""
    return f"background-color: rgba(239, 85, 59, {abs(v) / top * 0.8 if top > 0 else 0:.2f})"


t1, t2, t3 = st.columns(3)
with t1:
    st.markdown(f"**Integer matrix** (INT{bits})")
    st.dataframe(_grid(mq.q, "{:d}"), key="cx_q")
with t2:
    st.markdown("**Dequantized** ((q − zero) × scale)")
    st.dataframe(_grid(mq.deq, "{:.4f}"), key="cx_deq")
with t3:
    st.markdown("**Error** (dequantized − original)")
    st.dataframe(
        _grid(mq.error, "{:+.4f}").map(_shade, top=float(np.abs(mq.error).max())),
        key="cx_err",
    )
st.plotly_chart(concepts.grid_figure(mq), key="cx_grid")

st.subheader("Why clipping and per-channel scales matter")
rows = []
for label, kw in (
    ("one scale, no clipping", {"per_channel": False, "clip_percentile": 100.0}),
    ("one scale per row", {"per_channel": True, "clip_percentile": 100.0}),
    ("one scale, clipped at the 90th percentile", {"per_channel": False, "clip_percentile": 90.0}),
):
    q = concepts.quantize_matrix(x, bits=int(bits), symmetric=scheme == "absmax", **kw)
    rows.append(
        {
            "scheme": label,
            "mean |error|, all values": q.mean_abs_error(),
            "mean |error| without the largest": q.mean_abs_error(exclude_largest=True),
            "levels used by the others": q.levels_used(exclude_largest=True),
            "bytes": q.bytes_after,
        }
    )
st.dataframe(
    pd.DataFrame(rows),
    hide_index=True,
    width="stretch",
    key="cx_compare",
    column_config={
        "mean |error|, all values": st.column_config.NumberColumn(format="%.4g"),
        "mean |error| without the largest": st.column_config.NumberColumn(format="%.4g"),
    },
)
st.caption(
    "With an outlier, one scale for the tensor spends its levels on the outlier. A scale per "
    "row confines the damage to the outlier's row (for a few more bytes of scales); clipping "
    "gives everyone else fine steps but saturates the outlier itself."
)

# --- the KV cache -------------------------------------------------------------------

concepts_kv.section()
