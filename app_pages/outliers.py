"""Outliers: every layer of a run in one heatmap (layer error, weight outliers, kurtosis,
sparsity, activation outliers); a click opens the layer's histograms, per-channel maxima
of weights and activations, and how SmoothQuant's alpha reshapes them."""

from __future__ import annotations

import streamlit as st

from db import queue
from ui import figures, shell
from ui.figures_layers import (
    OUTLIER_CHOICES,
    activation_figure,
    channel_figure,
    heatmap_figure,
    layer_from_selection,
    smoothing_for,
)
from ui.frames import layers_frame, most_interesting, run_option

sf = shell.session()
st.title("Outlier explorer")
st.caption(
    "Outliers stretch a quantization scale and crush every other value to a few levels. "
    "Weights have few; activations have whole outlier channels (the reason for LLM.int8() "
    "and SmoothQuant)."
)
runs = sorted(queue.finished_runs(sf), key=lambda j: j.id, reverse=True)
if not runs:
    st.info(
        "No finished runs yet: queue one on New run. A recipe with a calibration set (any "
        "compressed run) also records the activation statistics shown here."
    )
    st.page_link(shell.NEW_RUN, label="New run", icon=":material/add_circle:")
    st.stop()
by_id = {j.id: j for j in runs}

# ?run=12&layer=<name> opens straight to a layer; the choice is written back to the address.
qp_run, qp_layer = st.query_params.get("run", ""), st.query_params.get("layer", "")
if st.session_state.get("_ox_qp") != (qp_run, qp_layer):
    ids = [i for i in shell.query_ids(qp_run) if i in by_id]
    if ids:
        st.session_state["ox_run"] = ids[0]
    if qp_layer:
        st.session_state["ox_layer"] = qp_layer
if st.session_state.get("ox_run") not in by_id:
    st.session_state["ox_run"] = runs[0].id

c1, c2, c3 = st.columns([2, 3, 2])
run_id = c1.selectbox(
    "Run",
    list(by_id),
    format_func=lambda i: run_option(by_id[i]),
    key="ox_run",
)
rows = {r.name: r.data for r in queue.layer_stats(sf, run_id)}
if not rows:
    st.info(f"Run #{run_id} recorded no layer statistics (imported without them?): pick another.")
    st.stop()
if st.session_state.get("ox_layer") not in rows:
    st.session_state["ox_layer"] = most_interesting(rows)


def _clicked() -> None:
    layer = layer_from_selection(st.session_state.get("ox_heatmap"))
    if layer in rows:
        st.session_state["ox_layer"] = layer


layer = c2.selectbox("Layer", list(rows), key="ox_layer")
k = c3.select_slider(
    "k (outlier: |w − mean| > k·std)", options=list(OUTLIER_CHOICES), value=3.0, key="ox_k"
)
st.query_params["run"], st.query_params["layer"] = str(run_id), layer
st.session_state["_ox_qp"] = (str(run_id), layer)

table = layers_frame(rows.values(), k)
st.plotly_chart(
    heatmap_figure(table, k, selected=layer),
    key="ox_heatmap",
    on_select=_clicked,
    selection_mode="points",
)

data = rows[layer]
before, after, act = data.get("before"), data.get("after"), data.get("act")
st.subheader(layer)
m = st.columns(5)
n_b, n_a = figures.outlier_count(before, k), figures.outlier_count(after, k)
m[0].metric(f"Weight outliers (>{k:g}σ)", "-" if n_b is None else f"{n_b:,}",
            delta=None if n_b is None or n_a is None else f"{n_a - n_b:+,} after",
            delta_color="off", delta_arrow="off")  # fmt: skip
kb, ka = (before or {}).get("kurtosis"), (after or {}).get("kurtosis")
m[1].metric(
    "Excess kurtosis",
    "-" if kb is None else f"{kb:.2f}",
    delta=None if ka is None or kb is None else f"{ka:.2f} after",
    delta_color="off",
    delta_arrow="off",
    help="0 for a Gaussian; large when a few weights sit far out in the tails",
)
err = data.get("rel_error")
m[2].metric(
    "Layer error",
    "-" if err is None else f"{err:.3g}",
    help="||WX − W'X|| / ||WX|| on calibration inputs",
)
m[3].metric("Activation max |x|", "-" if not act else f"{act['absmax']:.3g}")
m[4].metric(
    f"Activations > {act['threshold']:g}" if act else "Activations > 6",
    "-" if not act else f"{act['n_above']:,}",
    delta=None if not act else f"{100 * act['frac_above']:.3f}% of values",
    delta_color="off",
    delta_arrow="off",
)
st.caption(figures.layer_summary(data))

left, right = st.columns(2)
with left:
    st.plotly_chart(
        figures.histogram_figure(before, after, k, title="Weights before and after"), key="ox_hist"
    )
with right:
    st.plotly_chart(
        channel_figure((before or {}).get("channel_absmax"), (after or {}).get("channel_absmax")),
        key="ox_channels",
    )

st.subheader("Activations on the calibration set")
if not act:
    st.info(
        "No activation statistics for this run: an uncompressed baseline uses no calibration "
        "set, and runs from before this feature did not record them. Pick a compressed run."
    )
    st.stop()
left, right = st.columns(2)
with left:
    st.plotly_chart(activation_figure(act), key="ox_act")
    top = ", ".join(map(str, act.get("top_channels", [])[:8]))
    ratio = act.get("max_over_median") or 0.0
    if ratio >= 5:
        st.caption(
            f"Largest channels: {top}. The largest is {ratio:.1f}× the median channel: one "
            "scale for all channels spends its levels on those few."
        )
    else:
        st.caption(
            f"No channel stands out here (the largest is {ratio:.1f}× the median). Layers with "
            "a dark 'Activations > 6.0' cell above (often mlp.down_proj) show the problem."
        )
w_absmax = (before or {}).get("channel_absmax")
with right:
    alpha = st.slider(
        "SmoothQuant α (migration strength)", 0.0, 1.0, 0.5, 0.05, key="ox_alpha",
        help="s_j = max|X_j|^α / max|W_j|^(1−α); X_j is divided by s_j, W's column j multiplied",
    )  # fmt: skip
    if w_absmax and len(w_absmax) == len(act["channel_absmax"]):
        st.plotly_chart(smoothing_for(act["channel_absmax"], w_absmax, alpha), key="ox_smooth")
    else:
        st.caption("No per-channel weight maxima stored for this layer: cannot show smoothing.")
