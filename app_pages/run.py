"""Run: one run's full record at a permalink (``?run=12``), or several side by side
(``?run=12,15``): metrics table, overlaid weight histograms, per-layer error curves."""

from __future__ import annotations

import streamlit as st

from db import queue
from ui import compare_view, export_view, figures, generations_view, kv_view, shell, tasks_view
from ui.figures_runs import layer_error_curves, overlaid_histograms
from ui.frames import layers_frame, run_option

sf = shell.session()
st.title("Run")
runs = sorted(queue.finished_runs(sf), key=lambda j: j.id, reverse=True)
if not runs:
    st.info(
        "No finished runs yet: queue one on New run (or import a teammate's bundle on "
        "Leaderboard); each run then has a page here with a link you can share."
    )
    st.page_link(shell.NEW_RUN, label="New run", icon=":material/add_circle:")
    st.stop()

by_id = {j.id: j for j in runs}
# The query parameter is the source of truth when it changed (a shared link, a page link);
# afterwards the multiselect writes it back, so the address always shows what is open.
qp = st.query_params.get("run", "")
if st.session_state.get("_run_qp") != qp or "run_ids" not in st.session_state:
    wanted = shell.query_ids(qp)
    missing = [i for i in wanted if i not in by_id]
    if missing:
        st.warning(
            f"No finished run #{', #'.join(map(str, missing))} here: it may still be running, "
            "have failed, or live in a teammate's database (import their bundle on Leaderboard)."
        )
    st.session_state["run_ids"] = [i for i in wanted if i in by_id] or [runs[0].id]
chosen = st.multiselect(
    "Runs (one for its full record, two or more side by side)",
    list(by_id),
    format_func=lambda i: run_option(by_id[i]),
    key="run_ids",
)
new_qp = ",".join(map(str, chosen))
st.query_params["run"] = new_qp
st.session_state["_run_qp"] = new_qp
if not chosen:
    st.info("Pick a run above.")
    st.stop()

url = getattr(st.context, "url", None) or ""
base = url.split("?", 1)[0] if url else "/run"
st.caption(f"Permalink: `{base}?run={new_qp}`")
jobs = [by_id[i] for i in chosen]
layer_rows = {j.id: {r.name: r.data for r in queue.layer_stats(sf, j.id)} for j in jobs}

if len(jobs) == 1:
    job = jobs[0]
    if (job.origin or "local") != "local":
        st.caption(f"Imported: measured by **{shell.md_text(job.origin)}**.")
    compare_view.run_details(job)
    tasks_view.task_section(job)
    generations_view.generations_section(job)
    kv_view.kv_section([job], key="run_kv")
    export_view.panel(job)
    rows = layer_rows[job.id]
    table = layers_frame(rows.values())
    if rows and table["rel_error"].notna().any():
        st.plotly_chart(figures.layer_error_figure(table), key="run_layer_error")
    elif not rows:
        st.caption("No per-layer statistics for this run (imported without them?).")
    st.page_link(
        shell.OUTLIERS,
        label="Explore its layers: histograms, outliers, activations",
        icon=":material/troubleshoot:",
        query_params={"run": str(job.id)},
    )
    st.stop()

st.subheader(f"{len(jobs)} runs side by side")
evals = {compare_view.eval_label(j) for j in jobs}
if len(evals) > 1:
    st.warning(
        "These runs were evaluated differently (" + "; ".join(sorted(evals)) + "): their "
        "perplexities do not compare directly."
    )
st.dataframe(compare_view.side_by_side(jobs), hide_index=True, width="stretch", key="run_side")
compare_view.config_diff_view(jobs)

common = [n for n in layer_rows[jobs[0].id] if all(n in layer_rows[j.id] for j in jobs[1:])]
if common:
    layer = st.selectbox("Layer for the histograms", common, key="run_cmp_layer")
    series = [(compare_view.run_label(j), layer_rows[j.id][layer].get("after")) for j in jobs]
    reference = layer_rows[jobs[0].id][layer].get("before")
    st.plotly_chart(
        overlaid_histograms(series, reference, title=f"{layer}: weights after compression"),
        key="run_cmp_hist",
    )
else:
    st.caption("These runs share no layer with statistics (different models, or imported runs).")
curves = {
    compare_view.run_label(j): layers_frame(layer_rows[j.id].values())
    for j in jobs
    if layer_rows[j.id]
}
curves = {k: v for k, v in curves.items() if v["rel_error"].notna().any()}
if curves:
    st.plotly_chart(layer_error_curves(curves), key="run_cmp_errors")
else:
    st.caption(
        "No layer errors recorded for these runs (uncompressed, or imported without layers)."
    )
generations_view.compare_section(jobs, key="run_gen_prompt")
kv_view.kv_section(jobs, key="run_kv_many")
for j in jobs:
    shell.run_page_link([j.id], f"#{j.id} alone: {j.recipe_label}")
