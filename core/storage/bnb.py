"""bitsandbytes formats: LLM.int8() (int8 rows + outlier threshold) and 4-bit NF4 / FP4.

The tensors are quantized by bitsandbytes itself; these modules keep them as plain
buffers in bitsandbytes' own names and layout, so that they are counted, saved and
moved like every other format's, and rebuild bitsandbytes' state at each call.
"""

from __future__ import annotations

from typing import Any

import torch

from core.storage.base import CompressedLinear, frozen_bias


def _bnb() -> Any:
    """bitsandbytes, imported on first use (it takes seconds to import)."""
    import bitsandbytes

    return bitsandbytes


class BnbInt8Linear(CompressedLinear):
    """LLM.int8() storage from bitsandbytes: int8 weights with one absmax per output row
    (``CB``, ``SCB``, as bitsandbytes' ``Linear8bitLt`` stores them), multiplied by
    ``bitsandbytes.matmul``: inputs are quantized per row to int8, except the input
    columns holding a value above ``threshold``, which go through a float16 matmul.

    The weights are quantized by bitsandbytes' own ``Linear8bitLt`` (``.to(device)``);
    this module keeps its tensors as plain buffers, so that they are counted, saved and
    moved like every other compressed layer's, and builds bitsandbytes' matmul state
    from them at each call.
    """

    format_name = "bnb-int8"

    @classmethod
    def build(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, *, threshold: float = 6.0
    ) -> BnbInt8Linear:
        """Quantized by bitsandbytes' ``Linear8bitLt`` (on its move to ``weight``'s device)."""
        bnb = _bnb()
        lt = bnb.nn.Linear8bitLt(
            weight.shape[1],
            weight.shape[0],
            bias=False,
            has_fp16_weights=False,
            threshold=threshold,
        )
        lt.weight = bnb.nn.Int8Params(
            weight.detach().cpu().clone(), requires_grad=False, has_fp16_weights=False
        )
        lt = lt.to(weight.device)  # bitsandbytes quantizes on the move to a device
        mod = cls()
        mod.out_features, mod.in_features = weight.shape
        mod.register_buffer("CB", lt.weight.CB)  # (out, in) int8
        mod.register_buffer("SCB", lt.weight.SCB)  # (out,) float32 row absmax
        mod.bias = frozen_bias(bias)
        mod.threshold = float(threshold)
        return mod.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bnb = _bnb()
        state = bnb.MatmulLtState()
        state.threshold, state.has_fp16_weights, state.is_training = self.threshold, False, False
        state.CB, state.SCB = self.CB, self.SCB
        # LLM.int8() works on float16 activations (bitsandbytes casts them itself, warning).
        bias = None if self.bias is None else self.bias.to(torch.float16)
        out = bnb.matmul(x.to(torch.float16), self.CB, bias=bias, state=state)
        return out.to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.CB.float() * (self.SCB.float() / 127.0).unsqueeze(1)

    def nominal_bits(self) -> float:
        return 8.0

    def scheme(self) -> str:
        return f"bnb-int8-t{self.threshold:g}"


class Bnb4bitLinear(CompressedLinear):
    """bitsandbytes 4-bit storage (NF4 or FP4): two 4-bit codes per byte, one absmax per
    ``blocksize`` weights, with double quantization the absmaxes themselves quantized
    to 8 bits (``nested_*``). Buffers use bitsandbytes' own names and layout (``weight``
    packed uint8, ``absmax``, ``quant_map``, ``nested_absmax``, ``nested_quant_map``);
    the multiplication is ``bitsandbytes.matmul_4bit`` in ``compute_dtype``.
    """

    format_name = "bnb-4bit"

    @classmethod
    def build(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        quant_type: str = "nf4",
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.float32,
        blocksize: int = 64,
    ) -> Bnb4bitLinear:
        """Quantized by bitsandbytes' ``Linear4bit`` (on its move to ``weight``'s device)."""
        bnb = _bnb()
        lin4 = bnb.nn.Linear4bit(
            weight.shape[1],
            weight.shape[0],
            bias=False,
            compute_dtype=compute_dtype,
            compress_statistics=double_quant,
            quant_type=quant_type,
        )
        lin4.weight = bnb.nn.Params4bit(
            weight.detach().cpu().clone(),
            requires_grad=False,
            quant_type=quant_type,
            compress_statistics=double_quant,
            blocksize=blocksize,
        )
        lin4 = lin4.to(weight.device)  # bitsandbytes quantizes on the move to a device
        qs = lin4.weight.quant_state.as_dict(packed=False)
        mod = cls()
        mod.out_features, mod.in_features = weight.shape
        mod.register_buffer("weight", lin4.weight.data)
        for k, v in qs.items():
            if isinstance(v, torch.Tensor):
                mod.register_buffer(k, v)
        # quant_type, blocksize, dtype, shape, nested_* (plain values)
        mod.qs_meta = {k: v for k, v in qs.items() if not isinstance(v, torch.Tensor)}
        mod.qs_meta["shape"] = list(mod.qs_meta["shape"])
        mod.bias = frozen_bias(bias)
        mod.compute_dtype = compute_dtype
        mod._qs = None
        return mod.eval()

    def quant_state(self) -> Any:
        """bitsandbytes' QuantState over this module's buffers (rebuilt after a move)."""
        key, cached = self.absmax.data_ptr(), getattr(self, "_qs", None)
        if cached is None or cached[0] != key:
            names = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
            tensors = {n: getattr(self, n) for n in names if hasattr(self, n)}
            qs = _bnb().functional.QuantState.from_dict(
                {**self.qs_meta, **tensors}, self.absmax.device
            )
            self._qs = (key, qs)
        return self._qs[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bnb = _bnb()
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        out = bnb.matmul_4bit(
            x.to(self.compute_dtype), self.weight, bias=bias, quant_state=self.quant_state()
        )
        return out.to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        bnb = _bnb()
        return bnb.functional.dequantize_4bit(self.weight, self.quant_state()).float()

    def nominal_bits(self) -> float:
        return 4.0

    def scheme(self) -> str:
        dq = "-dq" if "nested_absmax" in self._buffers else ""
        return f"bnb-{self.qs_meta['quant_type']}-b{self.qs_meta['blocksize']}{dq}"
