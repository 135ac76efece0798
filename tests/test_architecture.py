"""Dependencies point one way: pages -> ui -> db, workers -> core + db; core imports neither."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import sys, importlib, pkgutil, pathlib
root = pathlib.Path({root!r})
sys.path.insert(0, str(root))
pkg = importlib.import_module({pkg!r})
for m in pkgutil.walk_packages(pkg.__path__, {pkg!r} + "."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
print(",".join(sorted({{n.split(".")[0] for n in sys.modules}})))
"""


def _top_level_imports(pkg: str) -> set[str]:
    code = CHECK.format(root=str(ROOT), pkg=pkg)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.strip().split(","))


@pytest.mark.parametrize(
    "pkg, forbidden",
    [
        ("core", {"streamlit", "db", "workers", "ui", "pages", "sqlalchemy", "plotly"}),
        ("db", {"streamlit", "torch", "core", "workers", "ui"}),
        ("workers", {"streamlit", "ui", "plotly"}),
    ],
)
def test_dependency_direction(pkg: str, forbidden: set[str]) -> None:
    leaked = _top_level_imports(pkg) & forbidden
    assert not leaked, f"{pkg} imports {sorted(leaked)}"
