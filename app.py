"""CompressLab: `streamlit run app.py`. A router only: pages live in app_pages/, widgets in ui/."""

from __future__ import annotations

import streamlit as st

from ui import auth, shell
from ui.worker import ensure_local_worker, maybe_recover

st.set_page_config(page_title="CompressLab", page_icon=":material/compress:", layout="wide")

sf, url = shell.session(), shell.db_url()
auth.gate(sf)  # the login form (or a refusal) until someone is signed in
navigation = st.navigation(shell.pages())
maybe_recover(sf, url)
shell.sidebar(ensure_local_worker(sf, url))
navigation.run()
