"""The model's layer names without its weights, for sensitivity sweeps (the sweeps
themselves are recipes and job records: see runs.sensitivity)."""

from __future__ import annotations

from torch import nn


def model_layers(model: nn.Module) -> tuple[list[str], str]:
    """(every linear's name, the decoder blocks' path) of a model or skeleton."""
    from core.walk import find_blocks, find_linears

    path, _ = find_blocks(model)
    return list(find_linears(model)), path
