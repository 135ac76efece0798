"""Where the app's files go: the data folder, as ``db.session.data_dir`` finds it (core does
not import db), and the one naming scheme of temporary files that ``workers.gc`` cleans."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DATA_ENV = "COMPRESSLAB_DATA"
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The data folder (not created here)."""
    return Path(os.environ.get(DATA_ENV, "").strip() or REPO_ROOT / "data").expanduser()


def temp_path(target: Path, suffix: str = "") -> Path:
    """A temporary name beside ``target`` that names its writer's process:
    ``.<name>.<pid>.<random>[suffix].tmp``. A cleaner removes such a name only when that
    process is gone or the entry is old (see ``workers.gc``)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}{suffix}.tmp")


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``, written under :func:`temp_path` and renamed into
    place: readers see the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
