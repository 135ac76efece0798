"""Modules that hold compressed weights in their real storage format.

Each replaces an ``nn.Linear``. Its buffers are what is stored (and counted as
weight memory); its forward dequantizes on the fly, so the model still runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.quant.fp8 import FP8Tensor, dequantize_fp8
from core.quant.pack import pack_bits, unpack_bits
from core.quant.rtn import QuantizedTensor, dequantize, qrange

_SIMPLE = (bool, int, float, str, type(None))


def _to_json(value: Any) -> Any:
    """A plain attribute as JSON (dtypes as {"dtype": name}); TypeError if it is not plain."""
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).replace("torch.", "")}
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _to_json(v) for k, v in value.items()}
    raise TypeError(f"attribute of type {type(value).__name__} cannot be saved as JSON")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"dtype"}:
        return getattr(torch, value["dtype"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    return value


class CompressedLinear(nn.Module):
    """Base of the modules that replace ``nn.Linear``; knows its shape and scheme."""

    in_features: int
    out_features: int

    def scheme(self) -> str:
        return type(self).__name__

    def dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def storage_config(self) -> dict[str, Any]:
        """What :meth:`from_storage_config` needs to rebuild an empty module of the same
        layout (JSON): plain attributes, and the shape and dtype of every parameter and
        buffer; the tensors themselves go to the safetensors file. Modules whose state is
        more than tensors and plain attributes override both methods."""
        if any(True for _ in self.children()):
            raise TypeError(f"{type(self).__name__} has child modules: override storage_config")
        tensors = {}
        for kind, table in (("param", self._parameters), ("buffer", self._buffers)):
            for name, t in table.items():
                if t is None:
                    continue
                persistent = kind == "param" or name not in self._non_persistent_buffers_set
                tensors[name] = {
                    "kind": kind,
                    "shape": list(t.shape),
                    "dtype": str(t.dtype).replace("torch.", ""),
                    "persistent": persistent,
                }
        attrs = {
            k: _to_json(v)
            for k, v in self.__dict__.items()
            if not k.startswith("_") and k != "training"
        }
        return {"attrs": attrs, "tensors": tensors}

    @classmethod
    def from_storage_config(cls, cfg: dict[str, Any]) -> CompressedLinear:
        """An empty module with the layout ``cfg`` describes; ``load_state_dict`` fills it."""
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        for k, v in cfg["attrs"].items():
            setattr(mod, k, _from_json(v))
        for name, t in cfg["tensors"].items():
            empty = torch.zeros(t["shape"], dtype=getattr(torch, t["dtype"]))
            if t["kind"] == "param":
                setattr(mod, name, nn.Parameter(empty, requires_grad=False))
            else:
                mod.register_buffer(name, empty, persistent=t["persistent"])
        return mod.eval()


class CastLinear(CompressedLinear):
    """Weights stored in a lower-precision float (float16, bfloat16); matmul in that dtype."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float()

    def scheme(self) -> str:
        return str(self.weight.dtype).replace("torch.", "")


class QuantLinear(CompressedLinear):
    """Integer weights packed at ``bits`` per value, float16 scales, int8 zero points.

    Buffers: ``qweight`` (uint8, packed), ``scale`` (out or 1, n_groups) float16,
    ``zero`` (same shape) int8 or absent for symmetric schemes, ``bias`` as it was.
    """

    def __init__(
        self, qt: QuantizedTensor, bias: torch.Tensor | None, out_dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = qt.q.shape
        self.bits, self.group_cols = qt.bits, qt.group_cols
        self.symmetric = qt.zero is None
        offset = -qrange(qt.bits, self.symmetric)[0]  # shift to unsigned before packing
        self.register_buffer("qweight", pack_bits((qt.q + offset).to(torch.uint8), qt.bits))
        self.register_buffer("scale", qt.scale.to(torch.float16))
        if qt.zero is not None:
            self.register_buffer("zero", qt.zero.to(torch.int8))
        else:
            self.zero = None
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.out_dtype = out_dtype

    def int_weight(self) -> torch.Tensor:
        """The signed integer weights (out, in), unpacked."""
        offset = -qrange(self.bits, self.symmetric)[0]
        n = self.out_features * self.in_features
        q = unpack_bits(self.qweight, self.bits, n).to(torch.int16) - offset
        return q.reshape(self.out_features, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        qt = QuantizedTensor(
            q=self.int_weight(),
            scale=self.scale.float(),
            zero=None if self.zero is None else self.zero.float(),
            bits=self.bits,
            group_cols=self.group_cols,
        )
        return dequantize(qt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight().to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, b)

    def scheme(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"int{self.bits}-{kind}-g{self.group_cols}"


class FP8Linear(CompressedLinear):
    """Weights stored as 8-bit floats (E4M3 or E5M2) times a float32 scale per tensor or
    per output channel (the layout of FP8 checkpoints: ``weight`` + ``weight_scale``).

    Buffers: ``weight`` (out, in) float8, ``weight_scale`` (out or 1, 1) float32.
    """

    def __init__(self, ft: FP8Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = ft.data.shape
        self.register_buffer("weight", ft.data)
        self.register_buffer("weight_scale", ft.scale.to(torch.float32))
        self.granularity = ft.granularity
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.out_dtype = out_dtype

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_fp8(FP8Tensor(self.weight, self.weight_scale, self.granularity))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight().to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, b)

    def scheme(self) -> str:
        fmt = "e4m3" if self.weight.dtype == torch.float8_e4m3fn else "e5m2"
        return f"fp8-{fmt}-{self.granularity}"


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

    def __init__(
        self,
        CB: torch.Tensor,
        SCB: torch.Tensor,
        bias: torch.Tensor | None,
        threshold: float,
        out_dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = CB.shape
        self.register_buffer("CB", CB)  # (out, in) int8
        self.register_buffer("SCB", SCB)  # (out,) float32 row absmax
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.threshold = float(threshold)
        self.out_dtype = out_dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, threshold: float) -> BnbInt8Linear:
        bnb = _bnb()
        lt = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=False,
            has_fp16_weights=False,
            threshold=threshold,
        )
        lt.weight = bnb.nn.Int8Params(
            linear.weight.detach().cpu().clone(), requires_grad=False, has_fp16_weights=False
        )
        lt = lt.to(linear.weight.device)  # bitsandbytes quantizes on the move to a device
        return cls(lt.weight.CB, lt.weight.SCB, linear.bias, threshold, linear.weight.dtype)

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

    def scheme(self) -> str:
        return f"bnb-int8-t{self.threshold:g}"


class Bnb4bitLinear(CompressedLinear):
    """bitsandbytes 4-bit storage (NF4 or FP4): two 4-bit codes per byte, one absmax per
    ``blocksize`` weights, with double quantization the absmaxes themselves quantized
    to 8 bits (``nested_*``). Buffers use bitsandbytes' own names and layout (``weight``
    packed uint8, ``absmax``, ``quant_map``, ``nested_absmax``, ``nested_quant_map``);
    the multiplication is ``bitsandbytes.matmul_4bit`` in ``compute_dtype``.
    """

    def __init__(
        self,
        packed: torch.Tensor,
        tensors: dict[str, torch.Tensor],
        meta: dict[str, Any],
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype,
        shape: tuple[int, int],
        out_dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = shape
        self.register_buffer("weight", packed)
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self.qs_meta = meta  # quant_type, blocksize, dtype, shape, nested_* (plain values)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.compute_dtype = compute_dtype
        self.out_dtype = out_dtype
        self._qs: tuple[int, Any] | None = None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        quant_type: str,
        double_quant: bool,
        compute_dtype: torch.dtype,
        blocksize: int,
    ) -> Bnb4bitLinear:
        bnb = _bnb()
        lin4 = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=False,
            compute_dtype=compute_dtype,
            compress_statistics=double_quant,
            quant_type=quant_type,
        )
        lin4.weight = bnb.nn.Params4bit(
            linear.weight.detach().cpu().clone(),
            requires_grad=False,
            quant_type=quant_type,
            compress_statistics=double_quant,
            blocksize=blocksize,
        )
        lin4 = lin4.to(linear.weight.device)  # bitsandbytes quantizes on the move to a device
        qs = lin4.weight.quant_state.as_dict(packed=False)
        tensors = {k: v for k, v in qs.items() if isinstance(v, torch.Tensor)}
        meta = {k: v for k, v in qs.items() if not isinstance(v, torch.Tensor)}
        meta["shape"] = list(meta["shape"])
        return cls(
            lin4.weight.data,
            tensors,
            meta,
            linear.bias,
            compute_dtype,
            (linear.out_features, linear.in_features),
            linear.weight.dtype,
        )

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

    def scheme(self) -> str:
        dq = "-dq" if "nested_absmax" in self._buffers else ""
        return f"bnb-{self.qs_meta['quant_type']}-b{self.qs_meta['blocksize']}{dq}"


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def module_storage_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers a module holds (its own and its children's)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += tensor_bytes(t)
    return total
