"""Build the ``stdlib_body`` task's examples from the held-out standard-library modules.

One example per function of ``core.data.HELDOUT_MODULES`` (never seen by the demo
model in training): the context is the function's signature and docstring (dedented
so that ``def`` starts the line), the answer is the real first line of its body
after the docstring, and three distractors are first body lines of other functions
of the same modules, re-indented like the answer. A model that has learned Python
should find the real line more likely than lines that belong elsewhere.

Deterministic: the functions are read in sorted file order and sampled with
``random.Random(SEED)``; ``python -m core.tasks.stdlib_body.build`` rewrites the
shipped data file (its header records the Python version it was built from).
"""

from __future__ import annotations

import ast
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.data import stdlib_dir, stdlib_heldout_files

SEED = 0  # sampling of the examples and of their distractors
N_EXAMPLES = 200  # examples in the shipped file
N_CHOICES = 4  # the real line + 3 distractors
MAX_CONTEXT_LINES = 12  # signature + docstring lines; longer functions are skipped
MIN_LINE, MAX_LINE = 8, 72  # characters of a body line (stripped) to be an answer
DATA_FILE = Path(__file__).with_name("stdlib_body.jsonl")


@dataclass(frozen=True)
class Function:
    """One function of the source: where it is, its context and its first body line."""

    where: str  # "json/decoder.py:123"
    context: str  # signature (+ docstring) lines, dedented, ending with a newline
    body_line: str  # first statement line after the docstring, without indentation
    indent: str  # that line's indentation after dedenting


def _first_statement(node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.stmt | None:
    body = node.body
    has_doc = (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )
    rest = body[1:] if has_doc else body
    return rest[0] if rest else None


def _function(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str], where: str):
    first = _first_statement(node)
    if first is None or first.lineno - node.lineno > MAX_CONTEXT_LINES:
        return None
    head = lines[node.lineno - 1 : first.lineno - 1]
    line = lines[first.lineno - 1]
    margin = len(head[0]) - len(head[0].lstrip())
    if any(h.strip() and len(h) - len(h.lstrip()) < margin for h in head):
        return None  # continuation lines left of the def: do not dedent
    body = line.strip()
    if not MIN_LINE <= len(body) <= MAX_LINE or body.startswith("#"):
        return None
    indent = line[margin : len(line) - len(line.lstrip())]
    context = "".join(h[margin:] + "\n" if h.strip() else "\n" for h in head)
    return Function(where, context, body, indent)


def functions(root: Path | None = None) -> Iterator[Function]:
    """Every usable function of the held-out modules, in file and line order."""
    root = root or stdlib_dir()
    for rel in stdlib_heldout_files(root):
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                f = _function(node, lines, f"{rel.as_posix()}:{node.lineno}")
                if f is not None:
                    yield f


def examples(fns: list[Function], n: int = N_EXAMPLES, seed: int = SEED) -> list[dict]:
    """``n`` multiple-choice examples: context, choices (real line at ``label``), source.

    Body lines that occur in more than one function are not used (their answer would
    be ambiguous), nor as distractors."""
    fns = sorted(fns, key=lambda f: f.where)
    counts: dict[str, int] = {}
    for f in fns:
        counts[f.body_line] = counts.get(f.body_line, 0) + 1
    unique = [f for f in fns if counts[f.body_line] == 1]
    rng = random.Random(seed)
    picked = rng.sample(unique, min(n, len(unique)))
    out = []
    for f in picked:
        others = [g.body_line for g in rng.sample(unique, N_CHOICES + 2) if g is not f]
        choices = [f.body_line, *others[: N_CHOICES - 1]]
        rng.shuffle(choices)
        out.append(
            {
                "context": f.context,
                "choices": [f.indent + c for c in choices],
                "label": choices.index(f.body_line),
                "source": f.where,
            }
        )
    return out


def header() -> dict:
    v = sys.version_info
    return {"built_from": f"python stdlib {v.major}.{v.minor}.{v.micro}", "seed": SEED}


def build(path: Path = DATA_FILE) -> int:
    """Write the data file (a header line, then one JSON example per line)."""
    rows = examples(list(functions()))
    text = "\n".join(json.dumps(r, sort_keys=True) for r in [header(), *rows]) + "\n"
    path.write_text(text, encoding="utf-8")
    return len(rows)


if __name__ == "__main__":
    print(f"{build()} examples written to {DATA_FILE}")
