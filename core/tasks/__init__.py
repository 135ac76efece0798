"""Task accuracy with lm-evaluation-harness, on a model in memory (compressed or not).

lm-eval's ``HFLM(pretrained=model, tokenizer=...)`` wraps the very model a job has in
memory, so a compressed model is scored in its stored formats, not re-loaded.

Tasks:

- local (data shipped in this package, no network): ``stdlib_body`` (a YAML task with
  its data file, in ``core/tasks/stdlib_body/``), for the demo model;
- hub presets (arc_easy, piqa, lambada_openai, hellaswag, winogrande): their data
  comes from the Hugging Face hub; when it cannot be reached they are refused at once
  (:func:`require_hub`), before any model is loaded, with the usual offline message.

Definitions (lm-eval's, recorded with every score): ``acc`` is the fraction of examples
whose highest total log-likelihood choice is the gold one; ``acc_norm`` divides each
choice's log-likelihood by its length in bytes first; ``stderr`` is the sample
standard deviation of the per-example scores / sqrt(n) (bootstrap for perplexity-like
metrics); ``n`` is the number of examples scored (after ``limit``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core import hub
from core.data import DataError
from core.registry import ConfigError

log = logging.getLogger(__name__)

TASK_DIR = Path(__file__).resolve().parent
# Local tasks: name -> (folder with its YAML and data, one line on what it measures).
LOCAL_TASKS: dict[str, tuple[Path, str]] = {
    "stdlib_body": (
        TASK_DIR / "stdlib_body",
        "pick the real first body line of a held-out stdlib function among 4 (chance 0.25)",
    ),
}
# Hub tasks offered as presets (lm-eval's own definitions; data from the hub).
HUB_TASKS: dict[str, str] = {
    "arc_easy": "grade-school science questions, 4 choices",
    "piqa": "physical commonsense, 2 choices",
    "lambada_openai": "last word of a passage (accuracy and perplexity)",
    "hellaswag": "sentence completion, 4 choices",
    "winogrande": "pronoun resolution, 2 choices",
}
# Presets the New run page offers: label -> task names.
PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "stdlib function bodies (local, demo model)": ("stdlib_body",),
    "commonsense (hub): arc_easy, piqa, hellaswag, winogrande": (
        "arc_easy",
        "piqa",
        "hellaswag",
        "winogrande",
    ),
    "lambada_openai (hub)": ("lambada_openai",),
}
MAX_TASKS = 8  # tasks per job
MAX_LIMIT = 100_000  # examples per task
BOOTSTRAP_ITERS = 1000  # for the stderr of metrics without a closed form
BATCH_SIZE = 8  # log-likelihood requests per forward pass


@dataclass(frozen=True)
class TaskScore:
    """One metric of one task, as lm-eval computed it."""

    task: str
    metric: str  # e.g. "acc", "acc_norm", "perplexity"
    value: float
    stderr: float | None  # None when lm-eval gives none
    n: int  # examples scored
    higher_is_better: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskScore:
        return cls(
            str(d["task"]),
            str(d["metric"]),
            float(d["value"]),
            None if d.get("stderr") is None else float(d["stderr"]),
            int(d["n"]),
            bool(d.get("higher_is_better", True)),
        )


def known_tasks() -> list[str]:
    return [*LOCAL_TASKS, *HUB_TASKS]


def check_tasks(names: Sequence[str], limit: int | None) -> tuple[str, ...]:
    """The task names, stripped and without duplicates; ConfigError if one is unknown,
    there are too many, or ``limit`` is not a whole number in 1..MAX_LIMIT."""
    out: list[str] = []
    for raw in names:
        name = str(raw).strip()
        if name and name not in out:
            out.append(name)
    unknown = [n for n in out if n not in LOCAL_TASKS and n not in HUB_TASKS]
    if unknown:
        raise ConfigError(
            f"unknown task {', '.join(map(repr, unknown))}; available: {', '.join(known_tasks())}"
        )
    if len(out) > MAX_TASKS:
        raise ConfigError(f"at most {MAX_TASKS} tasks per run (got {len(out)})")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT
    ):
        raise ConfigError(f"task limit must be a whole number in [1, {MAX_LIMIT}] (got {limit!r})")
    return tuple(out)


def hub_tasks(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in LOCAL_TASKS]


def require_hub(names: Sequence[str]) -> None:
    """DataError at once when a task needs the hub and the hub cannot be reached (the
    probe takes at most a few seconds; an offline flag answers at once)."""
    needs = hub_tasks(names)
    if not needs:
        return
    why = hub.probe()
    if why:
        raise DataError(
            f"hub unreachable (offline?): {why}, so task(s) {', '.join(needs)} can't load; "
            f"offline, use a local task ({', '.join(LOCAL_TASKS)})"
        )


def data_hash(names: Sequence[str]) -> str:
    """SHA-256 (16 hex digits) of the local tasks' YAML and data files among ``names``
    (hub tasks are identified by lm-eval's version): part of a cached score's key."""
    h = hashlib.sha256()
    for name in sorted(n for n in names if n in LOCAL_TASKS):
        for path in sorted(LOCAL_TASKS[name][0].iterdir()):
            if path.suffix in (".yaml", ".jsonl"):
                h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm-eval")
    except PackageNotFoundError:
        return "not installed"


def scores_from_results(out: dict[str, Any]) -> list[TaskScore]:
    """lm-eval's ``simple_evaluate`` output -> one TaskScore per task and metric."""
    scores = []
    for task, res in sorted((out.get("results") or {}).items()):
        n = int(((out.get("n-samples") or {}).get(task) or {}).get("effective", 0))
        better = (out.get("higher_is_better") or {}).get(task) or {}
        for key, value in res.items():
            metric, _, _filter = key.partition(",")
            if not _ or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            stderr = res.get(f"{metric}_stderr,{_filter}")
            scores.append(
                TaskScore(
                    task,
                    metric,
                    float(value),
                    float(stderr) if isinstance(stderr, int | float) else None,
                    n,
                    bool(better.get(metric, True)),
                )
            )
    return scores


def _tokenizer_for_lm_eval(tokenizer: Any) -> Any:
    """A copy lm-eval may change (it sets a padding token when there is none); with no
    pad, unk or eos token, id 0 pads (padded positions are masked out)."""
    tok = copy.deepcopy(tokenizer)
    if tok.pad_token is None and tok.unk_token is None and tok.eos_token is None:
        tok.pad_token = tok.convert_ids_to_tokens(0)
    return tok


def _task_manager(names: Sequence[str]) -> Any:
    from lm_eval.tasks import TaskManager

    local = [str(LOCAL_TASKS[n][0]) for n in names if n in LOCAL_TASKS]
    # Indexing lm-eval's own thousands of task files takes seconds: only for hub tasks.
    return TaskManager(include_path=local or None, include_defaults=bool(hub_tasks(names)))


def evaluate_tasks(
    model: nn.Module,
    tokenizer: Any,
    names: Sequence[str],
    limit: int | None = None,
    *,
    on_progress: Callable[[float, str], None] = lambda f, m: None,
    batch_size: int = BATCH_SIZE,
) -> list[TaskScore]:
    """Score ``model`` (in memory, as it is) on the tasks with lm-eval; ``limit`` caps
    the examples per task (the first ones, in the task's order)."""
    names = check_tasks(names, limit)
    if not names:
        return []
    require_hub(names)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise ConfigError(f"task accuracy needs lm-eval: pip install lm-eval==0.4.13 ({e})") from e
    on_progress(0.0, f"tasks: {', '.join(names)}")
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=_tokenizer_for_lm_eval(tokenizer), batch_size=batch_size)
    out = simple_evaluate(
        model=lm,
        tasks=list(names),
        task_manager=_task_manager(names),
        limit=limit,
        log_samples=False,
        bootstrap_iters=BOOTSTRAP_ITERS,
    )
    if out is None:  # only a non-zero rank of a distributed run gets None
        raise DataError("lm-eval returned no results")
    on_progress(1.0, "tasks scored")
    return scores_from_results(out)
