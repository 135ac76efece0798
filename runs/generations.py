"""A job's generations (core.generate): greedy continuations of the job's prompts (or
the model's defaults) by the uncompressed model before the recipe runs and by the
compressed one after, stored pairwise with the first differing token."""

from __future__ import annotations

from typing import Any

from core.generate import (
    GEN_SEED,
    GEN_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    Continuation,
    continuations,
    default_prompts,
    first_difference,
)
from runs import catalogue as cat
from runs import tasks
from runs.progress import Progress


def prompts_of(job: Any) -> list[str]:
    return list(job.spec.prompts) or list(default_prompts(job.spec.model))


def generate(job: Any) -> list[Continuation]:
    return continuations(
        job.loaded.model, job.loaded.tokenizer, prompts_of(job), GEN_TOKENS, GEN_SEED
    )


def baseline_generations(job: Any, report: Progress) -> None:
    report(0.0, "baseline: generating greedy continuations")
    job.base_generations = generate(job)


def pairs(baseline: list[Continuation], run: list[Continuation]) -> list[dict[str, Any]]:
    """One stored row per prompt: both continuations and the first differing token."""
    return [
        {
            "prompt": b.prompt,
            "max_new_tokens": GEN_TOKENS,
            "seed": GEN_SEED,
            "baseline": {k: v for k, v in b.to_dict().items() if k != "prompt"},
            "run": {k: v for k, v in r.to_dict().items() if k != "prompt"},
            "first_diff": first_difference(b.ids, r.ids),
        }
        for b, r in zip(baseline, run, strict=True)
    ]


def run_generations(job: Any, report: Progress) -> None:
    """The compressed model's continuations (the baseline's when nothing was compressed)."""
    report(0.0, "generating greedy continuations")
    run = generate(job) if job.compresses else job.base_generations
    job.outputs[cat.GENERATIONS.key] = pairs(job.base_generations, run)


def baseline_outputs(job: Any, report: Progress) -> None:
    """Stage 'baseline outputs': generations, then task scores, of the uncompressed model."""
    baseline_generations(job, report)
    tasks.baseline_scores(job, report)


def run_outputs(job: Any, report: Progress) -> None:
    """Stage 'outputs': the same for the compressed model."""
    run_generations(job, report)
    tasks.run_scores(job, report)


def rows_problem(rows: Any) -> tuple[str, str] | None:
    """(where, what it must be) for stored generations that break their shape (an imported
    bundle), None when they are fine."""
    if not isinstance(rows, list) or len(rows) > MAX_PROMPTS:
        return "", f"a list of at most {MAX_PROMPTS} prompts"
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            return f"[{i}]", "an object with a text prompt"
        if len(row["prompt"]) > MAX_PROMPT_CHARS:
            return f"[{i}].prompt", f"at most {MAX_PROMPT_CHARS} characters"
        for side in ("baseline", "run"):
            c = row.get(side)
            pieces = c.get("pieces") if isinstance(c, dict) else None
            ok = isinstance(pieces, list) and len(pieces) <= 512
            if not ok or not all(isinstance(p, str) and len(p) <= 200 for p in pieces):
                return f"[{i}].{side}", "an object whose pieces are at most 512 short texts"
        k = row.get("first_diff")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            return f"[{i}].first_diff", "a whole number >= 0 or null"
    return None
