"""Sparse weight storage: what pruned linears really occupy, and how they still run.

- :class:`NMSparseLinear`: N:M semi-structured weights stored as the N kept values of
  every group of M inputs (in the layer's float dtype) plus each value's position in
  its group, packed at 2 bits for M=4 and 3 bits for M=8. On CUDA, 2:4 runs through
  torch's semi-structured sparse tensors when they accept the shape and dtype; on the
  CPU the dense weight is rebuilt on the fly for each forward.
- :class:`BitmaskSparseLinear` (one bit per weight + the non-zero values) and
  :class:`CSRSparseLinear` (row pointers + column indices + values) for unstructured
  sparsity, chosen only where they are smaller than the dense matrix.

Pruning methods return a plain ``nn.Linear`` holding zeros and tagged with its pattern
(:func:`pruned_linear`), so a later quantization step in the same recipe can still
target it; :func:`pack_pruned_linears` runs once the recipe is done and moves every
still-plain tagged linear into its sparse storage.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.layers import CompressedLinear
from core.prune.masks import index_bits, is_nm_sparse, parse_pattern
from core.quant.pack import pack_bits, packed_numel, unpack_bits

log = logging.getLogger(__name__)

try:  # CUDA-only semi-structured (2:4) kernels; absent or unusable elsewhere
    from torch.sparse import to_sparse_semi_structured
except ImportError:  # pragma: no cover - depends on the torch build
    to_sparse_semi_structured = None

SPARSITY_ATTR = "_compresslab_sparsity"  # on a pruned nn.Linear: "2:4", "4:8" or "unstructured"
UNSTRUCTURED = "unstructured"


def pruned_linear(
    layer: nn.Linear, weight: torch.Tensor, keep: torch.Tensor, label: str
) -> nn.Linear:
    """A new ``nn.Linear`` with ``weight`` zeroed where ``keep`` is False, tagged ``label``."""
    new = torch.nn.utils.skip_init(
        nn.Linear,
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    w = weight.detach().to(layer.weight.dtype).masked_fill(~keep.to(weight.device), 0.0)
    new.weight = nn.Parameter(w, requires_grad=False)
    if layer.bias is not None:
        new.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    setattr(new, SPARSITY_ATTR, label)
    return new


class NMSparseLinear(CompressedLinear):
    """N:M sparse weights: ``values`` (out, groups * N) in the layer dtype, ``index``
    (packed uint8, ceil(log2 M) bits per kept value), ``bias`` as it was.

    ``in_features`` not divisible by M is zero-padded to whole groups.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, n: int, m: int) -> None:
        super().__init__()
        if not is_nm_sparse(weight, n, m):
            raise ValueError(f"weight has more than {n} non-zeros in some group of {m}")
        self.out_features, self.in_features = weight.shape
        self.n, self.m, self.bits = n, m, index_bits(m)
        self.groups = math.ceil(self.in_features / m)
        w = F.pad(weight.detach(), (0, self.groups * m - self.in_features))
        w = w.reshape(self.out_features, self.groups, m)
        # The positions of the (at most N) non-zeros; a group with fewer stores zeros.
        idx = torch.topk(w.float().abs(), n, dim=2).indices.sort(dim=2).values
        self.register_buffer("values", w.gather(2, idx).reshape(self.out_features, -1).clone())
        self.register_buffer("index", pack_bits(idx.to(torch.uint8), self.bits))
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        )
        self._semi: dict[Any, Any] = {}  # CUDA semi-structured weight per (device, dtype)

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight in the stored dtype, rebuilt from values and positions."""
        k = self.out_features * self.groups * self.n
        idx = (
            unpack_bits(self.index, self.bits, k)
            .long()
            .reshape(self.out_features, self.groups, self.n)
        )
        dense = torch.zeros(
            self.out_features,
            self.groups,
            self.m,
            dtype=self.values.dtype,
            device=self.values.device,
        )
        dense.scatter_(2, idx, self.values.reshape(self.out_features, self.groups, self.n))
        return dense.reshape(self.out_features, -1)[:, : self.in_features]

    def dequantized_weight(self) -> torch.Tensor:
        return self.dense_weight().float()

    def _semi_structured(self, x: torch.Tensor) -> Any:
        """torch's 2:4 sparse tensor for CUDA inputs, or None where it is not usable."""
        if to_sparse_semi_structured is None or not x.is_cuda or (self.n, self.m) != (2, 4):
            return None
        key = (x.device, x.dtype)
        cache = self._semi_cache()
        if key not in cache:
            try:
                cache[key] = to_sparse_semi_structured(self.dense_weight().to(x.dtype))
            except (RuntimeError, ValueError, NotImplementedError, TypeError) as e:
                log.info(
                    "semi-structured 2:4 unavailable for %s %s: %s",
                    x.dtype,
                    tuple(self.values.shape),
                    e,
                )
                cache[key] = None
        return cache[key]

    def _semi_cache(self) -> dict[Any, Any]:
        # Not built by __init__ when a module is rebuilt empty from a saved layout.
        return self.__dict__.setdefault("_semi", {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        semi = self._semi_structured(x)
        if semi is not None:
            try:
                return F.linear(x, semi, b)
            except (RuntimeError, NotImplementedError, TypeError) as e:
                log.info("semi-structured 2:4 matmul failed, decompressing instead: %s", e)
                self._semi_cache()[(x.device, x.dtype)] = None
        return F.linear(x, self.dense_weight().to(x.dtype), b)

    def scheme(self) -> str:
        return f"{self.n}:{self.m}-sparse-{str(self.values.dtype).replace('torch.', '')}"

    def _apply(self, fn: Any, recurse: bool = True) -> NMSparseLinear:
        self._semi = {}  # a device or dtype move invalidates the cached CUDA tensor
        return super()._apply(fn, recurse)


class BitmaskSparseLinear(CompressedLinear):
    """Unstructured sparse weights: ``mask`` (1 bit per weight, packed) + ``values`` (nnz,)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        nz = weight.detach() != 0
        self.register_buffer("mask", pack_bits(nz.to(torch.uint8), 1))
        self.register_buffer("values", weight.detach()[nz].clone())
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        )

    def dense_weight(self) -> torch.Tensor:
        n = self.out_features * self.in_features
        # Same bit order as pack_bits(bits=1); int32 shifts are much faster than uint8 ones.
        shifts = torch.arange(8, dtype=torch.int32, device=self.mask.device)
        nz = ((self.mask.to(torch.int32).unsqueeze(1) >> shifts) & 1).reshape(-1)[:n].bool()
        dense = torch.zeros(n, dtype=self.values.dtype, device=self.values.device)
        return dense.masked_scatter_(nz, self.values).reshape(self.out_features, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        return self.dense_weight().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dense_weight().to(x.dtype), b)

    def scheme(self) -> str:
        return f"bitmask-sparse-{str(self.values.dtype).replace('torch.', '')}"


class CSRSparseLinear(CompressedLinear):
    """Unstructured sparse weights in CSR: ``crow`` (out + 1,) int32, ``col`` (nnz,) int16
    (int32 beyond 32767 inputs), ``values`` (nnz,)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        w = weight.detach()
        nz = w != 0
        rows, cols = nz.nonzero(as_tuple=True)  # row-major order, as CSR wants
        col_dtype = torch.int16 if self.in_features <= 32767 else torch.int32
        crow = F.pad(nz.sum(dim=1).cumsum(0), (1, 0))
        self.register_buffer("crow", crow.to(torch.int32))
        self.register_buffer("col", cols.to(col_dtype))
        self.register_buffer("values", w[rows, cols].clone())
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        )

    def dense_weight(self) -> torch.Tensor:
        dense = torch.zeros(
            self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device
        )
        counts = self.crow[1:].long() - self.crow[:-1].long()
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=dense.device), counts)
        dense[rows, self.col.long()] = self.values
        return dense

    def dequantized_weight(self) -> torch.Tensor:
        return self.dense_weight().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dense_weight().to(x.dtype), b)

    def scheme(self) -> str:
        return f"csr-sparse-{str(self.values.dtype).replace('torch.', '')}"


def unstructured_layout_bytes(out_f: int, in_f: int, nnz: int, element_size: int) -> dict[str, int]:
    """Weight bytes of each unstructured layout (biases excluded)."""
    col_bytes = 2 if in_f <= 32767 else 4
    return {
        "dense": out_f * in_f * element_size,
        "bitmask": packed_numel(out_f * in_f, 1) + nnz * element_size,
        "csr": (out_f + 1) * 4 + nnz * (element_size + col_bytes),
    }


def choose_unstructured_layout(out_f: int, in_f: int, nnz: int, element_size: int) -> str:
    """The smallest layout; dense wins ties (no decompression for nothing)."""
    sizes = unstructured_layout_bytes(out_f, in_f, nnz, element_size)
    return min(sizes, key=lambda k: (sizes[k], k != "dense"))


def pack_linear(layer: nn.Linear, label: str) -> nn.Module:
    """The storage module for a pruned linear tagged ``label``; the layer itself if dense
    is the smallest honest form."""
    w = layer.weight.detach()
    if label != UNSTRUCTURED:
        n, m = parse_pattern(label)
        return NMSparseLinear(w, layer.bias, n, m)
    nnz = int((w != 0).sum())
    layout = choose_unstructured_layout(w.shape[0], w.shape[1], nnz, w.element_size())
    if layout == "bitmask":
        return BitmaskSparseLinear(w, layer.bias)
    if layout == "csr":
        return CSRSparseLinear(w, layer.bias)
    return layer


def pack_pruned_linears(model: nn.Module) -> list[str]:
    """Move every plain ``nn.Linear`` tagged by a pruning step into its sparse storage.

    Linears a later step already replaced (a quantized one) are no longer plain and are
    left alone. Returns the names of the linears whose storage changed.
    """
    changed = []
    for name, mod in list(model.named_modules()):
        label = getattr(mod, SPARSITY_ATTR, None)
        if type(mod) is not nn.Linear or label is None:
            continue
        new = pack_linear(mod, label)
        if new is not mod:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
            changed.append(name)
    return changed
