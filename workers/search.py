"""``python -m workers search``: the best per-layer recipe under a byte budget, or under a
latency budget (``--budget-ms`` with ``--latency-m``: the searched linears' summed op
times at that many tokens, each layer x candidate timed on this machine and cached per
machine; with ``--here`` the whole models are timed at the same shape too, beside the
predicted sum, which leaves out attention, norms, embeddings and lm_head).

Scores (per layer and candidate: the KL to the baseline when only that layer is
compressed so, and its stored bytes) come from finished scoring jobs in the database;
the missing ones are queued (one sweep per candidate) and the command says to run it
again once workers have run them. ``--here`` measures the scores in this process
instead (runs/search_local.py: one compression per candidate) and runs the verification
jobs here. Each budget's chosen recipe is queued as an ordinary run whose result stores
the prediction beside the measurement (predicted_kl / predicted_bytes).

Exit status: 0 done (or scoring queued), 2 bad input (nothing queued), 1 a failed run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from runs import catalogue as cat
from runs import search as S

DEFAULT_CANDIDATES = ",".join(S.DEFAULT_CANDIDATES)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``search`` on the ``python -m workers`` subcommands."""
    p = subparsers.add_parser(
        "search", help="the best per-layer recipe under a byte or latency budget"
    )
    p.add_argument("--model", required=True, help="'demo', a local folder, or a hub id")
    p.add_argument("--budget-mb", help="budget(s) in MB (10^6 bytes) of the searched linears")
    p.add_argument("--budget-bits", help="budget(s) in bits per weight, e.g. 3.5,4.5,6")
    p.add_argument(
        "--budget-ms",
        help="latency budget(s): milliseconds of the searched linears' summed op times at "
        "--latency-m tokens, timed on this machine (cached per machine)",
    )
    p.add_argument(
        "--latency-m",
        type=int,
        default=1,
        help="tokens per call the layers are timed at (1: decode step, e.g. 512: prefill)",
    )
    p.add_argument("--latency-repeats", type=int, default=5, help="interleaved timing rounds")
    p.add_argument(
        "--retime", action="store_true", help="time the layers again (ignore this machine's cache)"
    )
    p.add_argument(
        "--candidates",
        default=DEFAULT_CANDIDATES,
        help=f"comma-separated candidates per layer (default: {DEFAULT_CANDIDATES})",
    )
    p.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra candidate: any registered method with parameters, e.g. "
        """'rtn6=[{"method": "rtn", "bits": 6}]' (repeatable; name it in --candidates too)""",
    )
    p.add_argument("--here", action="store_true", help="score and verify in this process")
    p.add_argument("--no-verify", action="store_true", help="print the front, queue no run")
    p.add_argument("--calib", default="stdlib-code", help="calibration set name")
    p.add_argument("--eval-set", default="stdlib-heldout", help="evaluation set name")
    p.add_argument("--eval-tokens", type=int, default=4096, help="evaluation tokens")
    p.add_argument("--ctx", type=int, default=256, help="evaluation window length")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration sequences")
    p.add_argument("--calib-seq-len", type=int, default=256, help="tokens per sequence")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sampling")
    p.add_argument("--db", help="database URL (default: DATABASE_URL or the app's SQLite file)")
    p.add_argument("--json", action="store_true", help="last line of stdout is one JSON object")


@dataclasses.dataclass
class Plan:
    template: Any  # a validated JobSpec; each job replaces its recipe
    candidates: list[S.Candidate]
    layers: list[str]
    budgets: list[tuple[str, float]]  # ("mb" | "bpw" | "ms", value)
    latency: Any = None  # LatencySettings when the budget is in ms

    @property
    def kind(self) -> str:
        return S.SECONDS if self.budgets[0][0] == "ms" else S.BYTES


def _numbers(text: str, what: str) -> list[float]:
    from workers.cli import UsageError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(v > 0 and v < 1e12 for v in values):
        raise UsageError(f"{what} must be positive numbers, got {text!r}")
    if len(values) > S.MAX_BUDGETS:
        raise UsageError(f"at most {S.MAX_BUDGETS} budgets, got {len(values)}")
    return values


def _budgets(args: argparse.Namespace) -> list[tuple[str, float]]:
    from workers.cli import UsageError

    given = [
        (k, t)
        for k, t in (("mb", args.budget_mb), ("bpw", args.budget_bits), ("ms", args.budget_ms))
        if t is not None
    ]
    if len(given) != 1:
        raise UsageError("give exactly one of --budget-mb, --budget-bits and --budget-ms")
    (kind, text), flag = (
        given[0],
        {"mb": "--budget-mb", "bpw": "--budget-bits", "ms": "--budget-ms"},
    )
    return [(kind, v) for v in _numbers(text, flag[kind])]


def latency_settings(args: argparse.Namespace) -> Any:
    """The layers' timing settings (UsageError if out of range)."""
    from runs.search_latency import LatencySettings
    from workers.cli import UsageError

    try:
        return LatencySettings(m=args.latency_m, repeats=args.latency_repeats)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _extra_candidate(text: str) -> tuple[str, S.Candidate]:
    """``NAME=JSON steps`` -> (name, validated candidate); ConfigError if bad."""
    from core.recipe import loads_json
    from core.registry import ConfigError

    name, sep, body = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--candidate {text[:60]!r} must look like NAME=JSON")
    return name.strip(), S.candidate_from_json(name.strip(), loads_json(body, "candidate"))


def plan(args: argparse.Namespace) -> Plan:
    """Every check that needs no database (UsageError, exit 2, before anything is queued)."""
    from core.models import model_skeleton
    from core.registry import ConfigError
    from core.sensitivity import model_layers
    from runs.spec import build_spec
    from workers.cli import UsageError, check_model_arg

    budgets = _budgets(args)
    latency = latency_settings(args) if budgets[0][0] == "ms" else None
    try:
        extra = dict(_extra_candidate(text) for text in args.candidate)
        names = [c.strip() for c in args.candidates.split(",") if c.strip()]
        cands = S.parse_candidates(names, extra)
        check_model_arg(args.model)
        names, path = model_layers(model_skeleton(args.model))
        layers = [n for n in names if n.startswith(path + ".")]
        spec, _ = build_spec(
            args.model,
            S.scoring_recipe(cands[0], layers[0]),
            text_exists=lambda name: True,  # uploads are checked in the database later
            calib=args.calib,
            eval_set=args.eval_set,
            eval_settings={"ctx": args.ctx, "eval_tokens": args.eval_tokens},
            calib_settings={
                "n_samples": args.calib_samples,
                "seq_len": args.calib_seq_len,
                "seed": args.seed,
            },
        )
    except (ValueError, ConfigError) as e:
        raise UsageError(str(e)) from None
    return Plan(spec, cands, layers, budgets, latency)


def stored_scores(sf: Any, p: Plan) -> S.ScoreTable:
    """The score table from the database's finished scoring jobs of this setting."""
    from db import queue
    from runs.spec import JobSpec

    records = []
    for job in queue.finished_runs(sf):
        spec = JobSpec.from_json(job.spec_json)
        if job.model != p.template.model or not S.same_setting(spec, p.template):
            continue
        rows = [r.data for r in queue.layer_stats(sf, job.id)]
        records.append({"recipe": spec.recipe, "metrics": job.result, "layers": rows})
    return S.scores_from_records(records, p.candidates, p.layers)


def queue_scoring(sf: Any, p: Plan, missing: list[tuple[str, str]]) -> list[str]:
    """One sweep per candidate of the missing (layer, candidate) jobs; the sweep ids."""
    from db import queue

    by_cand = S.scoring_jobs(p.template, p.candidates, missing)
    return [queue.submit_sweep(sf, model=p.template.model, jobs=j) for j in by_cand.values()]


def local_scores(p: Plan) -> tuple[Any, S.ScoreTable, dict[str, dict[str, float]]]:
    """(the bench, scores measured in this process: one compression per candidate, what
    each candidate measures as a uniform recipe: every searched layer compressed so)."""
    from runs import search_local as L

    t = p.template
    bench = L.prepare(t.model, t.eval_set, t.calib, t.eval, t.calib_settings)
    table = S.ScoreTable(list(p.layers), [c.name for c in p.candidates])
    uniform = {c.name: L.score_candidate(bench, table, c, lambda f, m: None) for c in p.candidates}
    return bench, table, uniform


NOT_IN_SUM = (
    "rest_ms = measured whole model - predicted sum of the searched linears: attention, "
    "norms, rotary, embeddings, lm_head and framework overhead (the layers were timed "
    "alone, weights warm in cache)"
)


def model_latency(bench: Any, p: Plan, chosen: list, table: S.ScoreTable) -> dict[str, Any]:
    """The whole models' time at the plan's shape (the float model, each budget's recipe
    and each uniform recipe, interleaved) beside the predicted sum of their linears."""
    from runs import search_local as L
    from runs.search_latency import model_seconds

    predicted: dict[str, float | None] = {"float (as loaded)": table.latency.get("as_loaded_ms")}
    models = {"float (as loaded)": bench.model}
    for label, sol in chosen:
        models[label], _ = L.compressed_copy(bench, S.mixed_recipe(sol.choice, p.candidates))
        predicted[label] = 1e3 * sol.seconds
    for c in p.candidates:
        steps = [{**st, "targets": list(p.layers), "ignore": []} for st in c.steps]
        models[f"uniform {c.name}"], _ = L.compressed_copy(bench, steps)
        predicted[f"uniform {c.name}"] = 1e3 * sum(table.seconds[la][c.name] for la in p.layers)
    measured = model_seconds(models, p.latency)
    rows = []
    for label, pred in predicted.items():
        ms = 1e3 * measured[label]
        rest = None if pred is None else ms - pred
        rows.append(
            {
                "model": label,
                "measured_model_ms": ms,
                cat.PREDICTED_LINEAR_MS.key: pred,
                "rest_ms": rest,
            }
        )
    return {"m": p.latency.m, "rows": rows, "note": NOT_IN_SUM}


def solutions(p: Plan, table: S.ScoreTable) -> list[tuple[float, S.Solution | None]]:
    out = []
    for kind, value in p.budgets:
        if kind == "ms":
            out.append((value, S.solve(table, value / 1e3, S.SECONDS)))
        else:
            out.append((value, S.solve(table, S.budget_bytes(table, **{kind: value}))))
    return out


def add_times(p: Plan, table: S.ScoreTable, model: Any, retime: bool) -> None:
    """Each layer x candidate's op time at the plan's shape (this machine, cached)."""
    from runs.search_latency import layer_seconds

    seconds, how = layer_seconds(model, p.layers, p.candidates, p.latency, use_cache=not retime)
    table.set_seconds(seconds, how)


def run_here(sf: Any, sweep_id: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the verification sweep in this process; one row per run."""
    from db import queue
    from workers.cli import local_worker

    rows = []
    with local_worker(sf, f"sweep {sweep_id} stays queued", args) as runner:
        for queued in queue.sweep_jobs(sf, sweep_id):
            job = queue.claim(sf, runner.worker_id, job_id=queued.id)
            if job is None:
                continue
            status = runner.run_claimed(job)
            done = queue.get_job(sf, queued.id)
            assert done is not None
            r = done.result
            keys = (
                cat.PREDICTED_KL,
                cat.KL_TO_BASELINE,
                cat.PREDICTED_BYTES,
                cat.BITS_PER_WEIGHT,
                cat.PREDICTED_LINEAR_MS,
            )
            rows.append(
                {"run_id": done.id, "status": status, **{m.key: r.get(m.key) for m in keys}}
            )
    return rows


def _print(obj: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(obj) if as_json else "\n".join(f"{k}: {v}" for k, v in obj.items()))


def _scores(sf: Any, p: Plan, args: argparse.Namespace) -> tuple[Any, S.ScoreTable, dict]:
    """(bench or None, the score table, the uniform recipes' whole measurements)."""
    if args.here:
        return local_scores(p)
    return None, stored_scores(sf, p), {}


def _timing_model(bench: Any, p: Plan) -> Any:
    from core.models import load_model

    return bench.model if bench is not None else load_model(p.template.model).model


def run_search(args: argparse.Namespace) -> int:
    """The ``search`` command."""
    from db.queue import submit_sweep, text_exists
    from db.session import session_factory

    p = plan(args)  # exit 2 on bad input, before the database is opened
    sf = session_factory(args.db)
    for name in (p.template.calib, p.template.eval_set):
        if name.startswith("upload:") and not text_exists(sf)(name):
            print(f"error: {name} is not in the database: upload it again")
            return 2
    bench, table, uniform = _scores(sf, p, args)
    missing = table.missing()
    if missing:
        ids = queue_scoring(sf, p, missing)
        _print({"scoring_jobs_queued": len(missing), "sweeps": ids}, args.json)
        return 0
    if p.latency is not None:
        add_times(p, table, _timing_model(bench, p), args.retime)
    sols = solutions(p, table)
    front = S.predicted_front(table, [s.budget for _, s in sols if s is not None], p.kind)
    out: dict[str, Any] = {"front": front, "uniform": uniform}
    if p.latency is not None:
        out["layer_timing"] = table.latency
    chosen = [(f"budget {v:g}", sol) for v, sol in sols if sol is not None]
    if len(chosen) < len(sols):
        out["nothing_fits"] = [v for v, sol in sols if sol is None]
    jobs = S.verification_jobs(p.template, p.candidates, chosen)
    if not args.no_verify and jobs:
        sweep_id = submit_sweep(sf, model=p.template.model, jobs=jobs)
        out["verification_sweep"] = sweep_id
        if args.here:
            out["runs"] = run_here(sf, sweep_id, args)
    if args.here and p.latency is not None and chosen and not args.no_verify:
        out["model_latency"] = model_latency(bench, p, chosen, table)
    _print(out, args.json)
    failed = any(r["status"] != "succeeded" for r in out.get("runs", []))
    return 1 if failed else 0
