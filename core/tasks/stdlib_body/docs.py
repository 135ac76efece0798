"""The ``stdlib_body`` task's documents, read from the data file beside this module
(lm-eval calls :func:`load` through the YAML's ``custom_dataset``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_FILE = Path(__file__).with_name("stdlib_body.jsonl")


def rows(path: Path = DATA_FILE) -> list[dict[str, Any]]:
    """The examples (the file's first line is a header, not an example)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[1:] if line.strip()]


def load(**_: Any) -> Any:
    """A ``datasets.DatasetDict`` with one ``test`` split."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows())})
