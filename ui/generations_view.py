"""Generations side by side: a run's greedy continuations beside the uncompressed
model's, the first differing token marked; several runs' continuations of one prompt in
columns; the prompts box of New run.

The HTML is built from escaped text only (:func:`html.escape`), then shown with
``st.html``."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import streamlit as st

from core.generate import MAX_PROMPT_CHARS, MAX_PROMPTS, first_difference
from runs import catalogue as cat

STYLE = """<style>
.cl-gen {display: grid; gap: 0.6rem; margin-bottom: 0.8rem;}
.cl-gen pre {white-space: pre-wrap; margin: 0; padding: 0.5rem; border-radius: 0.3rem;
  background: rgba(128,128,128,0.08); font-size: 0.85rem;}
.cl-gen h5 {margin: 0 0 0.2rem 0; font-size: 0.85rem;}
.cl-prompt {opacity: 0.55;}
.cl-first-diff {background: #ffd54f; color: #000; outline: 1px solid #e65100;}
.cl-after-diff {text-decoration: underline dotted #e65100;}
</style>"""


def _visible(piece: str) -> str:
    """A token's text with whitespace made visible (inside the mark only)."""
    return piece.replace(" ", "·").replace("\n", "↵\n").replace("\t", "→") or "∅"


def marked_html(pieces: Sequence[str], first_diff: int | None) -> str:
    """A continuation as HTML: the token at ``first_diff`` marked, the rest after it
    underlined; all text escaped."""
    if first_diff is None or first_diff >= len(pieces):
        return html.escape("".join(pieces))
    k = first_diff
    return (
        html.escape("".join(pieces[:k]))
        + '<mark class="cl-first-diff" title="first token that differs from the baseline">'
        + html.escape(_visible(pieces[k]))
        + "</mark>"
        + f'<span class="cl-after-diff">{html.escape("".join(pieces[k + 1 :]))}</span>'
    )


def _column(title: str, prompt: str, body: str) -> str:
    return (
        f"<div><h5>{html.escape(title)}</h5><pre>"
        f'<span class="cl-prompt">{html.escape(prompt)}</span>{body}</pre></div>'
    )


def columns_html(prompt: str, columns: Sequence[tuple[str, str]]) -> str:
    """One prompt's continuations in columns: (title, body HTML) each."""
    grid = f"grid-template-columns: repeat({len(columns)}, minmax(0, 1fr));"
    cells = "".join(_column(t, prompt, b) for t, b in columns)
    return f'<div class="cl-gen" style="{grid}">{cells}</div>'


def pair_html(row: dict[str, Any], run_title: str = "This run") -> str:
    """A stored generation row: baseline and run side by side, the first difference marked
    on both."""
    k = row.get("first_diff")
    base, run = row.get("baseline") or {}, row.get("run") or {}
    return columns_html(
        str(row.get("prompt", "")),
        [
            ("Baseline (uncompressed)", marked_html(base.get("pieces") or [], k)),
            (run_title, marked_html(run.get("pieces") or [], k)),
        ],
    )


def summary(rows: Sequence[dict[str, Any]]) -> str:
    same = sum(r.get("first_diff") is None for r in rows)
    n = rows[0].get("max_new_tokens", "?") if rows else "?"
    return (
        f"Greedy continuations of {n} tokens (seed {rows[0].get('seed', 0) if rows else 0}): "
        f"{same} of {len(rows)} identical to the uncompressed model's. Marked: the first "
        "token that differs; underlined: what follows it."
    )


def generations_section(job: Any) -> None:
    """The Run page: every prompt, baseline beside this run."""
    rows = (job.result or {}).get(cat.GENERATIONS.key) or []
    st.subheader("Generations")
    if not rows:
        st.caption("No generations stored for this run (it ran before they were recorded).")
        return
    st.caption(summary(rows))
    st.html(STYLE + "".join(pair_html(r, f"Run #{job.id}") for r in rows))


def runs_columns(jobs: Sequence[Any], prompt: str) -> list[tuple[str, str]]:
    """The baseline (first run's) and each run's continuation of ``prompt``, each run's
    first difference from its own baseline marked."""
    cols: list[tuple[str, str]] = []
    for j in jobs:
        row = next(
            (
                r
                for r in (j.result or {}).get(cat.GENERATIONS.key) or []
                if r.get("prompt") == prompt
            ),
            None,
        )
        if row is None:
            continue
        base, run = row.get("baseline") or {}, row.get("run") or {}
        if not cols:
            cols.append((f"Baseline ({j.model})", html.escape("".join(base.get("pieces") or []))))
        k = first_difference(base.get("ids") or [], run.get("ids") or [])
        cols.append((f"#{j.id} {j.recipe_label}", marked_html(run.get("pieces") or [], k)))
    return cols


def common_prompts(jobs: Sequence[Any]) -> list[str]:
    """Prompts every one of ``jobs`` continued, in the first job's order."""
    sets = [
        [r.get("prompt") for r in (j.result or {}).get(cat.GENERATIONS.key) or []] for j in jobs
    ]
    if not sets:
        return []
    return [p for p in sets[0] if isinstance(p, str) and all(p in s for s in sets[1:])]


def compare_section(jobs: Sequence[Any], *, key: str) -> None:
    """Several runs' continuations of one prompt, in columns (Run side by side, Compare)."""
    with_gen = [j for j in jobs if (j.result or {}).get(cat.GENERATIONS.key)][:6]
    prompts = common_prompts(with_gen)
    if len(with_gen) < 1 or not prompts:
        return
    st.subheader("Generations side by side")
    prompt = st.selectbox(
        "Prompt", prompts, key=key, format_func=lambda p: p.strip().splitlines()[0][:80]
    )
    st.caption(
        "Greedy continuations of the same prompt; marked: each run's first token that "
        "differs from the uncompressed model's."
    )
    st.html(STYLE + columns_html(prompt, runs_columns(with_gen, prompt)))


def prompt_editor() -> list[str]:
    """New run: the prompts continued greedily (blocks separated by a line '---')."""
    with st.expander("Generations: prompts to continue (optional)"):
        text = st.text_area(
            "Prompts, separated by a line holding only ---",
            key="gen_prompts",
            height=120,
            help=f"Empty: the model's own prompt set. At most {MAX_PROMPTS} prompts of at most "
            f"{MAX_PROMPT_CHARS} characters; the baseline and the run continue each one.",
        )
    return split_prompts(text)


def split_prompts(text: str) -> list[str]:
    """Prompts typed in one box, separated by lines holding only '---' (the newline before
    a separator ends its prompt; blank prompts are dropped)."""
    blocks, cur = [], []
    for line in (text or "").split("\n"):
        if line.strip() == "---":
            blocks.append("\n".join(cur) + "\n")
            cur = []
        else:
            cur.append(line)
    blocks.append("\n".join(cur))
    return [b for b in blocks if b.strip()]
