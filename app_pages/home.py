"""Home: what CompressLab does, the latest results, where to go next."""

from __future__ import annotations

import streamlit as st

from db import queue
from ui import shell, tables
from ui.frames import runs_frame

sf = shell.session()
st.title("CompressLab")
st.markdown(
    "Compare compression strategies for causal language models. Pick a model, a recipe "
    "(quantization, pruning, or a chain of both) and a calibration set; a background worker "
    "compresses the model and measures perplexity, memory and latency, and the charts show "
    "what each saving costs."
)

runs = queue.finished_runs(sf)
counts = queue.queue_counts(sf)
c = st.columns(4)
c[0].metric("Finished runs", len(runs))
c[1].metric("Queued", counts.get("queued", 0))
c[2].metric("Running", counts.get("running", 0))
c[3].metric("Failed", counts.get("failed", 0))

st.subheader("Latest results")
if not runs:
    st.info(
        "No finished runs yet. Queue one on **New run**: the demo model with the `rtn-int8` "
        "recipe takes about a minute on a CPU. The local worker picks it up by itself."
    )
else:
    df = runs_frame(runs).sort_values("id", ascending=False).head(10)
    tables.runs_table(df, key="home_latest")

st.subheader("Go to")
l1, l2, l3, l4 = st.columns(4)
l1.caption("Pick a model, a recipe and a calibration set; queue a job.")
l2.caption("Live progress, readable errors, cancel.")
l3.caption("Memory and latency against perplexity, the Pareto front, every number.")
l4.caption("Weight histograms before and after, outliers beyond k·std.")
l1.page_link(shell.NEW_RUN, label="New run", icon=":material/add_circle:")
l2.page_link(shell.RUNS, label="Runs", icon=":material/pending_actions:")
l3.page_link(shell.COMPARE, label="Compare", icon=":material/scatter_plot:")
l4.page_link(shell.WEIGHTS, label="Weights", icon=":material/bar_chart:")
m1, m2, m3, m4 = st.columns(4)
m1.caption("Every run ranked, filtered; Pareto front; share runs with a teammate.")
m2.caption("Layers at a glance: weight and activation outliers, SmoothQuant's effect.")
m3.caption("Which layers can take low precision? One layer at a time, then a mixed recipe.")
m4.caption("Number formats bit by bit; quantize a small matrix live.")
m1.page_link(shell.LEADERBOARD, label="Leaderboard", icon=":material/leaderboard:")
m2.page_link(shell.OUTLIERS, label="Outliers", icon=":material/troubleshoot:")
m3.page_link(shell.SENSITIVITY, label="Sensitivity", icon=":material/tune:")
m4.page_link(shell.CONCEPTS, label="Concepts", icon=":material/school:")
