"""Calibration and evaluation text sets: a registry, like the methods.

A text set is registered by name with ``@register_text_set`` over a zero-argument
loader that returns the text. ``get_text_set(name)`` loads it once per process and
records its content hash and size, so every run can say exactly which text it used.

Sets:

- ``stdlib-code``: the training split of the bundled demo model. The ``.py`` files
  of the running interpreter's standard library (see ``stdlib_code_files`` for what
  is excluded, including the held-out modules), concatenated in sorted path order,
  each preceded by a ``# ===== <relative path> =====`` header, followed by the pydoc
  topics text (sorted by topic). Capped at ``STDLIB_CODE_MAX_BYTES`` of source
  (whole files, in path order; CPython 3.11 has about 10 MB, so nothing is cut there).
- ``stdlib-heldout``: only the modules in ``HELDOUT_MODULES`` (same format), never
  seen in training: the offline evaluation set.
- ``wikitext2``, ``c4``, ``ptb``, ``pile-val``: the standard public sets through
  the ``datasets`` package; they need the Hugging Face hub. When the hub is
  unreachable, or ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is ``1``, they fail
  at once with ``DataError("hub unreachable (offline?): ...")``.

User uploads go through ``text_from_upload`` (validation) and
``text_set_from_text`` (hashing); nothing is stored unless validation passes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core import hub

logger = logging.getLogger(__name__)

# Held out of the demo model's training data; they form ``stdlib-heldout``. All of
# them exist (as a module or a package) in CPython 3.10 to 3.13; about 570 KB of
# source on 3.11, so well over 8192 evaluation tokens.
HELDOUT_MODULES: tuple[str, ...] = (
    "argparse",
    "bisect",
    "calendar",
    "configparser",
    "csv",
    "difflib",
    "fractions",
    "heapq",
    "ipaddress",
    "json",
    "pprint",
    "shlex",
    "statistics",
    "textwrap",
)

# Top-level stdlib entries left out of ``stdlib-code`` besides the held-out modules:
# third-party packages, bundled tools and tests, generated codec tables, and
# build-specific files whose text differs between machines.
EXCLUDED_TOP_LEVEL: tuple[str, ...] = (
    "site-packages",
    "dist-packages",
    "idlelib",
    "lib2to3",
    "test",
    "encodings",
    "pydoc_data",  # its topics text is appended separately, as prose
    "turtledemo",
    "ensurepip",
)
EXCLUDED_DIR_NAMES: frozenset[str] = frozenset({"test", "tests", "__pycache__"})
EXCLUDED_PREFIXES: tuple[str, ...] = ("_sysconfigdata", "config-")

STDLIB_CODE_MAX_BYTES = 16 * 2**20  # cap on the source part of stdlib-code
HUB_MAX_BYTES = 32 * 2**20  # cap on the text taken from a hub set (pile-val is large)

MAX_NON_PRINTABLE_FRACTION = 0.1  # above this an upload is treated as binary
FILE_SEPARATOR = "\n\n# ===== {path} =====\n"


class DataError(ValueError):
    """A text set or an upload cannot be used; the message says why and what is allowed."""


@dataclass(frozen=True)
class TextSet:
    name: str
    text: str
    sha256: str  # hex sha256 of text.encode("utf-8")
    n_bytes: int  # len(text.encode("utf-8"))
    description: str
    source: str  # where the text came from, e.g. "python stdlib 3.11.7 (...)"


@dataclass(frozen=True)
class _Entry:
    name: str
    description: str
    needs_hub: bool
    loader: Callable[[], str]
    source: str


_REGISTRY: dict[str, _Entry] = {}


def register_text_set(
    name: str, description: str, *, needs_hub: bool = False, source: str | None = None
) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Register a zero-argument loader returning the text of set ``name``."""

    def decorator(loader: Callable[[], str]) -> Callable[[], str]:
        if name in _REGISTRY:
            raise DataError(f"text set {name!r} is already registered")
        _REGISTRY[name] = _Entry(name, description, needs_hub, loader, source or name)
        return loader

    return decorator


def list_text_sets() -> list[dict]:
    """Registered sets as ``{"name", "description", "needs_hub"}`` dicts, by name."""
    return [
        {"name": e.name, "description": e.description, "needs_hub": e.needs_hub}
        for e in sorted(_REGISTRY.values(), key=lambda e: e.name)
    ]


def text_set_from_text(name: str, text: str, description: str, source: str) -> TextSet:
    """Wrap ``text`` as a TextSet, recording its sha256 and UTF-8 size."""
    raw = text.encode("utf-8")
    return TextSet(
        name=name,
        text=text,
        sha256=hashlib.sha256(raw).hexdigest(),
        n_bytes=len(raw),
        description=description,
        source=source,
    )


@functools.lru_cache(maxsize=16)
def get_text_set(name: str) -> TextSet:
    """Load a registered set (once per process). Unknown names raise DataError."""
    entry = _REGISTRY.get(name)
    if entry is None:
        allowed = ", ".join(sorted(_REGISTRY))
        raise DataError(f"unknown text set {name!r}; registered sets: {allowed}")
    if entry.needs_hub:
        _require_hub(name)
    text = entry.loader()
    if not text.strip():
        raise DataError(f"text set {name!r} is empty")
    logger.info("loaded text set %s (%d chars)", name, len(text))
    return text_set_from_text(name, text, entry.description, entry.source)


# ---------------------------------------------------------------- standard library


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_version() -> str:
    import platform

    return platform.python_version()


def _module_of(rel: Path) -> str:
    """Top-level module or package name of a path relative to the stdlib root."""
    first = rel.parts[0]
    return first[:-3] if len(rel.parts) == 1 and first.endswith(".py") else first


def _is_excluded(rel: Path) -> bool:
    top = rel.parts[0]
    if top in EXCLUDED_TOP_LEVEL or top.startswith(EXCLUDED_PREFIXES):
        return True
    return any(part in EXCLUDED_DIR_NAMES for part in rel.parts[:-1])


@functools.lru_cache(maxsize=4)
def _all_stdlib_files(root: Path) -> tuple[Path, ...]:
    """Every included ``.py`` file (held-out ones too), relative, in sorted order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        # Prune while walking: site-packages alone can hold more files than the stdlib.
        dirnames[:] = [d for d in dirnames if not _is_excluded(rel_dir / d / "x.py")]
        found.extend(rel_dir / f for f in filenames if f.endswith(".py"))
    return tuple(sorted(rel for rel in found if not _is_excluded(rel)))


def stdlib_code_files(root: Path | None = None) -> list[Path]:
    """Relative paths of the training files: everything but the held-out modules."""
    root = root or stdlib_dir()
    held = set(HELDOUT_MODULES)
    return [rel for rel in _all_stdlib_files(root) if _module_of(rel) not in held]


def stdlib_heldout_files(root: Path | None = None) -> list[Path]:
    """Relative paths of the held-out modules' files, in sorted order."""
    root = root or stdlib_dir()
    held = set(HELDOUT_MODULES)
    return [rel for rel in _all_stdlib_files(root) if _module_of(rel) in held]


def _concat_files(root: Path, files: Iterable[Path], max_bytes: int | None = None) -> str:
    """Concatenate whole files with a path header each, stopping before ``max_bytes``."""
    parts: list[str] = []
    total = 0
    for rel in files:
        chunk = FILE_SEPARATOR.format(path=rel.as_posix()) + (root / rel).read_text(
            encoding="utf-8", errors="replace"
        )
        size = len(chunk.encode("utf-8"))
        if max_bytes is not None and total + size > max_bytes:
            logger.info("stdlib text capped at %d bytes before %s", max_bytes, rel)
            break
        parts.append(chunk)
        total += size
    return "".join(parts).lstrip("\n")


def pydoc_topics_text() -> str:
    """The pydoc topics (the language reference's help texts), sorted by key."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def _stdlib_source(what: str) -> str:
    return f"python stdlib {python_version()} ({what})"


@register_text_set(
    "stdlib-code",
    "Python standard library source (minus tests and held-out modules) plus pydoc "
    "topics: the demo model's training split",
    source=_stdlib_source("all modules except tests and HELDOUT_MODULES, + pydoc topics"),
)
def load_stdlib_code() -> str:
    root = stdlib_dir()
    code = _concat_files(root, stdlib_code_files(root), STDLIB_CODE_MAX_BYTES)
    return code + "\n\n# ===== pydoc topics =====\n" + pydoc_topics_text()


@register_text_set(
    "stdlib-heldout",
    "Held-out Python standard library modules (" + ", ".join(HELDOUT_MODULES) + "): "
    "never seen by the demo model; the offline evaluation set",
    source=_stdlib_source("modules " + ", ".join(HELDOUT_MODULES)),
)
def load_stdlib_heldout() -> str:
    root = stdlib_dir()
    return _concat_files(root, stdlib_heldout_files(root))


# ---------------------------------------------------------------- hub sets


def _require_hub(name: str) -> None:
    """Fail fast, before ``datasets`` can spend minutes retrying, when offline."""
    why = hub.probe()
    if why:
        raise DataError(f"hub unreachable (offline?): {why}, so text set {name!r} can't load")


PARQUET_REVISION = "refs/convert/parquet"  # the hub's automatic Parquet copy of a dataset


def _load_dataset(*args: object, **kwargs: object) -> object:
    """``datasets.load_dataset`` with our errors. A dataset still defined by a loading
    script (which datasets >= 4 refuses to run) is read from the hub's Parquet copy."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError("hub text sets need the datasets package: pip install datasets") from exc
    try:
        try:
            return datasets.load_dataset(*args, **kwargs)
        except RuntimeError as exc:
            if "scripts are no longer supported" not in str(exc) or "revision" in kwargs:
                raise
            return datasets.load_dataset(*args, revision=PARQUET_REVISION, **kwargs)
    except DataError:
        raise
    except Exception as exc:  # the probe passed, so the hub answered: say what failed
        raise DataError(f"loading {args[0]!r} from the hub failed: {exc}") from exc


def _join_capped(texts: Iterable[str], sep: str, max_bytes: int = HUB_MAX_BYTES) -> str:
    """Join rows with ``sep`` until ``max_bytes`` of UTF-8 would be exceeded."""
    parts: list[str] = []
    total = 0
    for text in texts:
        size = len(text.encode("utf-8")) + len(sep)
        if parts and total + size > max_bytes:
            break
        parts.append(text)
        total += size
    return sep.join(parts)


@register_text_set(
    "wikitext2",
    "WikiText-2 raw, test split, rows joined with blank lines (as GPTQ does)",
    needs_hub=True,
    source="hub: wikitext / wikitext-2-raw-v1 / test",
)
def load_wikitext2() -> str:
    ds = _load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    return "\n\n".join(ds["text"])


@register_text_set(
    "c4",
    "C4 English validation shard 00000-of-00008 (documents joined with blank lines)",
    needs_hub=True,
    source="hub: allenai/c4 en/c4-validation.00000-of-00008.json.gz",
)
def load_c4() -> str:
    ds = _load_dataset(
        "allenai/c4",
        data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
        split="validation",
    )
    return _join_capped(ds["text"], "\n\n")


@register_text_set(
    "ptb",
    "Penn Treebank (text only), test split, sentences joined with spaces",
    needs_hub=True,
    source="hub: ptb_text_only / penn_treebank / test",
)
def load_ptb() -> str:
    ds = _load_dataset("ptb_text_only", "penn_treebank", split="test")
    return " ".join(ds["sentence"])


@register_text_set(
    "pile-val",
    "The Pile validation sample (mit-han-lab/pile-val-backup), first 32 MiB",
    needs_hub=True,
    source="hub: mit-han-lab/pile-val-backup / validation",
)
def load_pile_val() -> str:
    ds = _load_dataset("mit-han-lab/pile-val-backup", split="validation")
    return _join_capped(ds["text"], "\n\n")


# ---------------------------------------------------------------- uploads


def _decode_text(filename: str, data: bytes) -> str:
    """UTF-8 text of a text-like upload, refusing binary or undecodable bytes."""
    if b"\x00" in data:
        raise DataError(f"{filename}: looks binary (contains NUL bytes); upload a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{filename}: not valid UTF-8 (byte {exc.start}: {exc.reason}); save the file as UTF-8"
        ) from exc
    _refuse_binary_text(filename, text)
    return text


def _refuse_binary_text(filename: str, text: str) -> None:
    sample = text[: 1 << 16]
    bad = sum(1 for ch in sample if not (ch.isprintable() or ch in "\t\n\r\f\v"))
    if sample and bad / len(sample) > MAX_NON_PRINTABLE_FRACTION:
        raise DataError(
            f"{filename}: looks binary ({bad / len(sample):.0%} non-printable characters); "
            "upload plain text"
        )


def _too_much_text(filename: str, max_text: int) -> DataError:
    return DataError(
        f"{filename}: decodes to more than {human_bytes(max_text)} of text, the limit for "
        "an upload; upload a smaller sample"
    )


def _text_from_txt(filename: str, data: bytes, max_text: int) -> str:
    if len(data) > max_text + 3:  # UTF-8 text is never longer than its bytes (+ a BOM)
        raise _too_much_text(filename, max_text)
    return _decode_text(filename, data)


def _text_from_jsonl(filename: str, data: bytes, max_text: int) -> str:
    text = _decode_text(filename, data)
    rows: list[str] = []
    total = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{filename}: line {lineno} is not valid JSON ({exc.msg})") from exc
        except RecursionError:
            raise DataError(f"{filename}: line {lineno} is nested too deeply") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError(
                f'{filename}: line {lineno} has no "text" string field; each line must be '
                'a JSON object like {"text": "..."}'
            )
        total += len(obj["text"]) + 2
        if total > max_text:
            raise _too_much_text(filename, max_text)
        rows.append(obj["text"])
    return "\n\n".join(rows)


def _text_column(filename: str, frame: object) -> str:
    import pandas as pd

    assert isinstance(frame, pd.DataFrame)
    if "text" not in frame.columns:
        cols = ", ".join(map(str, frame.columns)) or "none"
        raise DataError(f'{filename}: no "text" column (columns: {cols})')
    return "\n\n".join(str(v) for v in frame["text"].dropna())


def _text_from_csv(filename: str, data: bytes, max_text: int) -> str:
    import csv

    import pandas as pd

    text = _decode_text(filename, data)
    if len(text) > max_text:
        raise _too_much_text(filename, max_text)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error, ValueError) as exc:
        raise DataError(f"{filename}: cannot parse as CSV ({exc})") from exc
    return _text_column(filename, frame)


MAX_PARQUET_ROWS = 1_000_000  # rows of an uploaded .parquet (each costs memory even if empty)


def _parquet_file(filename: str, data: bytes, max_text: int) -> object:
    """The ParquetFile of an upload whose ``text`` column's pages, as stored uncompressed,
    fit in ``max_text`` and whose rows are at most MAX_PARQUET_ROWS; read as dictionary
    (a value repeated a million times is held once)."""
    import pyarrow.parquet as pq

    names = pq.ParquetFile(io.BytesIO(data)).schema_arrow.names
    if "text" not in names:
        raise DataError(f'{filename}: no "text" column (columns: {", ".join(names) or "none"})')
    pf = pq.ParquetFile(io.BytesIO(data), read_dictionary=["text"])
    meta = pf.metadata
    if meta.num_rows > MAX_PARQUET_ROWS:
        raise DataError(f"{filename}: {meta.num_rows} rows; at most {MAX_PARQUET_ROWS}")
    col = names.index("text")
    stored = sum(
        meta.row_group(g).column(col).total_uncompressed_size for g in range(meta.num_row_groups)
    )
    if stored > max_text:
        raise _too_much_text(filename, max_text)
    return pf


def _decoded_bytes(column: object) -> int:
    """UTF-8 bytes the non-null values of an Arrow text column decode to (+ 2 per row for
    the blank line between rows), counted without decoding them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    assert isinstance(column, pa.ChunkedArray)
    total = 0
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            sizes = pc.binary_length(chunk.dictionary.cast(pa.large_string()))
            lengths = pc.take(sizes, chunk.indices)
        else:
            lengths = pc.binary_length(chunk.cast(pa.large_string()))
        total += int(pc.sum(lengths).as_py() or 0) + 2 * (len(chunk) - chunk.null_count)
    return total


def _parquet_rows(filename: str, data: bytes, max_text: int) -> list[object]:
    """The ``text`` column, one Arrow table per row group, refused as soon as its decoded
    size passes ``max_text`` (before any string is built)."""
    pf = _parquet_file(filename, data, max_text)
    tables, total = [], 0
    for g in range(pf.metadata.num_row_groups):  # type: ignore[attr-defined]
        table = pf.read_row_group(g, columns=["text"])  # type: ignore[attr-defined]
        total += _decoded_bytes(table.column("text"))
        if total > max_text:
            raise _too_much_text(filename, max_text)
        tables.append(table)
    return tables


def _text_from_parquet(filename: str, data: bytes, max_text: int) -> str:
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise DataError(f"{filename}: reading .parquet needs pyarrow: pip install pyarrow") from exc
    if not data.startswith(b"PAR1"):
        raise DataError(f"{filename}: not a parquet file (missing PAR1 header)")
    try:
        tables = _parquet_rows(filename, data, max_text)
        values = [v for t in tables for v in t.column("text").to_pylist()]  # type: ignore[attr-defined]
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types on corrupt files
        raise DataError(f"{filename}: cannot read parquet ({_first_line(exc)})") from exc
    text = "\n\n".join(_as_text(v) for v in values if v is not None)
    _refuse_binary_text(filename, text)
    return text


def _as_text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def human_bytes(n: int) -> str:
    """``n`` bytes for a message: "195.0 MiB"."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


# One reader per accepted extension: (filename, bytes, text cap) -> text, raising DataError.
_UPLOAD_READERS: dict[str, Callable[[str, bytes, int], str]] = {
    ".txt": _text_from_txt,
    ".jsonl": _text_from_jsonl,
    ".csv": _text_from_csv,
    ".parquet": _text_from_parquet,
}
UPLOAD_EXTENSIONS: tuple[str, ...] = tuple(_UPLOAD_READERS)


MAX_UPLOAD_BYTES = 50 * 2**20  # an uploaded file
MAX_UPLOAD_TEXT_BYTES = 50 * 2**20  # the text it decodes to (a .parquet can expand 1000x)


def text_from_upload(
    filename: str,
    data: bytes,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_text: int = MAX_UPLOAD_TEXT_BYTES,
) -> str:
    """Validate an uploaded file and return its text; refuse bad files with DataError.

    Accepted: ``.txt`` (the whole file), ``.jsonl`` (the ``text`` field of each
    line), ``.csv`` and ``.parquet`` (the ``text`` column); rows are joined with
    blank lines. The file is at most ``max_bytes`` and its text at most ``max_text``
    (UTF-8 bytes, blank lines between rows included), checked before the text is built:
    for .parquet from its metadata and the dictionary-encoded column, never by decoding.
    """
    ext = Path(filename).suffix.lower()
    if ext not in UPLOAD_EXTENSIONS:
        allowed = ", ".join(UPLOAD_EXTENSIONS)
        raise DataError(f"{filename}: unsupported file type {ext or '(none)'}; allowed: {allowed}")
    if len(data) > max_bytes:
        raise DataError(
            f"{filename}: too large ({human_bytes(len(data))}); "
            f"the limit is {human_bytes(max_bytes)}"
        )
    if not data:
        raise DataError(f"{filename}: the file is empty")
    text = _UPLOAD_READERS[ext](filename, data, max_text)
    if not text.strip():
        raise DataError(f"{filename}: no text (empty or whitespace only)")
    return text
