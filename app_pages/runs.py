"""Runs: every job, live progress of the active ones, errors, cancel."""

from __future__ import annotations

import streamlit as st

from ui import runs_view

st.title("Runs")
st.caption("Progress refreshes every 2 seconds. Cancelling a running job stops it between layers.")
runs_view.active_jobs()
runs_view.workers()
runs_view.history()
