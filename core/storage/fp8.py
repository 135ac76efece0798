"""FP8 format: 8-bit floats (E4M3 or E5M2) times a float32 scale per tensor or per row.

The layout of FP8 checkpoints: ``weight`` (out, in) float8 + ``weight_scale``
(out or 1, 1) float32. The forward dequantizes (no FP8 matmul on the CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.quant.fp8 import FP8Tensor, dequantize_fp8
from core.storage.base import CompressedLinear, frozen_bias


class FP8Linear(CompressedLinear):
    """Weights stored as 8-bit floats with a float32 scale."""

    format_name = "fp8"

    @classmethod
    def build(cls, weight: FP8Tensor, bias: torch.Tensor | None) -> FP8Linear:
        """``weight`` is :func:`core.quant.fp8.quantize_fp8`'s output."""
        mod = cls()
        mod.out_features, mod.in_features = weight.data.shape
        mod.register_buffer("weight", weight.data)
        mod.register_buffer("weight_scale", weight.scale.to(torch.float32))
        mod.granularity = weight.granularity
        mod.bias = frozen_bias(bias)
        return mod.eval()

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_fp8(FP8Tensor(self.weight, self.weight_scale, self.granularity))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight().to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, b)

    def nominal_bits(self) -> float:
        return 8.0

    def scheme(self) -> str:
        fmt = "e4m3" if self.weight.dtype == torch.float8_e4m3fn else "e5m2"
        return f"fp8-{fmt}-{self.granularity}"
