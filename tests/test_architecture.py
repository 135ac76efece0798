"""Dependencies point one way: app_pages -> ui -> runs -> core, ui -> db, workers -> runs + db.

Each package is imported in a fresh interpreter (every module under it) and the top-level
names it pulled into ``sys.modules`` are checked against what it must not depend on.
The forbidden names are the project's real folders (checked below), so a renamed
folder cannot silently turn a rule into a no-op.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"app_pages", "core", "db", "runs", "ui", "workers"}

CHECK = """
import sys, importlib, pkgutil, pathlib
root = pathlib.Path({root!r})
sys.path.insert(0, str(root))
pkg = importlib.import_module({pkg!r})
for m in pkgutil.walk_packages(pkg.__path__, {pkg!r} + "."):
    # __main__ runs a CLI; Alembic's migration scripts run only inside Alembic.
    if not m.name.endswith("__main__") and ".migrations" not in m.name:
        importlib.import_module(m.name)
print(",".join(sorted({{n.split(".")[0] for n in sys.modules}})))
"""

RULES: dict[str, set[str]] = {
    "core": {"streamlit", "sqlalchemy", "plotly", "db", "ui", "app_pages", "workers", "runs"},
    "runs": {"streamlit", "sqlalchemy", "plotly", "db", "ui", "app_pages", "workers"},
    "db": {"streamlit", "torch", "core", "runs", "ui", "app_pages", "workers"},
    "workers": {"streamlit", "plotly", "ui", "app_pages"},
    "ui": {"app_pages", "workers"},
}

PAGE_IMPORTS = {"streamlit", "ui", "db", "pandas", "numpy"}  # what a thin page may use
PAGE_FUNCTION_MAX_LINES = 40


def _top_level_imports(pkg: str) -> set[str]:
    code = CHECK.format(root=str(ROOT), pkg=pkg)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.strip().split(","))


def test_rules_name_real_folders() -> None:
    folders = {p.name for p in ROOT.iterdir() if p.is_dir()}
    assert folders >= PROJECT, f"missing: {sorted(PROJECT - folders)}"
    assert not (ROOT / "pages").exists(), "Streamlit would auto-list a pages/ folder"
    named = set(RULES).union(*RULES.values())
    assert named & PROJECT == PROJECT, "every project package is covered by a rule"


@pytest.mark.parametrize("pkg", sorted(RULES))
def test_dependency_direction(pkg: str) -> None:
    leaked = _top_level_imports(pkg) & RULES[pkg]
    assert not leaked, f"{pkg} imports {sorted(leaked)}"


def _page_files() -> list[Path]:
    return sorted((ROOT / "app_pages").glob("*.py"))


def _imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", _page_files(), ids=lambda p: p.name)
def test_pages_are_thin(path: Path) -> None:
    """A page lays out widgets; the logic it shows lives in ui/ (and below it)."""
    tree = ast.parse(path.read_text())
    project = _imports(tree) & PROJECT
    assert project <= PAGE_IMPORTS, f"{path.name} imports {sorted(project - PAGE_IMPORTS)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = node.end_lineno - node.lineno + 1
            assert n <= PAGE_FUNCTION_MAX_LINES, f"{path.name}:{node.name} is {n} lines"


LONG_FUNCTION_LINES = 50  # workers/ and runs/ are read by every newcomer first


@pytest.mark.parametrize("pkg", ["runs", "workers"])
def test_no_long_functions(pkg: str) -> None:
    long = []
    for path in sorted((ROOT / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > LONG_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({n} lines)")
    assert not long, long
