"""Reading Plotly figure specs in tests."""

from __future__ import annotations

import base64

import numpy as np


def values(v: object) -> list:
    """Plotly sends numeric arrays base64-encoded ({"dtype", "bdata"}); decode them."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)  # type: ignore[call-overload]
