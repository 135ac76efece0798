"""The stages of a job and their share of its progress bar, declared once."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]  # on_progress(fraction in [0, 1], message)

# (stage, weight): the stages in the order they run; the weights sum to 1.
STAGES: tuple[tuple[str, float], ...] = (
    ("load", 0.05),  # model, evaluation text, windows
    ("baseline", 0.20),  # uncompressed log-probs (cached), statistics, latency
    ("baseline outputs", 0.05),  # its generations and task scores (cached)
    ("calibrate", 0.05),  # calibration batches, input activations
    ("compress", 0.25),  # the recipe, layer by layer
    ("evaluate", 0.20),  # perplexity, bits per byte, KL against the baseline
    ("outputs", 0.05),  # generations and task scores of the compressed model
    ("kv cache", 0.05),  # decoding through the recipe's KV cache policy, if it has one
    ("measure speed", 0.05),  # prefill and decode latency, weight memory
    ("store", 0.05),  # the saved model (if asked) and the run's records
)


def stage_spans() -> dict[str, tuple[float, float]]:
    """Stage -> (start, width) of its span of the progress bar."""
    spans, start = {}, 0.0
    for name, weight in STAGES:
        spans[name] = (start, weight)
        start += weight
    return spans


class StageProgress:
    """Maps each stage's own progress (0..1) into its span of the job's progress bar."""

    def __init__(self, on_progress: Progress) -> None:
        self.on_progress = on_progress
        self.spans = stage_spans()
        self.last = 0.0

    def stage(self, name: str) -> Progress:
        start, width = self.spans[name]

        def report(fraction: float, message: str) -> None:
            f = start + width * min(1.0, max(0.0, fraction))
            self.last = max(self.last, f)  # a stage may restart its count: never go back
            self.on_progress(round(self.last, 6), message)

        return report

    def done(self) -> None:
        self.on_progress(1.0, "done")
