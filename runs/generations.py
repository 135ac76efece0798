"""A job's generations (core.generate): greedy continuations of the job's prompts (or
the model's defaults) by the uncompressed model before the recipe runs and by the
compressed one after, stored pairwise with the first differing token."""

from __future__ import annotations

from typing import Any

from core.generate import (
    GEN_SEED,
    GEN_TOKENS,
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
