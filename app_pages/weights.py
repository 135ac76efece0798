"""Weights: one layer's histogram before and after compression, with outliers beyond k·std."""

from __future__ import annotations

import streamlit as st

from db import queue
from ui import figures, shell
from ui.figures_layers import OUTLIER_CHOICES
from ui.frames import layers_frame, run_option

sf = shell.session()
st.title("Weights")
st.caption(
    "Counts are on a log scale so the rare large weights (the outliers that stretch a "
    "quantization scale) stay visible next to the millions of small ones."
)
runs = sorted(queue.finished_runs(sf), key=lambda j: j.id, reverse=True)
if not runs:
    st.info("No finished runs yet: queue one on New run; its per-layer weights appear here.")
    st.page_link(shell.NEW_RUN, label="New run", icon=":material/add_circle:")
    st.stop()

by_id = {j.id: j for j in runs}
c1, c2, c3 = st.columns([2, 3, 2])
run_id = c1.selectbox(
    "Run",
    list(by_id),
    format_func=lambda i: run_option(by_id[i]),
    key="w_run",
)
rows = {r.name: r.data for r in queue.layer_stats(sf, run_id)}
if not rows:
    st.info(f"Run #{run_id} recorded no layer statistics. Pick another run.")
    st.stop()
layer = c2.selectbox("Layer", list(rows), key="w_layer")
k = c3.select_slider(
    "k (outlier: |w − mean| > k·std)", options=list(OUTLIER_CHOICES), value=3.0, key="w_k"
)

data = rows[layer]


before, after = data.get("before"), data.get("after")
m = st.columns(3)
n_before, n_after = figures.outlier_count(before, k), figures.outlier_count(after, k)
m[0].metric(f"Outliers before (>{k:g}σ)", "-" if n_before is None else f"{n_before:,}")
m[1].metric(
    f"Outliers after (>{k:g}σ)",
    "-" if n_after is None else f"{n_after:,}",
    delta=None if n_before is None or n_after is None else n_after - n_before,
    delta_color="off",
)
err = data.get("rel_error")
m[2].metric(
    "Layer error",
    "-" if err is None else f"{err:.3g}",
    help="||WX − W'X|| / ||WX|| on calibration inputs",
)
st.caption(figures.layer_summary(data))

st.plotly_chart(
    figures.histogram_figure(before, after, k, title=layer),
    key="fig_hist",
)

table = layers_frame(rows.values(), k)
if table["rel_error"].notna().any():
    st.plotly_chart(figures.layer_error_figure(table, selected=layer), key="fig_layer_error")
else:
    st.caption("No layer errors recorded (an uncompressed run, or a method without them).")
with st.expander("Every layer of this run"):
    st.dataframe(table, hide_index=True, width="stretch")
st.page_link(
    shell.OUTLIERS,
    label="Every layer at a glance, with activation outliers: Outliers",
    icon=":material/troubleshoot:",
    query_params={"run": str(run_id), "layer": layer},
)
