"""16-bit cast format: the weight in a lower-precision float (float16, bfloat16)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.storage.base import CompressedLinear, dtype_name


class CastLinear(CompressedLinear):
    """Weights (and bias) stored in ``dtype``; the matmul runs in that dtype."""

    format_name = "cast"

    @classmethod
    def build(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, *, dtype: torch.dtype
    ) -> CastLinear:
        mod = cls()
        mod.out_features, mod.in_features = weight.shape
        mod.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
        mod.bias = (
            None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        )
        return mod.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float()

    def nominal_bits(self) -> float:
        return float(torch.finfo(self.weight.dtype).bits)

    def scheme(self) -> str:
        return dtype_name(self.weight.dtype)
