"""``python -m workers tune-kernels``: measure the CPU kernel dispatch table here.

Times every available path of each ``compresslab::`` op for each (M, K) cell, briefly
(``--budget-s`` per op), and stores the table in the data folder keyed by this
machine (CPU model, flags, core count, torch version); runs on this machine then use it
(see core/kernels/tune.py). Ops already measured are kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import time

from core.kernels import ops, tune


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tune-kernels`` on the ``python -m workers`` subcommands."""
    p = subparsers.add_parser(
        "tune-kernels", help="measure the fastest int8/int4 kernel path per shape on this CPU"
    )
    p.add_argument(
        "--op",
        action="append",
        choices=ops.OPS,
        help="tune only this op (repeatable; default: all)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=tune.BUDGET_S,
        help=f"seconds of timing per op (default {tune.BUDGET_S:g})",
    )
    p.add_argument("--force", action="store_true", help="measure again ops already measured")
    p.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    """The ``tune-kernels`` command: tune, store, print the table and where it is."""
    if not args.budget_s > 0:
        print("error: --budget-s must be positive")
        return 2
    t0 = time.perf_counter()
    table = ops.tune_ops(tuple(args.op or ops.OPS), budget_s=args.budget_s, force=args.force)
    print(tune.summarize(table))
    print(f"stored in {tune.table_file()} ({time.perf_counter() - t0:.1f}s)")
    return 0
