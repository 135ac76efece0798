"""Compare: memory / latency vs perplexity of finished runs, the Pareto front, every number."""

from __future__ import annotations

import streamlit as st

from db import queue
from ui import (
    compare_view,
    figures,
    generations_view,
    kv_view,
    seed_view,
    shell,
    sweep_view,
    tables,
)
from ui.frames import PERPLEXITY, SMALLER_BUT_SLOWER, chart_frame, run_option

sf = shell.session()
st.title("Compare")
runs = [j for j in queue.finished_runs(sf) if not j.archived]  # archived: Runs page
if not runs:
    st.info("No finished runs yet: queue one on New run, then come back when it is done.")
    st.page_link(shell.NEW_RUN, label="New run", icon=":material/add_circle:")
    st.stop()

df, latency = compare_view.filter_runs(chart_frame(runs))
st.caption(
    f"{len(df)} run(s). Solid black line: the Pareto front (no other run is better on both "
    "axes). Dotted: the uncompressed model. Runs at the same point are drawn side by side."
)
slower = df[df[SMALLER_BUT_SLOWER]]
if not slower.empty:
    runs_list = ", ".join(f"#{i}" for i in slower["id"])
    st.warning(
        f"Space saving is not a speed-up: {runs_list} use less weight memory than the "
        "uncompressed model but run slower on the device that measured them (column "
        "'smaller but slower'; speed-ups measured in the same job).",
        icon=":material/speed:",
    )
left, right = st.columns(2)
with left:
    st.plotly_chart(figures.memory_figure(df), key="fig_memory")
with right:
    st.plotly_chart(figures.latency_figure(df, latency), key="fig_latency")

compare_view.custom_axes(df)
shown = set(df["id"])
sweep_view.sweep_chart([j for j in runs if j.id in shown and j.sweep_id])
seed_view.seed_chart([j for j in runs if j.id in shown and j.sweep_id])
generations_view.compare_section([j for j in runs if j.id in shown], key="cmp_gen_prompt")
kv_view.kv_section([j for j in runs if j.id in shown], key="cmp_kv")

table = df.sort_values(PERPLEXITY).reset_index(drop=True)


def _pick_from_table() -> None:
    rows = st.session_state["cmp_table"].selection.rows
    if rows:
        st.session_state["cmp_detail"] = int(table.loc[rows[0], "id"])


st.subheader("Runs")
st.caption("Click a column header to sort; select a row to see its details below.")
tables.runs_table(table, key="cmp_table", on_select=_pick_from_table)

ids = table["id"].tolist()
by_id = {j.id: j for j in runs}
if ids and st.session_state.get("cmp_detail") not in ids:
    st.session_state["cmp_detail"] = max(ids)
if ids:
    picked = st.selectbox(
        "Details of run", ids, format_func=lambda i: run_option(by_id[i]), key="cmp_detail"
    )
    job = queue.get_job(sf, picked)
    if job is not None:
        compare_view.run_details(job)
        shell.run_page_link([job.id], f"Open run #{job.id} on its own page (a link to share)")
else:
    st.info("No run matches the filters.")
