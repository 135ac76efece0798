"""Headless interface: ``python -m workers serve | run | recover | list-methods``.

Exit status of ``run``: 0 when every job succeeded; 2 for bad input (one ``error:``
line on stderr, nothing queued or loaded, and no database opened for input that can be
refused without one); 1 for a failure at run time (a failed job, an interrupted run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from db.queue import text_exists
from workers import export as export_cmd
from workers import gc as gc_cmd
from workers import search as search_cmd
from workers import seeds as seeds_cmd
from workers import tune as tune_cmd
from workers import users as users_cmd


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class RunFailure(Exception):
    """A failure at run time (interrupted, stuck, taken by another worker): one line, exit 1."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    p.add_argument("--verbose", action="store_true", help="log details and show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)

    _serve_parsers(sub)
    gc_cmd.add_parser(sub)
    users_cmd.add_parser(sub)
    export_cmd.add_parser(sub)
    tune_cmd.add_parser(sub)
    search_cmd.add_parser(sub)

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
    seeds_cmd.add_run_args(r)  # --protocol, --seeds
    r.add_argument("--db", help="database URL (default: DATABASE_URL or the app's SQLite file)")
    r.add_argument("--json", action="store_true", help="last line of stdout is one JSON object")
    _job_timeout_arg(r)
    _budget_arg(r)
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
    _output_args(r)

    m = sub.add_parser("list-methods", help="registered methods, parameters and cards")
    m.add_argument("--json", action="store_true", help="print JSON")
    return p


def _serve_parsers(sub: Any) -> None:
    """``serve`` and ``recover``."""
    s = sub.add_parser("serve", help="claim and run queued jobs until stopped")
    s.add_argument("--db", help="database URL (default: DATABASE_URL or the app's SQLite file)")
    s.add_argument("--poll", type=float, default=1.0, help="seconds between queue polls")
    s.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    _job_timeout_arg(s)
    _budget_arg(s)
    s.add_argument(
        "--stale-s",
        type=float,
        default=None,
        help="recover running jobs whose worker has not heartbeated for this long "
        "(default: 60; every worker of one database should use the same value)",
    )
    s.add_argument(
        "--heartbeat-s", type=float, default=None, help="seconds between heartbeats (default: 5)"
    )

    rc = sub.add_parser("recover", help="recover stale running jobs now and say what was done")
    rc.add_argument("--db", help="database URL (default: DATABASE_URL or the app's SQLite file)")
    rc.add_argument(
        "--stale-s",
        type=float,
        default=None,
        help="a running job without a heartbeat for this long is stale (default: 60)",
    )


def _output_args(p: argparse.ArgumentParser) -> None:
    """Task scores (lm-eval) and the prompts of the generations."""
    p.add_argument(
        "--tasks",
        default="",
        help="lm-eval tasks scored on the baseline and the compressed model, comma separated: "
        "stdlib_body (local) or arc_easy, piqa, lambada_openai, hellaswag, winogrande (hub)",
    )
    p.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="a prompt to continue greedily, \\n for a newline (repeatable; default: the "
        "model's prompt set)",
    )


def _job_timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--job-timeout",
        type=float,
        default=None,
        help="fail a job that runs longer than this many seconds (default: 21600 = 6 h)",
    )


def _budget_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-device-memory",
        default=None,
        help="device memory this worker's jobs may use (e.g. 6GiB, 512MiB; on the CPU: host "
        "memory for weights): a model whose estimated peak does not fit runs one decoder "
        "block at a time from its safetensors files, or is refused (core/modes.py)",
    )


def apply_budget(args: argparse.Namespace) -> None:
    """``--max-device-memory`` checked and handed to the jobs of this process."""
    import os

    from core.modes import BUDGET_ENV, parse_bytes

    value = getattr(args, "max_device_memory", None)
    if value is None:
        return
    try:
        parse_bytes(value)
    except ValueError as e:
        raise UsageError(f"--max-device-memory: {e}") from None
    os.environ[BUDGET_ENV] = value


def runner_options(args: argparse.Namespace) -> dict[str, float]:
    """Runner keyword arguments given on the command line (the rest keep their defaults)."""
    names = {"job_timeout": "job_timeout_s", "stale_s": "stale_s", "heartbeat_s": "heartbeat_s"}
    return {kw: v for a, kw in names.items() if (v := getattr(args, a, None)) is not None}


def build_spec(args: argparse.Namespace, exists: Callable[[str], bool]) -> tuple[Any, str]:
    """A validated JobSpec and the recipe label from CLI arguments (UsageError if bad),
    made by the builder every page uses (runs.spec.build_spec)."""
    from core.recipe import parse_recipe
    from runs.spec import build_spec as build

    try:
        return build(
            args.model,
            parse_recipe(args.recipe),
            text_exists=exists,
            calib=args.calib,
            eval_set=args.eval_set,
            eval_settings={"ctx": args.ctx, "eval_tokens": args.eval_tokens},
            calib_settings={
                "n_samples": args.calib_samples,
                "seq_len": args.calib_seq_len,
                "seed": args.seed,
            },
            save_model=bool(getattr(args, "save", False)),
            protocol=getattr(args, "protocol", "default"),
            tasks=[t for t in (getattr(args, "tasks", "") or "").split(",") if t.strip()],
            task_limit=getattr(args, "limit", None),
            prompts=[p.replace("\\n", "\n") for p in getattr(args, "prompt", [])],
        )
    except ValueError as e:  # ConfigError, DataError: the message says what is allowed
        raise UsageError(str(e)) from None


def check_model_arg(model: str) -> None:
    """Refuse a model no worker could load, without downloading anything (UsageError)."""
    from core.errors import ModelLoadError
    from core.models import check_model

    try:
        check_model(model)
    except ModelLoadError as e:
        raise UsageError(str(e)) from None


def validate_run(args: argparse.Namespace) -> tuple[Any, str, list[str]]:
    """Every check that needs no database: the JobSpec, its label and the uploaded text
    sets it names (checked later, in the database, by :func:`open_checked`)."""
    uploads: list[str] = []

    def later(name: str) -> bool:
        uploads.append(name)
        return True

    spec, label = build_spec(args, later)
    check_model_arg(spec.model)
    return spec, label, uploads


def open_checked(args: argparse.Namespace, uploads: list[str]) -> Any:
    """The session factory of ``--db``, once the uploads the job names are found there."""
    from db.session import session_factory

    sf = session_factory(args.db)
    if uploads:  # the builder again, now asking the database: its message if one is missing
        build_spec(args, text_exists(sf))
    return sf


@contextmanager
def local_worker(sf: Any, interrupted: str, args: argparse.Namespace) -> Iterator[Any]:
    """A worker in this process for the jobs this command queued; on SIGINT / SIGTERM its
    job goes back to the queue and the command ends with ``interrupted``."""
    from db import queue
    from workers.runner import Runner, WorkerShutdown, WorkerStuck, install_signal_handlers

    runner = Runner(sf, **runner_options(args))
    install_signal_handlers()
    runner.register()
    try:
        yield runner
    except WorkerShutdown as e:
        queue.requeue_worker_jobs(sf, runner.worker_id, f"requeued: worker stopped ({e})")
        raise RunFailure(f"interrupted ({e}); {interrupted}") from None
    except WorkerStuck as e:
        raise RunFailure(str(e)) from None
    finally:
        queue.worker_stopped(sf, runner.worker_id)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics of a result (runs.catalogue.SUMMARY), in order."""
    from runs import catalogue as cat

    return {m.key: result.get(m.key) for m in cat.SUMMARY}


def _print_run(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:>26}: {v}")


def cmd_run(args: argparse.Namespace) -> int:
    from db import queue

    if args.sweep:
        return cmd_run_sweep(args)
    if getattr(args, "seeds", None) is not None:
        return seeds_cmd.cmd_run_seeds(args)
    spec, label, uploads = validate_run(args)
    sf = open_checked(args, uploads)
    job_id = queue.submit(sf, model=spec.model, recipe_label=label, spec_json=spec.to_json())
    with local_worker(sf, f"job {job_id} was put back in the queue", args) as runner:
        job = queue.claim(sf, runner.worker_id, job_id=job_id)
        if job is None:  # a serving worker took it first; it runs there
            raise RunFailure(f"job {job_id} was claimed by another worker")
        status = runner.run_claimed(job)
    job = queue.get_job(sf, job_id)
    assert job is not None
    out: dict[str, Any] = {"run_id": job_id, "status": status, "model": job.model, "recipe": label}
    out.update(summary(job.result))
    out.update({k: v for k, v in job.result.items() if k not in out})
    if job.error:
        out["error"] = job.error
    _print_run(out, args.json)
    if status != "succeeded":
        print(f"error: job {job_id} {status}: {job.error or job.message}", file=sys.stderr)
        return 1
    return 0


def _sweep_row(runner: Any, sf: Any, job_id: int, step: int, param: str) -> dict[str, Any] | None:
    """Run one queued job of a sweep here; its line (None if another worker took it)."""
    from db import queue

    job = queue.claim(sf, runner.worker_id, job_id=job_id)
    if job is None:  # a serving worker took it; it runs there
        return None
    status = runner.run_claimed(job)
    done = queue.get_job(sf, job_id)
    assert done is not None
    value = json.loads(done.spec_json)["recipe"][step][param]
    row = {"run_id": done.id, "status": status, param: value, **summary(done.result)}
    if done.error:
        row["error"] = done.error
    return row


def cmd_run_sweep(args: argparse.Namespace) -> int:
    """Queue one job per swept value under one sweep id, run them here in order, and print
    one line per run (the last stdout line with --json: every run in one object)."""
    from core.registry import ConfigError
    from db import queue
    from runs.sweep import parse_sweep_arg, sweep_specs

    spec, label, uploads = validate_run(args)
    try:
        param, values = parse_sweep_arg(args.sweep)
        specs = sweep_specs(spec, label, args.sweep_step, param, values)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    sf = open_checked(args, uploads)
    jobs = [(name, one.to_json()) for name, one in specs]
    sweep_id = queue.submit_sweep(sf, model=spec.model, jobs=jobs)
    runs = []
    with local_worker(sf, f"sweep {sweep_id} stays queued", args) as runner:
        for queued in queue.sweep_jobs(sf, sweep_id):
            row = _sweep_row(runner, sf, queued.id, args.sweep_step, param)
            if row is not None:
                runs.append(row)
                value, status = row[param], row["status"]
                print(json.dumps(row) if args.json else f"{param}={value}: {status} {row}")
    if args.json:
        print(json.dumps({"sweep_id": sweep_id, "param": param, "runs": runs}))
    return 1 if any(r["status"] != "succeeded" for r in runs) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from db.session import session_factory
    from workers.lifecycle import with_reconnect
    from workers.runner import Runner, WorkerShutdown, WorkerStuck, install_signal_handlers

    install_signal_handlers()
    log = logging.getLogger(__name__)
    try:
        sf = with_reconnect("open the database", lambda: session_factory(args.db))
        runner = Runner(sf, **runner_options(args))
        log.info("worker %s serving", runner.worker_id)
        runner.serve(poll_s=args.poll, max_jobs=args.max_jobs)
    except WorkerShutdown as e:
        log.info("worker stopped by %s", e)
    except WorkerStuck as e:
        log.error("%s; exiting so that its memory is freed (restart the worker)", e)
        return 3
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    """Recover stale running jobs now: requeue them (once) or fail them, and print each."""
    from db import queue
    from db.session import session_factory

    sf = session_factory(args.db)
    stale_s = queue.STALE_S if args.stale_s is None else args.stale_s
    ids = queue.recover_stale(sf, stale_s)
    if not ids:
        running = queue.queue_counts(sf).get("running", 0)
        print(f"no stale jobs (no heartbeat for {stale_s:.0f} s); {running} running")
        return 0
    print(f"recovered {len(ids)} stale job{'s' * (len(ids) != 1)}:")
    for job_id in ids:
        job = queue.get_job(sf, job_id)
        assert job is not None
        detail = job.error if job.status == "failed" else job.message
        print(f"  job {job_id}: {job.status} ({detail})")
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


COMMANDS = {
    "serve": cmd_serve,
    "run": cmd_run,
    "recover": cmd_recover,
    "list-methods": cmd_list_methods,
    "gc": gc_cmd.run_gc,
    "users": users_cmd.run_users,
    "export": export_cmd.run_export,
    "tune-kernels": tune_cmd.run_tune,
    "search": search_cmd.run_search,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.cmd == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        apply_budget(args)
        return COMMANDS[args.cmd](args)
    except (UsageError, RunFailure) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
