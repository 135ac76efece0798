"""Calibration honesty: a calibration set shorter than one window is refused before any
expensive work when the recipe needs calibration data (at submission when the set's size
is known, else when the job has loaded the tokenizer), a short one is run with a note
that gives the real count, and the run stores the tokens it really used.

A token covers at least one byte of text (byte-level BPE, SentencePiece with byte
fallback), so a set of fewer bytes than one window's tokens is surely too short: that
is what submission can tell without a tokenizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.calib import CalibSettings
from core.data import DataError
from core.recipe import Recipe

if TYPE_CHECKING:
    from runs.pipeline import Job

TOKENIZE_BUDGET_BYTES_PER_TOKEN = 48  # the prefix calibration_batches reads: 6 bytes x 8


def too_short(name: str, count: int, unit: str, settings: CalibSettings) -> str:
    return (
        f"calibration set {name!r} has {count:,} {unit}, fewer than one calibration window "
        f"of seq_len={settings.seq_len} tokens: upload a longer text, pick another set, or "
        "lower the sequence length"
    )


def check_size_at_submit(
    recipe: Recipe, name: str, n_bytes: int | None, settings: CalibSettings
) -> None:
    """DataError when a recipe that needs calibration data gets a set of fewer bytes than
    one window has tokens; nothing when the size is unknown (a built-in set)."""
    if n_bytes is None or not recipe.needs_calibration:
        return
    if n_bytes < settings.seq_len:
        raise DataError(too_short(name, n_bytes, "bytes", settings))


def set_tokens(tokenizer, text: str, settings: CalibSettings) -> int:  # noqa: ANN001
    """Tokens of the prefix of ``text`` the calibration windows are drawn from."""
    budget = settings.n_samples * settings.seq_len * TOKENIZE_BUDGET_BYTES_PER_TOKEN
    return len(tokenizer(text[:budget], add_special_tokens=False).input_ids)


def check_before_work(job: Job) -> None:
    """After loading, before the baseline: refuse a set shorter than one window if the
    recipe needs calibration data; otherwise note what will really be used."""
    if not job.compresses or job.calib_text is None or job.loaded is None:
        return
    cs = job.spec.calib_settings
    n = set_tokens(job.loaded.tokenizer, job.calib_text.text, cs)
    job.calib_set_tokens = n
    if n < cs.seq_len:
        if job.recipe.needs_calibration:
            raise DataError(too_short(job.spec.calib, n, "tokens", cs))
        job.notes.append(
            f"the calibration set has {n} tokens, fewer than one window of {cs.seq_len}: "
            f"the recipe needs no calibration data, but each layer's error was measured on "
            f"those {n} tokens only"
        )
    elif n < cs.n_samples * cs.seq_len:
        job.notes.append(
            f"the calibration set has {n:,} tokens, fewer than the {cs.n_samples} x "
            f"{cs.seq_len} = {cs.n_samples * cs.seq_len:,} requested: the windows overlap "
            f"(at most {n:,} distinct tokens calibrated)"
        )
