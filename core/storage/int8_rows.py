"""int8 rows with quantized activations: W8A8 (dynamic or static) and LLM.int8().

Layout: ``w_int8`` (N, K) int8, symmetric absmax per output row (the per-channel RTN of
:mod:`core.quant.rtn`, the one weight quantizer); ``w_scale`` (N,) float32; for static
activation quantization ``x_scale`` (a float32 scalar from the calibrated max|x|).

Unlike the affine format (float activations), these multiply int8 activations by the
int8 weights through ``ops.int8_linear`` (on the CPU our VNNI or AVX2 kernel, or
oneDNN's ``torch._int_mm``; Triton or ``_int_mm`` on a GPU), which records the path it
took.
"""

from __future__ import annotations

import torch

from core.kernels import ops
from core.quant.actquant import static_scale_from_absmax
from core.quant.rtn import QuantSpec, quantize
from core.storage.base import CompressedLinear, frozen_bias

ACT_MODES = ("dynamic", "static")
PER_ROW_INT8 = QuantSpec(bits=8, symmetric=True, granularity="channel")


class Int8RowsLinear(CompressedLinear):
    """int8 weights (out, in), one float32 absmax scale per output row."""

    format_name = "int8-rows"

    def _init_rows(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.out_features, self.in_features = weight.shape
        qt = quantize(weight, PER_ROW_INT8)
        self.register_buffer("w_int8", qt.q.to(torch.int8))
        self.register_buffer("w_scale", qt.scale.reshape(-1).to(torch.float32))
        self.bias = frozen_bias(bias)

    def dequantized_weight(self) -> torch.Tensor:
        return self.w_int8.float() * self.w_scale.reshape(-1, 1)

    def nominal_bits(self) -> float:
        return 8.0


class W8A8Linear(Int8RowsLinear):
    """int8 weights x int8 activations -> int32, dequantized with both scales.

    ``act_mode`` "dynamic": one activation scale per token, computed at run time.
    ``act_mode`` "static": one scale for the whole tensor, from the calibration absmax.
    """

    @classmethod
    def build(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        act_mode: str = "dynamic",
        act_absmax: float | torch.Tensor | None = None,
    ) -> W8A8Linear:
        if act_mode not in ACT_MODES:
            raise ValueError(f"act_mode={act_mode!r}: expected one of {ACT_MODES}")
        if act_mode == "static" and act_absmax is None:
            raise ValueError("static activation quantization needs the calibrated max|x|")
        mod = cls()
        mod._init_rows(weight, bias)
        mod.act_mode = act_mode
        if act_mode == "static":
            mod.register_buffer("x_scale", static_scale_from_absmax(act_absmax))
        else:
            mod.x_scale = None
        return mod.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.int8_linear(x, self.w_int8, self.w_scale, self.bias, self.act_mode, self.x_scale)

    def scheme(self) -> str:
        return f"w8a8-{self.act_mode}"


class LLMInt8Linear(Int8RowsLinear):
    """LLM.int8()-style decomposition (Dettmers et al. 2022): the input feature columns
    holding a value with magnitude above ``threshold`` in this input are multiplied in
    float (with their dequantized weight columns); every other column goes through the
    int8 kernel with per-token activation scales (vector-wise quantization)."""

    @classmethod
    def build(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, *, threshold: float = 6.0
    ) -> LLMInt8Linear:
        mod = cls()
        mod._init_rows(weight, bias)
        mod.threshold = float(threshold)
        return mod.eval()

    def outlier_columns(self, x2: torch.Tensor) -> torch.Tensor:
        """Indices of the input columns of ``x2`` (M, K) with some |x| > threshold."""
        return ops.outlier_columns(x2, self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.llm_int8_linear(x, self.threshold, self.w_int8, self.w_scale, self.bias)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def scheme(self) -> str:
        return f"llm-int8-t{self.threshold:g}"
