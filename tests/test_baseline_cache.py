"""The baseline log-prob cache: unique temporary names, atomic publication, one
computation per key across threads and processes, stale temporary files removed."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.data import get_text_set
from core.errors import Cancelled
from core.metrics import EvalSettings, LogprobStore, eval_windows
from core.models import load_model
from runs import baseline_cache

SHAPE = (3, 9, 5)  # windows, ctx, vocab: the store holds (3, 8, 5)


def _store(folder: Path) -> LogprobStore:
    return LogprobStore(folder / "key.f16", *SHAPE)


def _compute_once(folder: str, log: str, value: float) -> None:
    """In a process: compute the key unless another process already did (under the lock)."""
    store = _store(Path(folder))
    with store.locked():
        if store.exists():
            return
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        mm = store.writer()
        mm[:] = value
        time.sleep(0.3)  # a slow computation: the other process must wait, not redo it
        store.commit(mm, {"perplexity": value})


def test_two_processes_compute_one_key_once(tmp_path: Path) -> None:
    log = tmp_path / "computed.log"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_compute_once, args=(str(tmp_path), str(log), v)) for v in (1.0, 2.0)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1
    store = _store(tmp_path)
    value = store.summary()["perplexity"]
    assert np.all(np.asarray(store.reader()) == value)  # the data of the one that computed
    assert store.stale_temps() == []


def _write_and_hang(folder: str) -> None:
    store = _store(Path(folder))
    with store.locked():
        mm = store.writer()
        mm[:] = 7.0
        mm.flush()
        time.sleep(60)


def test_a_killed_writer_leaves_nothing_that_matters(tmp_path: Path) -> None:
    proc = mp.get_context("spawn").Process(target=_write_and_hang, args=(str(tmp_path),))
    proc.start()
    store = _store(tmp_path)
    deadline = time.monotonic() + 60
    while not store.stale_temps():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert not store.exists()  # the partial file was never published
    with store.locked():  # the lock died with its holder; its temporary file is removed
        assert store.stale_temps() == []


def test_waiting_for_the_lock_is_cancellable(tmp_path: Path) -> None:
    store, other = _store(tmp_path), _store(tmp_path)
    with store.locked(), pytest.raises(Cancelled), other.locked(should_cancel=lambda: True):
        pass


def test_two_threads_computing_the_same_baseline_compute_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model("tiny-random")
    settings = EvalSettings(ctx=32, eval_tokens=128)
    text = get_text_set("stdlib-heldout")
    windows = eval_windows(loaded.tokenizer, text.text, settings)
    calls: list[int] = []
    real = baseline_cache.evaluate

    def counting(*args, **kw):  # type: ignore[no-untyped-def]
        calls.append(threading.get_ident())
        time.sleep(0.3)
        return real(*args, **kw)

    monkeypatch.setattr(baseline_cache, "evaluate", counting)
    results: list[dict] = []

    def job() -> None:
        store = baseline_cache.logprob_store(tmp_path, loaded, text, settings, len(windows))
        results.append(
            baseline_cache.ensure_baseline(loaded, windows, store, lambda: False, lambda f, m: None)
        )

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]
    assert len(list(tmp_path.glob("*.f16"))) == 1 and not list(tmp_path.glob("*.tmp"))
