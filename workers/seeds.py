"""``python -m workers run --seeds N``: one recipe repeated over N calibration seeds
(seed, seed + 1, ...), queued as one seed group (a sweep), run here in order; prints one
line per run and the group's mean and spread (runs.sweep.seed_group_summary)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_run_args(r: argparse.ArgumentParser) -> None:
    """The ``run`` options of this feature: the protocol and the seed group."""
    r.add_argument(
        "--protocol",
        default="default",
        choices=("default", "reference"),
        help="how calibration and evaluation windows are drawn: 'reference' as "
        "IST-DASLab/gptq and locuslab/wanda do (BOS, random.seed + randint); definitions "
        "in runs/catalogue.py PROTOCOLS",
    )
    r.add_argument(
        "--seeds",
        type=int,
        help="repeat the run over N calibration seeds (seed, seed+1, ...), queued as one "
        "seed group; prints the mean and spread of perplexity and KL",
    )


def _seed_row(runner: Any, sf: Any, job_id: int) -> dict[str, Any] | None:
    """Run one queued job of the group here; its line (None if another worker took it)."""
    from db import queue
    from workers.cli import summary

    job = queue.claim(sf, runner.worker_id, job_id=job_id)
    if job is None:  # a serving worker took it; it runs there
        return None
    status = runner.run_claimed(job)
    done = queue.get_job(sf, job_id)
    assert done is not None
    spec = json.loads(done.spec_json)
    row = {"run_id": done.id, "status": status, "seed": spec["calib_settings"]["seed"]}
    row.update(summary(done.result))
    if done.error:
        row["error"] = done.error
    return row


def group_summary(sf: Any, sweep_id: str) -> dict[str, Any] | None:
    """The seed group's summary row from its finished runs (None before two finished)."""
    from db import queue
    from db.models import SUCCEEDED
    from runs.sweep import seed_group_summary

    records = [
        {
            "sweep_id": j.sweep_id,
            "label": j.recipe_label,
            "spec": json.loads(j.spec_json),
            "metrics": j.result or {},
        }
        for j in queue.sweep_jobs(sf, sweep_id)
        if j.status == SUCCEEDED
    ]
    rows = seed_group_summary(records)
    return rows[0] if rows else None


def cmd_run_seeds(args: argparse.Namespace) -> int:
    """Queue the seed group, run it here, print each run and the group summary."""
    from core.registry import ConfigError
    from db import queue
    from runs.sweep import seed_specs
    from workers.cli import UsageError, local_worker, open_checked, validate_run

    spec, label, uploads = validate_run(args)
    try:
        specs = seed_specs(spec, label, args.seeds)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    sf = open_checked(args, uploads)
    sweep_id = queue.submit_sweep(sf, model=spec.model, jobs=[(n, s.to_json()) for n, s in specs])
    runs = []
    with local_worker(sf, f"seed group {sweep_id} stays queued", args) as runner:
        for queued in queue.sweep_jobs(sf, sweep_id):
            row = _seed_row(runner, sf, queued.id)
            if row is not None:
                runs.append(row)
                print(json.dumps(row) if args.json else f"seed={row['seed']}: {row}")
    group = group_summary(sf, sweep_id)
    if args.json:
        print(json.dumps({"sweep_id": sweep_id, "runs": runs, "group": group}))
    else:
        for k, v in (group or {}).items():
            print(f"{k:>26}: {v}")
    return 1 if any(r["status"] != "succeeded" for r in runs) else 0
