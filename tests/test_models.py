"""Model loading: clear, fast failures for missing folders and an unreachable hub."""

from __future__ import annotations

import socket
import time

import pytest

from core.errors import ModelLoadError
from core.models import content_hash, load_model


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket closes


def test_offline_flag_fails_at_once_with_the_reason(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"^hub unreachable \(offline\?\): HF_HUB_OFFLINE=1"):
        load_model("gpt2-not-cached/anything")
    assert time.monotonic() - t0 < 10


def test_unreachable_endpoint_fails_within_seconds(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as e:
        load_model("some-org/some-model")
    assert str(e.value).startswith("hub unreachable (offline?): cannot connect to 127.0.0.1")
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    "spec, message",
    [
        ("./no/such/folder", "model not found: folder './no/such/folder' does not exist"),
        ("a/b/c", "model not found: 'a/b/c' is neither a folder nor a hub id"),
        ("  ", "no model given"),
    ],
)
def test_bad_model_specs(spec: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(spec)


def test_a_folder_without_a_model_is_refused(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(ModelLoadError, match="cannot load a causal LM from folder"):
        load_model(str(tmp_path))


def test_local_folder_round_trip_and_content_hash(tmp_path) -> None:
    tiny = load_model("tiny-random")
    assert tiny.note == "random weights"
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    assert again.n_params == tiny.n_params
    assert again.revision == content_hash(tmp_path) and again.revision.startswith("sha256:")
