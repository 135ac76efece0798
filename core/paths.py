"""Where the app's data folder is, as ``db.session.data_dir`` finds it (core does not import
db): ``$COMPRESSLAB_DATA``, else ``data/`` beside the code."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "COMPRESSLAB_DATA"
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The data folder (not created here)."""
    return Path(os.environ.get(DATA_ENV, "").strip() or REPO_ROOT / "data").expanduser()
