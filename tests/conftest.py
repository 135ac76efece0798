"""Shared fixtures. Tests run offline, on the CPU, against temporary SQLite files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Never reach the hub from a test, whatever the machine.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["COMPRESSLAB_NO_AUTOWORKER"] = "1"


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite database, also the default for code that reads DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path / "data"))
    return url


@pytest.fixture
def sf(db_url: str):
    from db.session import session_factory

    return session_factory(db_url)
