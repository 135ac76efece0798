"""Small helpers the tests share: a job spec that runs in seconds on the tiny random model,
and ``python -m workers`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.calib import CalibSettings
from core.metrics import EvalSettings
from core.recipe import parse_recipe
from runs.spec import JobSpec

ROOT = Path(__file__).resolve().parent.parent


def tiny_spec(recipe: str = "rtn-int8", **fields: Any) -> JobSpec:
    """``recipe`` on ``tiny-random`` with the smallest evaluation and calibration settings."""
    r = parse_recipe(recipe)
    return JobSpec(
        model="tiny-random",
        recipe=r.to_list(),
        recipe_name=r.name,
        eval=EvalSettings(ctx=32, eval_tokens=64, prompt_len=8, decode_tokens=2, repeats=1),
        calib_settings=CalibSettings(n_samples=2, seq_len=32),
        **fields,
    )


def workers_cli(
    *args: str, env: Mapping[str, str], base: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m workers ARGS`` from the repository root, ``env`` over ``base`` (default:
    this process's environment)."""
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        cwd=ROOT,
        env=dict(os.environ if base is None else base) | dict(env),
        capture_output=True,
        text=True,
        timeout=300,
    )
