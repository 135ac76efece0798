"""Sharing runs: export a selection as CSV or as a JSON bundle, import a teammate's bundle.

A bundle holds finished runs with everything needed to judge them: recipe, settings,
metrics, fingerprint and (optionally) the per-layer statistics. On import every run's
fingerprint hash is recomputed (``db.queue.fingerprint_hash``), runs already in the
database (or twice in the bundle) are skipped, and each imported run keeps its origin:
where it was first measured.

Everything but :func:`existing_hashes` and :func:`import_bundle` is pure.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import math
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import queue
from db.models import SUCCEEDED, Job, LayerStat
from runs import catalogue as cat
from runs import generations, tasks
from runs.records import RunResult

BUNDLE_FORMAT = "compresslab-bundle"
BUNDLE_VERSION = 1
LOCAL = "local"  # the origin of runs measured by this installation's workers
UNKNOWN_ORIGIN = "unknown (the bundle claimed this installation)"
MAX_RUNS = 5000  # a bundle larger than this is refused: nobody shares that many by hand


class BundleError(ValueError):
    """A file that is not a usable bundle; the message says what is wrong."""


def default_origin() -> str:
    """Who exports: user@host, what teammates see as the origin of these runs."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in a container
        user = "someone"
    return f"{user}@{socket.gethostname()}"


def run_record(job: Any, layers: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One finished run as a plain dict (``layers``: its per-layer rows, or None)."""
    rec = {
        "fingerprint_hash": job.fingerprint_hash,
        "fingerprint": job.fingerprint,
        "model": job.model,
        "recipe_label": job.recipe_label,
        "spec": job.spec,
        "result": job.result,
        "origin": job.origin or LOCAL,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "sweep_id": job.sweep_id,
        "source_id": job.id,  # its id where it came from, for the teammate's reference
        "name": getattr(job, "name", None),
        "tags": list(getattr(job, "tags", None) or []),
        "notes": getattr(job, "notes", None),
    }
    if layers is not None:
        rec["layers"] = list(layers)
    return rec


def make_bundle(
    jobs: Iterable[Any],
    layers: dict[int, list[dict[str, Any]]] | None = None,
    *,
    origin: str,
    now: float | None = None,
    texts: Sequence[Any] = (),
    with_text: bool = True,
) -> dict[str, Any]:
    """A bundle of finished ``jobs``; ``layers`` maps job id -> layer rows to include;
    ``texts``: the uploaded sets they used (``db.models.TextBlob``s), named by file name,
    size and SHA-256, with their text unless ``with_text`` is False."""
    runs = [run_record(j, (layers or {}).get(j.id) if layers is not None else None) for j in jobs]
    out = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "exported_by": origin,
        "exported_at": time.time() if now is None else now,
        "runs": runs,
    }
    if texts:
        out["texts"] = [text_record(b, with_text) for b in texts]
    return out


def text_record(blob: Any, with_text: bool = True) -> dict[str, Any]:
    rec = {"name": blob.name, "filename": blob.filename, "sha256": blob.sha256}
    rec["n_bytes"] = int(blob.n_bytes)
    if with_text:
        rec["text"] = blob.text
    return rec


def uploads_of(jobs: Iterable[Any]) -> list[str]:
    """The uploaded text sets ("upload:<sha12>") the runs used, in first-use order."""
    out: list[str] = []
    for j in jobs:
        spec = j.spec or {}
        for key in ("calib", "eval_set"):
            name = spec.get(key)
            if isinstance(name, str) and name.startswith("upload:") and name not in out:
                out.append(name)
    return out


def bundle_bytes(bundle: dict[str, Any]) -> bytes:
    return json.dumps(bundle, indent=1, allow_nan=True).encode("utf-8")


_REQUIRED = ("fingerprint", "model", "recipe_label", "spec", "result")
MAX_BUNDLE_BYTES = 64 * 2**20  # a bundle file
MAX_DEPTH = 16  # nesting of objects and lists anywhere in a bundle
MAX_LAYERS = 100_000  # layer rows of one run


class _Bad(Exception):
    """A field that breaks the schema: its path (e.g. result.perplexity) and what it must be."""

    def __init__(self, path: str, must: str) -> None:
        super().__init__(f"{path} must be {must}")


def _load_json(raw: bytes | str) -> Any:
    if len(raw) > MAX_BUNDLE_BYTES:
        raise BundleError(f"the file is over {MAX_BUNDLE_BYTES // 2**20} MiB, the limit")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"not a JSON file: {e}") from None
    except RecursionError:
        raise BundleError(f"nested more than {MAX_DEPTH} levels deep") from None


def _check_tree(value: Any, path: str) -> None:
    """Every value JSON (str keys), every number finite, nesting at most MAX_DEPTH;
    iterative, so a deep value cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _Bad(where, f"nested at most {MAX_DEPTH} levels deep")
        if isinstance(v, dict):
            for k in reversed(list(v)):
                if not isinstance(k, str):
                    raise _Bad(where, "an object with text keys")
                stack.append((v[k], f"{where}.{k}", depth + 1))
        elif isinstance(v, list):
            stack.extend((x, f"{where}[{i}]", depth + 1) for i, x in reversed(list(enumerate(v))))
        elif isinstance(v, float) and not math.isfinite(v):
            raise _Bad(where, "a finite number")
        elif v is not None and not isinstance(v, str | int | float):
            raise _Bad(where, "a JSON value")


def _number(
    d: dict[str, Any], key: str, path: str, low: float = 0.0, high: float = math.inf
) -> None:
    v = d.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
        bound = f"in {low:g}..{high:g}" if math.isfinite(high) else f">= {low:g}"
        raise _Bad(f"{path}{key}", f"a finite number {bound}")


def _text(d: dict[str, Any], key: str, path: str, max_len: int, required: bool = False) -> None:
    v = d.get(key)
    if v is None and not required:
        return
    if not isinstance(v, str) or len(v) > max_len or (required and not v.strip()):
        raise _Bad(f"{path}{key}", f"text of 1..{max_len} characters")


def _of_type(d: dict[str, Any], key: str, path: str, kind: type, what: str) -> None:
    if d.get(key) is not None and not isinstance(d[key], kind):
        raise _Bad(f"{path}{key}", what)


# Bounds beyond "a finite number >= 0"; every field's kind comes from the catalogue.
_RESULT_BOUNDS: dict[str, tuple[float, float]] = {
    cat.TOP1_AGREEMENT.key: (0.0, 1.0),
    cat.KL_TO_BASELINE.key: (-0.01, math.inf),  # a baseline's KL to itself may round below 0
}


def _check_result_field(result: dict[str, Any], key: str) -> None:
    metric = cat.lookup(key)
    kind = metric.kind if metric else "number"
    if kind == "text":
        _text(result, key, "result.", 4096)
    elif kind == "list":
        _of_type(result, key, "result.", list, "a list")
    elif kind == "flag":
        _of_type(result, key, "result.", bool, "true or false")
    else:
        _number(result, key, "result.", *_RESULT_BOUNDS.get(key, (0.0, math.inf)))


def _check_result(result: dict[str, Any]) -> None:
    for f in dataclasses.fields(RunResult):
        if f.name != "extra":
            _check_result_field(result, f.name)
    for metric, problem in (
        (cat.TASK_SCORES, tasks.rows_problem),
        (cat.BASELINE_TASK_SCORES, tasks.rows_problem),
        (cat.GENERATIONS, generations.rows_problem),
    ):
        bad = problem(result[metric.key]) if result.get(metric.key) is not None else None
        if bad is not None:
            raise _Bad(f"result.{metric.key}{bad[0]}", bad[1])
    bits_key = cat.NOMINAL_BITS.key
    for i, b in enumerate(result.get(bits_key) or []):
        _number({"b": b}, "b", f"result.{bits_key}[{i}]", 0.0, 64.0)


def _check_layers(layers: Any) -> None:
    if layers is None:
        return
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise _Bad("layers", f"a list of at most {MAX_LAYERS} rows")
    for i, row in enumerate(layers):
        if not isinstance(row, dict):
            raise _Bad(f"layers[{i}]", "an object")
        _text(row, "name", f"layers[{i}].", 300, required=True)


def _check_run(r: Any) -> None:
    if not isinstance(r["fingerprint"], dict) or not r["fingerprint"]:
        raise _Bad("fingerprint", "a non-empty object (runs are deduplicated by it)")
    for key in ("spec", "result"):
        if not isinstance(r[key], dict):
            raise _Bad(key, "an object")
    _check_tree(r, "run")
    _text(r, "model", "", 300, required=True)
    _text(r, "recipe_label", "", 300)
    _text(r, "origin", "", 200)
    _text(r, "sweep_id", "", 64)
    for key in ("created_at", "started_at", "finished_at"):
        _number(r, key, "")
    _of_type(r, "source_id", "", int, "a whole number")
    _text(r, "name", "", queue.MAX_NAME)
    _text(r, "notes", "", queue.MAX_NOTES)
    tags = r.get("tags")
    if tags is not None and (
        not isinstance(tags, list)
        or len(tags) > queue.MAX_TAGS
        or not all(isinstance(t, str) and len(t) <= queue.MAX_TAG for t in tags)
    ):
        raise _Bad("tags", f"a list of at most {queue.MAX_TAGS} texts of <= {queue.MAX_TAG}")
    _of_type(r["spec"], "recipe", "spec.", list, "a list of steps")
    _check_result(r["result"])
    _check_layers(r.get("layers"))


def _check_header(data: Any) -> list[Any]:
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f'not a CompressLab bundle (expected "format": "{BUNDLE_FORMAT}"); export one '
            "from the Leaderboard page"
        )
    if data.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"bundle version {repr(data.get('version'))[:20]} is not supported (this app "
            f"reads version {BUNDLE_VERSION})"
        )
    runs = data.get("runs")
    if not isinstance(runs, list):
        raise BundleError('the bundle has no "runs" list')
    if len(runs) > MAX_RUNS:
        raise BundleError(f"{len(runs)} runs: a bundle holds at most {MAX_RUNS}")
    try:
        _text(data, "exported_by", "", 200)
        _number(data, "exported_at", "")
    except _Bad as e:
        raise BundleError(f"the bundle's {e}") from None
    return runs


def parse_bundle(raw: bytes | str | dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(exporter, runs) of a bundle, each run checked against the schema (types, ranges,
    finite numbers, sizes, nesting); BundleError names the first bad field, e.g.
    "run 2: result.perplexity must be a finite number >= 0"."""
    data = _load_json(raw) if isinstance(raw, bytes | str) else raw
    runs = _check_header(data)
    for i, r in enumerate(runs):
        missing = [k for k in _REQUIRED if not isinstance(r, dict) or k not in r]
        if missing:
            raise BundleError(f"run {i + 1} lacks {', '.join(missing)}")
        try:
            _check_run(r)
        except _Bad as e:
            raise BundleError(f"run {i + 1}: {str(e).removeprefix('run.')}") from None
    exporter = str(data.get("exported_by") or "unknown")
    return exporter, runs


def origin_of(run: dict[str, Any], exporter: str) -> str:
    """Where a run was first measured: its recorded origin, or the exporter's when it was
    local to them."""
    o = str(run.get("origin") or LOCAL)
    o = exporter if o == LOCAL else o
    return o if o.strip() and o != LOCAL else UNKNOWN_ORIGIN  # never this installation's


@dataclass
class ImportPlan:
    new: list[dict[str, Any]] = field(default_factory=list)  # runs to add, with "origin" set
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # already here (or twice)


def plan_import(runs: Sequence[dict[str, Any]], exporter: str, existing: set[str]) -> ImportPlan:
    """Which runs are new, by recomputed fingerprint hash (a hash stated in the file is not
    trusted: it might come from an older hash definition or an edit)."""
    plan, seen = ImportPlan(), set(existing)
    for r in runs:
        h = queue.fingerprint_hash(r["fingerprint"])
        rec = {**r, "fingerprint_hash": h, "origin": origin_of(r, exporter)}
        if h in seen:
            plan.duplicates.append(rec)
        else:
            seen.add(h)
            plan.new.append(rec)
    return plan


IMPORT_ATTEMPTS = 3  # a concurrent import of the same runs makes the next plan skip them


def existing_hashes(s: Session) -> set[str]:
    """Fingerprint hashes of the finished runs, read inside the import's transaction."""
    rows = s.scalars(
        select(Job.fingerprint_hash).where(
            Job.status == SUCCEEDED, Job.fingerprint_hash.is_not(None)
        )
    )
    return set(rows)


@dataclass(frozen=True)
class ImportReport:
    exporter: str
    added: list[int]  # new job ids
    duplicates: int
    origins: dict[str, int]  # origin -> runs added
    texts: list[str] = field(default_factory=list)  # uploaded sets stored from the bundle


def import_bundle(
    sf: queue.Factory, raw: bytes | str | dict[str, Any], owner: str = LOCAL
) -> ImportReport:
    """Add a bundle's new runs as finished jobs of ``owner`` (the importer), in one
    transaction: all or nothing. Duplicates are found inside that transaction, and the
    unique ``import_key`` refuses a run a concurrent import added meanwhile (the import is
    then planned again). A kept model's path is dropped: it names a folder on the
    exporter's machine, never one this server should offer for download."""
    exporter, runs = parse_bundle(raw)
    for attempt in range(IMPORT_ATTEMPTS):
        try:
            with sf.begin() as s:
                plan = plan_import(runs, exporter, existing_hashes(s))
                added = [_add_run(s, r, owner) for r in plan.new]
        except IntegrityError:
            if attempt + 1 == IMPORT_ATTEMPTS:
                raise
            continue
        origins: dict[str, int] = {}
        for r in plan.new:
            origins[r["origin"]] = origins.get(r["origin"], 0) + 1
        texts = import_texts(sf, raw if isinstance(raw, dict) else _load_json(raw), owner)
        return ImportReport(exporter, added, len(plan.duplicates), origins, texts)
    raise AssertionError("unreachable")


MAX_TEXT_BYTES = 50 * 2**20  # as an upload (core.data caps uploads at 50 MB)


def import_texts(sf: queue.Factory, data: Any, owner: str) -> list[str]:
    """Store the bundle's uploaded sets whose text matches its SHA-256 (others: skipped;
    a set already here is kept as it is). Returns the set names stored or found."""
    out = []
    for t in (data.get("texts") or []) if isinstance(data, dict) else []:
        if not isinstance(t, dict) or not isinstance(t.get("text"), str):
            continue
        raw = t["text"].encode("utf-8")
        if len(raw) > MAX_TEXT_BYTES or hashlib.sha256(raw).hexdigest() != t.get("sha256"):
            continue
        filename = str(t.get("filename") or "imported.txt")[:300]
        out.append(queue.store_text(sf, filename, t["text"], owner=owner))
    return out


def _add_run(s: Session, r: dict[str, Any], owner: str) -> int:
    """One imported run and its layer rows; returns its new job id."""
    t = time.time()
    job = Job(
        created_at=float(r.get("created_at") or t),
        status=SUCCEEDED,
        model=str(r["model"])[:300],
        recipe_label=str(r["recipe_label"])[:300],
        spec_json=json.dumps(r["spec"]),
        progress=1.0,
        message=f"imported from {r['origin']}",
        attempts=0,
        started_at=r.get("started_at"),
        finished_at=float(r.get("finished_at") or t),
        result_json=json.dumps(_without_path(r["result"])),
        fingerprint_json=json.dumps(r["fingerprint"]),
        fingerprint_hash=r["fingerprint_hash"],
        import_key=r["fingerprint_hash"],
        origin=str(r["origin"])[:200],
        owner=owner,
        sweep_id=r.get("sweep_id"),
        name=queue.clean_name(r.get("name")),
        tags_json=json.dumps(queue.clean_tags(r["tags"])) if r.get("tags") else None,
        notes=queue.clean_notes(r.get("notes")),
    )
    s.add(job)
    s.flush()
    for row in r.get("layers") or []:
        if isinstance(row, dict) and "name" in row:
            s.add(LayerStat(job_id=job.id, name=str(row["name"]), data_json=json.dumps(row)))
    return job.id


def _without_path(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != cat.SAVED_MODEL.key}


def runs_csv(df: pd.DataFrame) -> bytes:
    """The table as CSV (UTF-8, no index), the columns as shown."""
    return df.to_csv(index=False).encode("utf-8")
