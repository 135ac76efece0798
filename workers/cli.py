"""Headless interface: ``python -m workers serve | run | list-methods``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

RESULT_KEYS = (
    "perplexity",
    "bits_per_byte",
    "kl_to_baseline",
    "top1_agreement",
    "weight_bytes",
    "bits_per_weight",
    "peak_mem_bytes",
    "prefill_ms",
    "decode_tok_s",
    "compress_s",
)


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    p.add_argument("--verbose", action="store_true", help="log details and show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="claim and run queued jobs until stopped")
    s.add_argument("--db", help="database URL (default: DATABASE_URL or the app's SQLite file)")
    s.add_argument("--poll", type=float, default=1.0, help="seconds between queue polls")
    s.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")

    r = sub.add_parser("run", help="run one job now, record it, print the result")
    r.add_argument("--model", required=True, help="'demo', a local folder, or a hub id")
    r.add_argument("--recipe", required=True, help="named recipe, .json/.yaml file, or inline JSON")
    r.add_argument("--calib", default="stdlib-code", help="calibration set name")
    r.add_argument("--eval-set", default="stdlib-heldout", help="evaluation set name")
    r.add_argument("--eval-tokens", type=int, default=4096, help="evaluation tokens")
    r.add_argument("--ctx", type=int, default=256, help="evaluation window (context) length")
    r.add_argument("--calib-samples", type=int, default=32, help="calibration sequences")
    r.add_argument("--calib-seq-len", type=int, default=256, help="tokens per calibration sequence")
    r.add_argument("--seed", type=int, default=0, help="seed of the calibration sampling")
    r.add_argument("--db", help="database URL (default: DATABASE_URL or the app's SQLite file)")
    r.add_argument("--json", action="store_true", help="last line of stdout is one JSON object")
    r.add_argument(
        "--save",
        action="store_true",
        help="keep the compressed model (safetensors + config) in the data folder; the "
        "result's saved_model gives its path",
    )
    r.add_argument(
        "--sweep",
        help="sweep one numeric parameter of one step: 'param=start:stop:step' or "
        "'param=a,b,c'; queued as one sweep and run in order",
    )
    r.add_argument(
        "--sweep-step", type=int, default=0, help="index of the recipe step the sweep changes"
    )

    m = sub.add_parser("list-methods", help="registered methods, parameters and cards")
    m.add_argument("--json", action="store_true", help="print JSON")
    return p


def build_spec(args: argparse.Namespace) -> tuple[Any, str]:
    """A validated JobSpec and the recipe label from CLI arguments (UsageError if bad)."""
    from core.calib import CalibSettings
    from core.data import list_text_sets
    from core.jobspec import JobSpec
    from core.metrics import EvalSettings
    from core.recipe import parse_recipe
    from core.registry import ConfigError

    try:
        recipe = parse_recipe(args.recipe)
        ev = EvalSettings(ctx=args.ctx, eval_tokens=args.eval_tokens)
        cs = CalibSettings(n_samples=args.calib_samples, seq_len=args.calib_seq_len, seed=args.seed)
    except (ConfigError, ValueError) as e:
        raise UsageError(str(e)) from None
    known = {t["name"] for t in list_text_sets()}
    for name in (args.calib, args.eval_set):
        if name not in known and not name.startswith("upload:"):
            raise UsageError(f"unknown text set {name!r}; available: {', '.join(sorted(known))}")
    spec = JobSpec(
        model=args.model,
        recipe=recipe.to_list(),
        recipe_name=recipe.name,
        calib=args.calib,
        eval_set=args.eval_set,
        eval=ev,
        calib_settings=cs,
        save_model=bool(getattr(args, "save", False)),
    )
    return spec, recipe.label


def cmd_run(args: argparse.Namespace) -> int:
    from db import queue
    from db.session import session_factory
    from workers.runner import Runner, WorkerShutdown, install_signal_handlers

    if args.sweep:
        return cmd_run_sweep(args)
    spec, label = build_spec(args)
    sf = session_factory(args.db)
    job_id = queue.submit(sf, model=spec.model, recipe_label=label, spec_json=spec.to_json())
    runner = Runner(sf)
    queue.register_worker(sf, runner.worker_id)
    install_signal_handlers()
    job = queue.claim(sf, runner.worker_id, job_id=job_id)
    if job is None:  # a serving worker took it first; it runs there
        raise UsageError(f"job {job_id} was claimed by another worker")
    try:
        status = runner.run_claimed(job)
    except WorkerShutdown as e:
        queue.requeue_worker_jobs(sf, runner.worker_id, f"requeued: worker stopped ({e})")
        raise UsageError(f"interrupted ({e}); job {job_id} was put back in the queue") from None
    finally:
        queue.worker_stopped(sf, runner.worker_id)
    job = queue.get_job(sf, job_id)
    assert job is not None
    out: dict[str, Any] = {"run_id": job_id, "status": status, "model": job.model, "recipe": label}
    out.update({k: job.result.get(k) for k in RESULT_KEYS})
    out.update({k: v for k, v in job.result.items() if k not in out})
    if job.error:
        out["error"] = job.error
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>26}: {v}")
    if status != "succeeded":
        print(f"error: job {job_id} {status}: {job.error or job.message}", file=sys.stderr)
        return 1
    return 0


def cmd_run_sweep(args: argparse.Namespace) -> int:
    """Queue one job per swept value under one sweep id, run them here in order, and print
    one line per run (the last stdout line with --json: every run in one object)."""
    from core.registry import ConfigError
    from core.sweep import parse_sweep_arg, sweep_specs
    from db import queue
    from db.session import session_factory
    from workers.runner import Runner, WorkerShutdown, install_signal_handlers

    spec, label = build_spec(args)
    try:
        param, values = parse_sweep_arg(args.sweep)
        specs = sweep_specs(spec, label, args.sweep_step, param, values)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    jobs = [(name, one.to_json()) for name, one in specs]
    sf = session_factory(args.db)
    sweep_id = queue.submit_sweep(sf, model=spec.model, jobs=jobs)
    runner = Runner(sf)
    queue.register_worker(sf, runner.worker_id)
    install_signal_handlers()
    runs, failed = [], 0
    try:
        for queued in queue.sweep_jobs(sf, sweep_id):
            job = queue.claim(sf, runner.worker_id, job_id=queued.id)
            if job is None:  # a serving worker took it; it runs there
                continue
            status = runner.run_claimed(job)
            done = queue.get_job(sf, queued.id)
            assert done is not None
            value = json.loads(done.spec_json)["recipe"][args.sweep_step][param]
            row = {"run_id": done.id, "status": status, param: value}
            row.update({k: done.result.get(k) for k in RESULT_KEYS})
            if done.error:
                row["error"] = done.error
            failed += status != "succeeded"
            runs.append(row)
            print(json.dumps(row) if args.json else f"{param}={value}: {status} {row}")
    except WorkerShutdown as e:
        queue.requeue_worker_jobs(sf, runner.worker_id, f"requeued: worker stopped ({e})")
        raise UsageError(f"interrupted ({e}); sweep {sweep_id} stays queued") from None
    finally:
        queue.worker_stopped(sf, runner.worker_id)
    if args.json:
        print(json.dumps({"sweep_id": sweep_id, "param": param, "runs": runs}))
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from db.session import session_factory
    from workers.runner import Runner, WorkerShutdown, install_signal_handlers

    install_signal_handlers()
    runner = Runner(session_factory(args.db))
    logging.getLogger(__name__).info("worker %s serving", runner.worker_id)
    try:
        runner.serve(poll_s=args.poll, max_jobs=args.max_jobs)
    except WorkerShutdown as e:
        logging.getLogger(__name__).info("worker %s stopped by %s", runner.worker_id, e)
    return 0


def cmd_list_methods(args: argparse.Namespace) -> int:
    from core.registry import describe_method, methods

    rows = [describe_method(m) for m in methods()]
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    for r in rows:
        print(
            f"{r['name']}  ({r['kind']}; calibration: {'yes' if r['needs_calibration'] else 'no'})"
        )
        print(f"    {r['card']['idea']}")
        for p in r["params"]:
            rng = p["choices"] or (
                f"[{p['min']}, {p['max']}]" if p["min"] is not None or p["max"] is not None else ""
            )
            print(f"    - {p['name']} = {p['default']!r}  {rng}  {p['help']}")
    return 0


COMMANDS = {"serve": cmd_serve, "run": cmd_run, "list-methods": cmd_list_methods}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.cmd == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return COMMANDS[args.cmd](args)
    except UsageError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
