"""Memory estimate before a run: the model's weights, and what calibration holds besides.

A worker runs every recipe step block by block on the calibration samples (they also
give each layer's output error). The walker keeps one decoder block's inputs and outputs
at a time, plus the statistics of the layers it is calibrating: for a layer method, what its ``init_stats``
allocates (a Hessian of in x in floats for GPTQ and SparseGPT, a vector for Wanda),
one input group's at a time for a sequential method (GPTQ) and the whole block's for the
others, plus the rows each linear keeps to measure its output error. The statistics
are sized by calling ``init_stats`` on the model built on the meta device, so no memory
is allocated and a new method needs no entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from core.calib import CalibSettings
from core.recipe import Recipe, Step
from core.registry import LayerMethod, get_method
from core.storage import tensor_bytes
from core.walk import ERROR_SAMPLE_ROWS, find_blocks, find_linears

FLOAT32 = 4  # bytes: calibration activations and statistics are float32


@dataclass(frozen=True)
class MemoryEstimate:
    weight_bytes: int  # the uncompressed model as loaded (float32)
    block_io_bytes: int  # one block's calibration inputs and outputs
    layer_stats_bytes: int  # statistics held at once (Hessians, norms)
    error_rows_bytes: int  # rows kept per linear to measure its output error
    calibrated: bool = True  # a step needs calibration data (the registry's declaration)

    @property
    def calibration_bytes(self) -> int:
        """Held by calibration besides the model: 0 for a recipe without steps and for a
        data-free one (RTN, magnitude, casts: see :attr:`measurement_bytes`)."""
        if not self.calibrated:
            return 0
        return self.block_io_bytes + self.layer_stats_bytes + self.error_rows_bytes

    @property
    def measurement_bytes(self) -> int:
        """A data-free recipe's samples still pass block by block to measure each layer's
        output error: what that holds (0 when calibration does, counted there)."""
        if self.calibrated:
            return 0
        return self.block_io_bytes + self.layer_stats_bytes + self.error_rows_bytes


def estimate_memory(model: nn.Module, recipe: Recipe, calib: CalibSettings) -> MemoryEstimate:
    """What a run of ``recipe`` on ``model`` holds (``model`` may live on the meta device)."""
    weight_bytes = sum(tensor_bytes(p) for p in model.parameters())
    if not recipe.steps:
        return MemoryEstimate(weight_bytes, 0, 0, 0)
    path, blocks = find_blocks(model)
    rows = calib.n_samples * calib.seq_len
    stats = errors = hidden = 0
    for b, block in enumerate(blocks):  # the walker holds one block's worth at a time
        layers = find_linears(block, prefix=f"{path}.{b}")
        if not layers:
            continue
        hidden = max(hidden, min(m.in_features for m in layers.values()))  # q/k/v, gate/up
        for step in recipe.steps:  # a worker runs every step block by block
            targets = [m for n, m in layers.items() if step.selects(n)]
            stats = max(stats, _stats_held(step, targets))
            errors = max(
                errors, sum(min(ERROR_SAMPLE_ROWS, rows) * m.in_features * FLOAT32 for m in targets)
            )
    io = 2 * rows * hidden * FLOAT32
    return MemoryEstimate(weight_bytes, io, stats, errors, recipe.needs_calibration)


def _stats_held(step: Step, targets: list[nn.Module]) -> int:
    """Bytes of calibration statistics one step holds at once for these layers of a block."""
    method = get_method(step.method)()
    if not method.needs_calibration:  # data-free: no statistics to gather
        return 0
    if isinstance(method, LayerMethod):
        sizes = [tensor_bytes(method.init_stats(m, step.config)) for m in targets]
        return max(sizes, default=0) if method.sequential(step.config) else sum(sizes)
    # model-level methods (AWQ, SmoothQuant): per-channel statistics per layer
    return sum(m.in_features * FLOAT32 for m in targets)
