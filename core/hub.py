"""Is the Hugging Face hub usable? Offline flags and a fast TCP probe of HF_ENDPOINT.

Libraries retry for minutes when the network is gone; a job should instead fail in
seconds with "hub unreachable (offline?)".
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0  # seconds before the hub counts as unreachable


def offline_flag() -> str | None:
    """The environment variable that puts the hub offline, if one does."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def probe(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub accepts a connection, else why not (one short phrase)."""
    flag = offline_flag()
    if flag:
        return f"{flag}=1"
    host, port = endpoint()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc})"


def reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    return probe(timeout) is None
