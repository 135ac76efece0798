"""Leaderboard: every finished run (this team's and imported ones), filtered, sorted, with
the Pareto front per model; export a selection as CSV or a JSON bundle, import a bundle."""

from __future__ import annotations

import streamlit as st

from db import queue
from ui import auth, bundle, leaderboard_view, sensitivity_view, shell, tables, tasks_view
from ui.frames import LEADERBOARD_SHOWN, PARETO, PERPLEXITY, leaderboard_frame, pareto_mask

sf = shell.session()
st.title("Leaderboard")
st.caption(
    "Every finished run, yours and your teammates'. Perplexities compare only between runs "
    "evaluated the same way, so the Pareto front is per model and evaluation."
)


def _import() -> None:
    with st.expander("Import a teammate's bundle", icon=":material/upload:"):
        st.caption(
            "A JSON bundle exported from another CompressLab. Runs already here (same "
            "fingerprint: model, revision, recipe, data, settings, device) are skipped."
        )
        up = st.file_uploader("Bundle (.json)", type=["json"], key="lb_import")
        if up is None:
            return
        done = st.session_state.setdefault("lb_imported", {})
        if up.file_id not in done:  # the uploader keeps its file across reruns: import once
            try:
                rep = bundle.import_bundle(sf, up.getvalue(), owner=auth.current_user())
            except bundle.BundleError as e:
                done[up.file_id] = ("error", shell.md_text(e))
            else:
                origins = ", ".join(f"{n} from {shell.md_text(o)}" for o, n in rep.origins.items())
                done[up.file_id] = (
                    "ok",
                    f"Imported {len(rep.added)} run(s) exported by {shell.md_text(rep.exporter)} "
                    f"({origins or 'none new'}); "
                    f"{rep.duplicates} already here were skipped.",
                )
        kind, msg = done[up.file_id]
        (st.success if kind == "ok" else st.error)(msg)


_import()
show_archived = st.toggle("Show archived runs", key="lb_archived")
jobs = [j for j in queue.finished_runs(sf) if show_archived or not j.archived]
if not jobs:
    st.info(
        "No finished runs yet. Queue one on New run, or import a teammate's bundle above; "
        "finished runs are ranked here."
    )
    st.page_link(shell.NEW_RUN, label="New run", icon=":material/add_circle:")
    st.stop()

# One-layer-at-a-time jobs of sensitivity sweeps are diagnostics, not candidates.
sweep_job_ids = {
    j.id
    for js in sensitivity_view.sensitivity_sweeps(queue.list_jobs(sf, limit=100_000)).values()
    for j in js
}
show_sweeps = bool(sweep_job_ids) and st.toggle(
    f"Include the {sum(j.id in sweep_job_ids for j in jobs)} sensitivity-sweep jobs",
    key="lb_sweeps",
    help="Each quantizes a single layer (see the Sensitivity page); hidden by default.",
)
if not show_sweeps:
    jobs = [j for j in jobs if j.id not in sweep_job_ids]
if not jobs:
    st.info("Only sensitivity-sweep jobs have finished so far: include them above.")
    st.stop()
df, task_cols = tasks_view.with_task_columns(leaderboard_frame(jobs), jobs)
df["calib"] = df["calib"].map(leaderboard_view.upload_labels(sf))  # file name, size, hash
df["pareto"] = pareto_mask(df, PARETO, group=["model", "eval"])


def _filter(col: str, label: str, where) -> list:
    """Values to keep; empty means all, so runs that arrive later (a new model, an import)
    are never hidden by a selection made before they existed."""
    options = sorted(df[col].dropna().unique().tolist(), key=str)
    return where.multiselect(label, options, key=f"lb_{col}", placeholder="all")


with st.container(border=True):
    f = st.columns(7)
    picked = {
        "model": _filter("model", "Model", f[0]),
        "method": _filter("method", "Method", f[1]),
        "bits": _filter("bits", "Bits", f[2]),
        "sparsity": _filter("sparsity", "Sparsity", f[3]),
        "calib": _filter("calib", "Calibration set", f[4]),
        "origin": _filter("origin", "Origin", f[5]),
        "owner": _filter("owner", "Owner", f[6]),
    }
    keep_ids = leaderboard_view.tag_and_param_filter(jobs)
    only_front = st.toggle(
        "Pareto front only",
        key="lb_front",
        help="Runs no other run of the same model and evaluation beats on weight memory, "
        "prefill latency and perplexity at once.",
    )
view = df
for col, values in picked.items():
    if values:
        view = view[view[col].isin(values)]
if only_front:
    view = view[view["pareto"]]
view = view[view["id"].isin(keep_ids)]
view = view.sort_values(["model", PERPLEXITY]).reset_index(drop=True)

st.subheader(f"{len(view)} of {len(df)} runs")
if view.empty:
    st.info("No run matches these filters: widen them above.")
    st.stop()
shown = LEADERBOARD_SHOWN + task_cols
st.caption("Click a header to sort. Select rows to export them or open them side by side.")
event = tables.leaderboard_table(view[shown], key="lb_table")
rows = list(event.selection.rows) if event is not None else []
selected = view.iloc[rows] if rows else view
ids = [int(i) for i in selected["id"]]
what = f"{len(ids)} selected" if rows else f"all {len(ids)} shown"

st.subheader("Share")
c1, c2, c3 = st.columns([1, 1, 2])
c1.download_button(
    f"CSV ({what})",
    data=bundle.runs_csv(selected[[*shown, "notes"]]),
    file_name="compresslab-runs.csv",
    mime="text/csv",
    icon=":material/table:",
    key="lb_csv",
)
with_layers = c3.checkbox(
    "Include per-layer statistics in the bundle",
    value=True,
    key="lb_layers",
    help="Histograms, outliers and activations per layer: the teammate's Outliers page "
    "then works on these runs too. Makes the file larger.",
)
with_texts = c3.checkbox(
    "Include the uploaded calibration texts",
    value=True,
    key="lb_texts",
    help="Sets uploaded on New run, so the teammate can rerun these recipes; off: only "
    "their file name, size and SHA-256 travel (for large sets).",
)
origin = c3.text_input(
    "Exported by (shown to whoever imports it)", bundle.default_origin(), key="lb_exporter"
)


def _bundle_bytes() -> bytes:  # built only when the button is clicked
    chosen = [j for j in jobs if j.id in set(ids)]
    layers = (
        {j.id: [r.data for r in queue.layer_stats(sf, j.id)] for j in chosen}
        if with_layers
        else None
    )
    texts = [b for n in bundle.uploads_of(chosen) if (b := queue.get_text(sf, n)) is not None]
    made = bundle.make_bundle(chosen, layers, origin=origin, texts=texts, with_text=with_texts)
    return bundle.bundle_bytes(made)


c2.download_button(
    f"JSON bundle ({what})",
    data=_bundle_bytes,
    file_name="compresslab-bundle.json",
    mime="application/json",
    icon=":material/data_object:",
    key="lb_bundle",
)
if len(ids) >= 2 and rows:
    shell.run_page_link(ids, f"Open the {len(ids)} selected runs side by side")
elif len(ids) == 1 and rows:
    shell.run_page_link(ids)
else:
    st.caption("Select two or more rows to open them side by side on the Run page.")
