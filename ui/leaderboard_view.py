"""The Leaderboard's filters beyond its columns: tags and any recipe parameter."""

from __future__ import annotations

from typing import Any

import streamlit as st

from db import queue
from ui.frames import FilterError, matches_params, parse_param_filter, text_label


def tag_and_param_filter(jobs: list[Any]) -> set[int]:
    """Ids of the runs that carry one of the chosen tags (none chosen: any) and satisfy
    the parameter filter ("bits=4, group_size>=64")."""
    c1, c2 = st.columns([1, 2])
    tags = sorted({t for j in jobs for t in j.tags})
    chosen = c1.multiselect("Tag", tags, key="lb_tag", placeholder="any")
    text = c2.text_input(
        "Parameters",
        key="lb_params",
        placeholder="bits=4, group_size>=64, method=gptq",
        help="Any recipe parameter or setting: name=value, name>=value, name<value; "
        "several separated by commas must all hold.",
    )
    try:
        clauses = parse_param_filter(text)
    except FilterError as e:
        st.error(str(e))
        clauses = []
    return {
        j.id
        for j in jobs
        if (not chosen or set(chosen) & set(j.tags)) and matches_params(j, clauses)
    }


class _Labels(dict):
    def __missing__(self, key: str) -> str:
        return key


def upload_labels(sf: queue.Factory) -> dict[str, str]:
    """Uploaded set name -> "file.txt (2.1 kB, sha256 140f5565ae38)"; other names as they are."""
    return _Labels({b.name: text_label(b) for b in queue.list_texts(sf)})
