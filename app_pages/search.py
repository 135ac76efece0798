"""Search: the best per-layer recipe under a budget (bits per weight, MB, or milliseconds of
the searched linears at a target shape), predicted from per-layer scores and checked by
ordinary runs."""

from __future__ import annotations

import streamlit as st

from ui import auth, forms, search_view, shell

sf = shell.session()
st.title("Search")
st.caption(
    "Which layers get which format under a budget? Each layer x candidate is scored by the "
    "KL it costs when only that layer is compressed (one scoring job each); an exact "
    "knapsack picks one candidate per layer with the least summed score under the budget; "
    "a verification run measures the chosen recipe, so you see where the sum predicts well."
)


def _inputs() -> tuple[str, list[str], str, str, int, tuple]:
    model = forms.model_picker(prefix="search_")
    names = st.multiselect(
        "Candidates per layer", search_view.CANDIDATES, search_view.CANDIDATES, key="search_cands"
    )
    c1, c2 = st.columns([1, 2])
    unit = c1.radio(
        "Budget in", list(search_view.UNITS), format_func=search_view.UNITS.get, key="search_unit"
    )
    budgets = c2.text_input("Budgets (comma-separated)", "3.5, 4.5, 6", key="search_budgets")
    m = 1
    if unit == "ms":
        m = c2.selectbox(
            "Layers timed at",
            list(search_view.LATENCY_M),
            format_func=search_view.LATENCY_M.get,
            key="search_latency_m",
        )
    calib, eval_set = forms.data_pickers(sf, "search_calib", "search_eval", upload_calib=False)
    ev, cs = forms.eval_settings(prefix="search_")
    return model, names, unit, budgets, m, (calib, eval_set, ev, cs)


def _times(p: search_view.SearchPlan, table: search_view.ScoreTable, model: str, m: int) -> bool:
    """Set the layers' times from this machine's cache; offer to measure them if missing."""
    seconds = search_view.cached_times(model, p, m)
    if seconds is not None:
        table.set_seconds(seconds, {"m": m})
        return True
    st.info(
        f"A latency budget needs each layer x candidate's op time at {m} token(s), timed on "
        "this app's machine (its kernels, one representative layer per shape, medians of "
        "interleaved rounds); they are then cached for this machine."
    )
    if st.button("Time the layers on this machine", type="primary"):
        with st.spinner("Compressing one layer per shape with each candidate and timing it"):
            search_view.time_layers(model, p, m)
        st.rerun()
    return False


def _scoring(p: search_view.SearchPlan, table: search_view.ScoreTable) -> None:
    missing = table.missing()
    st.info(f"{len(missing)} of {len(p.layers) * len(p.candidates)} scores still to measure.")
    if st.button(f"Queue {len(missing)} scoring jobs", type="primary"):
        n = search_view.queue_scoring(sf, p, table, auth.current_user())
        st.success(f"Queued {n} scoring jobs; this page fills in as they finish.")


def _front(
    p: search_view.SearchPlan, table: search_view.ScoreTable, measured: list, unit: str, b: str
):
    front = search_view.front(table, unit)
    fig = search_view.front_figure(front, measured, search_view.uniform_points(table), unit)
    st.plotly_chart(fig, use_container_width=True)
    if measured:
        st.dataframe(measured, hide_index=True)
    try:
        sols = search_view.solutions(table, unit, search_view.parse_budgets(b))
    except ValueError as e:
        st.error(str(e))
        return
    st.dataframe([{"budget": lbl, "fits": s is not None} for lbl, s in sols], hide_index=True)
    if st.button("Queue verification runs", type="primary"):
        n = search_view.queue_verification(sf, p, sols, auth.current_user())
        st.success(f"Queued {n} verification runs (ordinary runs: see Runs, Compare).")


model, names, unit, budgets, latency_m, data = _inputs()
if not model or not names:
    st.info("Choose a model and at least one candidate.")
    st.stop()
try:
    plan = search_view.plan(sf, model, names, data)
except ValueError as e:
    st.error(f"Cannot plan the search: {e}")
    st.stop()
table, measured = search_view.state(sf, plan)
if table.missing():
    _scoring(plan, table)
elif unit != "ms" or _times(plan, table, model, latency_m):
    _front(plan, table, measured, unit, budgets)
