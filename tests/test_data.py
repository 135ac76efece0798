"""The text-set registry: hashes, the held-out split, upload validation, offline hub sets."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time

import pytest

from core import data, hub
from core.data import (
    HELDOUT_MODULES,
    DataError,
    get_text_set,
    list_text_sets,
    text_from_upload,
    text_set_from_text,
)

HUB_SETS = ("wikitext2", "c4", "ptb", "pile-val")


def test_registry_lists_all_sets() -> None:
    sets = {s["name"]: s for s in list_text_sets()}
    assert {"stdlib-code", "stdlib-heldout", *HUB_SETS} <= set(sets)
    assert not sets["stdlib-heldout"]["needs_hub"]
    assert all(sets[name]["needs_hub"] for name in HUB_SETS)
    assert all(s["description"] for s in sets.values())


def test_text_set_records_hash_and_size() -> None:
    text = "héllo wörld\n"
    ts = text_set_from_text("x", text, "d", "s")
    assert ts.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert ts.n_bytes == len(text.encode("utf-8")) == 14


def test_heldout_set_is_hashed_and_cached() -> None:
    ts = get_text_set("stdlib-heldout")
    assert ts.sha256 == hashlib.sha256(ts.text.encode("utf-8")).hexdigest()
    assert ts.n_bytes == len(ts.text.encode("utf-8"))
    assert ts.n_bytes > 400_000  # enough for 8192+ evaluation tokens
    assert get_text_set("stdlib-heldout") is ts
    assert "argparse" in ts.source
    assert "# ===== json/decoder.py =====" in ts.text


def test_stdlib_code_and_heldout_are_disjoint() -> None:
    code = {data._module_of(p) for p in data.stdlib_code_files()}
    held = {data._module_of(p) for p in data.stdlib_heldout_files()}
    assert held == set(HELDOUT_MODULES)
    assert not code & held
    assert {"os", "asyncio", "typing"} <= code
    assert not any("test" in p.parts[:-1] for p in data.stdlib_code_files())


def test_stdlib_code_has_source_and_topics() -> None:
    ts = get_text_set("stdlib-code")
    assert "# ===== os.py =====" in ts.text
    assert "# ===== pydoc topics =====" in ts.text
    assert "# ===== argparse.py =====" not in ts.text
    assert ts.n_bytes <= data.STDLIB_CODE_MAX_BYTES + 2_000_000


def test_unknown_set_lists_registered_names() -> None:
    with pytest.raises(DataError, match="unknown text set 'nope'.*stdlib-heldout"):
        get_text_set("nope")


@pytest.mark.parametrize("name", HUB_SETS)
@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_sets_fail_fast_offline(monkeypatch: pytest.MonkeyPatch, name: str, var: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"hub unreachable \(offline\?\)"):
        get_text_set(name)
    assert time.perf_counter() - start < 1.0


def test_hub_probe_failure_is_the_same_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub.socket, "create_connection", refuse)
    with pytest.raises(DataError, match=r"hub unreachable \(offline\?\).*unreachable"):
        get_text_set("wikitext2")


class _FakeDatasets:
    """Stands in for the datasets package: answers like a hub whose dataset still has a
    loading script, except on the hub's Parquet copy."""

    def __init__(self, script_only: bool) -> None:
        self.script_only, self.calls = script_only, []

    def load_dataset(self, path: str, *args: object, **kwargs: object) -> dict:
        self.calls.append(kwargs.get("revision"))
        if kwargs.get("revision") == data.PARQUET_REVISION:
            return {"sentence": ["a b", "c d"]}
        if self.script_only:
            raise RuntimeError(f"Dataset scripts are no longer supported, but found {path}.py")
        raise FileNotFoundError(f"{path}: no such split")


@pytest.mark.parametrize("script_only", [True, False])
def test_hub_loading_falls_back_to_parquet_and_names_other_failures(
    monkeypatch: pytest.MonkeyPatch, script_only: bool
) -> None:
    fake = _FakeDatasets(script_only)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(hub, "probe", lambda *a, **k: None)  # the hub answers
    if script_only:
        assert data.load_ptb() == "a b c d"
        assert fake.calls == [None, data.PARQUET_REVISION]
    else:
        with pytest.raises(DataError, match="'ptb_text_only' from the hub failed: .*no such split"):
            data.load_ptb()
        assert fake.calls == [None]


# ---------------------------------------------------------------- uploads


def _parquet_bytes(columns: dict[str, list[str]]) -> bytes:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    buf = io.BytesIO()
    pd.DataFrame(columns).to_parquet(buf)
    return buf.getvalue()


def test_upload_accepts_each_format() -> None:
    assert text_from_upload("a.txt", b"def f():\n    pass\n") == "def f():\n    pass\n"
    jsonl = "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["one", "two"]))
    assert text_from_upload("a.JSONL", jsonl.encode()) == "one\n\ntwo"
    csv = 'id,text\n1,"hello, world"\n2,second\n'
    assert text_from_upload("a.csv", csv.encode()) == "hello, world\n\nsecond"
    assert text_from_upload("a.parquet", _parquet_bytes({"text": ["p1", "p2"]})) == "p1\n\np2"


def test_upload_strips_utf8_bom() -> None:
    assert text_from_upload("a.txt", b"\xef\xbb\xbfhello") == "hello"


@pytest.mark.parametrize(
    ("filename", "payload", "message"),
    [
        ("a.txt", b"x" * 101, r"too large .*limit is 100 bytes"),
        ("a.txt", b"", "empty"),
        ("a.txt", b" \n\t\n ", "whitespace only"),
        ("a.txt", b"abc\x00def", "binary.*NUL"),
        ("a.txt", bytes(range(1, 32)) * 3, "binary.*non-printable"),
        ("a.txt", b"caf\xe9 latin-1", "not valid UTF-8"),
        ("a.jsonl", b'{"text": "ok"}\n{"body": "no"}\n', 'line 2 has no "text"'),
        ("a.jsonl", b'{"text": "ok"}\nnot json\n', "line 2 is not valid JSON"),
        ("a.csv", b"id,body\n1,hello\n", r'no "text" column \(columns: id, body\)'),
        ("a.parquet", b"not parquet at all", "not a parquet file"),
        ("a.docx", b"hello", r"unsupported file type \.docx; allowed: \.txt, \.jsonl"),
        ("README", b"hello", r"unsupported file type \(none\)"),
    ],
)
def test_upload_refusals(filename: str, payload: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        text_from_upload(filename, payload, max_bytes=100)


def test_upload_parquet_without_text_column() -> None:
    payload = _parquet_bytes({"body": ["a"]})
    with pytest.raises(DataError, match=r'no "text" column \(columns: body\)'):
        text_from_upload("a.parquet", payload)


def test_upload_parquet_needs_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: object, **kwargs: object) -> object:
        if name == "pyarrow":
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match="needs pyarrow: pip install pyarrow"):
        text_from_upload("a.parquet", b"PAR1....PAR1")
