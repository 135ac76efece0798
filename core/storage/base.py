"""The base of every stored format, and how its bytes are counted.

A stored format is a ``CompressedLinear`` subclass that replaces an ``nn.Linear``.
Its parameters and buffers are exactly what is stored, so the bytes a model
occupies are the bytes of its tensors (:func:`module_storage_bytes`), never an
estimate from a method's name. Every format is built the same way,
``Cls.build(weight, bias, **format_params)``, and describes its empty layout as JSON
(:meth:`CompressedLinear.storage_config`) so that ``core.save`` can rebuild it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

_SIMPLE = (bool, int, float, str, type(None))


def _to_json(value: Any) -> Any:
    """A plain attribute as JSON (dtypes as {"dtype": name}); TypeError if it is not plain."""
    if isinstance(value, torch.dtype):
        return {"dtype": dtype_name(value)}
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


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling used in schemes and JSON)."""
    return str(dtype).replace("torch.", "")


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` as stored (element count times element size):
    a tensor, a dataclass, or a list / tuple / dict of them (calibration statistics are
    sized the same way as stored weights)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    return 0


def module_storage_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers a module holds (its own and its children's);
    a tensor shared by two modules (tied weights) counts once."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = t.data_ptr() if t.numel() and not t.is_meta else id(t)  # meta: no address
        if key in seen:
            continue
        seen.add(key)
        total += tensor_bytes(t)
    return total


def frozen_bias(bias: torch.Tensor | None) -> nn.Parameter | None:
    """The bias as a frozen parameter (a copy: the format never aliases the source layer)."""
    if bias is None:
        return None
    return nn.Parameter(bias.detach().clone(), requires_grad=False)


class CompressedLinear(nn.Module):
    """Base of the stored formats that replace ``nn.Linear``.

    Subclasses set :attr:`format_name`, implement ``build`` (the one constructor
    convention: ``Cls.build(weight, bias, **format_params)``), ``forward``,
    :meth:`dequantized_weight`, :meth:`scheme` and :meth:`nominal_bits`.
    """

    format_name: ClassVar[str] = "compressed"
    in_features: int
    out_features: int

    @classmethod
    def build(cls, weight: Any, bias: torch.Tensor | None, **params: Any) -> CompressedLinear:
        """The module holding ``weight`` (float, or the method's encoding of it) in this
        format, with ``bias`` kept as it is; ``params`` are the format's own settings."""
        raise NotImplementedError

    def scheme(self) -> str:
        """A detailed label of the encoding, e.g. ``int4-sym-g128``."""
        return type(self).__name__

    def nominal_bits(self) -> float:
        """Bits of one stored weight value (scales, indices and bias not included)."""
        raise NotImplementedError

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 (out, in) weight this module multiplies by (for error measures)."""
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
                    "dtype": dtype_name(t.dtype),
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


@dataclass(frozen=True)
class StorageInfo:
    """How one linear is stored: what a per-layer row reports, read from the module."""

    format: str  # stored format name, e.g. "affine-int", "int8-rows", "fp8", "dense"
    scheme: str  # the detailed label, e.g. "int4-sym-g128"
    bits: float  # nominal bits per stored weight value (4 for int4, 32 for dense fp32)
    weight_bytes: int  # bytes of the module's tensors as stored (bias included)
    n_weights: int  # out_features * in_features


def storage_info(module: nn.Module) -> StorageInfo:
    """The :class:`StorageInfo` of a stored format or of a plain ``nn.Linear`` ("dense",
    or the pruned tag's pattern while a pruned linear awaits packing)."""
    n = int(module.out_features) * int(module.in_features)
    nbytes = module_storage_bytes(module)
    if isinstance(module, CompressedLinear):
        return StorageInfo(
            module.format_name, module.scheme(), float(module.nominal_bits()), nbytes, n
        )
    if isinstance(module, nn.Linear):
        dtype = module.weight.dtype
        bits = float(torch.finfo(dtype).bits if dtype.is_floating_point else dtype.itemsize * 8)
        pattern = getattr(module, "pattern", None)  # a PrunedLinear not packed (yet)
        scheme = dtype_name(dtype) if pattern is None else f"{dtype_name(dtype)}-pruned-{pattern}"
        return StorageInfo("dense", scheme, bits, nbytes, n)
    raise TypeError(f"{type(module).__name__} is not a linear layer or a stored format")
