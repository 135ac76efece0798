"""Sequential onloading: a model whose decoder blocks live off the compute device (in
safetensors files on disk, opened lazily) and come onto it one at a time.

The model is a skeleton: its parameters sit on the ``meta`` device (no memory) except the
ones outside the decoder blocks (embeddings, final norm, head), which are resident.
Buffers that are not saved (rotary frequencies) are computed as usual when the skeleton
is built. A :class:`BlockStore` attached to the model (:func:`store_of`) fills one
block's tensors from where they live now, and releases them again:

* the walker (``core.walk.iter_blocks``) ``hold``\\s a block while it calibrates and
  compresses it, then ``commit``\\s it: the block as it now is (compressed linears
  included) is written to the store's spill folder and released;
* any whole-model forward (evaluation, latency, statistics) runs inside
  :meth:`BlockStore.streaming`: each block is loaded before its forward and released
  after it, so one block's weights are resident at a time.

On the CPU the "device" is the host: the budget then bounds the block weights resident
in host memory at once, which is what makes this testable without a GPU.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

STORE_ATTR = "_compresslab_block_store"
MIB = 1 << 20


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory, no random
    init cost); buffers are built as usual (rotary frequencies stay real)."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            p = self._parameters[name]
            assert p is not None
            self._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def tensor_index(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file of ``folder`` that holds it (headers only)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: folder / v for k, v in weight_map.items()}
    out: dict[str, Path] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            out.update(dict.fromkeys(fh.keys(), f))
    return out


def read_tensors(
    index: dict[str, Path], names: list[str], device: torch.device, dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """``names`` read from their files (each opened once, closed after: its mapping goes)."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for n in names:
        by_file.setdefault(index[n], []).append(n)
    out: dict[str, torch.Tensor] = {}
    for f, keys in by_file.items():
        with safe_open(str(f), framework="pt") as fh:
            for k in keys:
                t = fh.get_tensor(k)
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                out[k] = t.to(device)
    return out


def _tensors(module: nn.Module) -> Iterator[tuple[str, nn.Module, str, torch.Tensor, bool]]:
    """(full local name, owner, attribute, tensor, is_parameter) of every parameter and
    persistent buffer under ``module``."""
    for mname, mod in module.named_modules():
        for attr, p in mod._parameters.items():
            if p is not None:
                yield (f"{mname}.{attr}" if mname else attr, mod, attr, p, True)
        for attr, b in mod._buffers.items():
            if b is not None and attr not in mod._non_persistent_buffers_set:
                yield (f"{mname}.{attr}" if mname else attr, mod, attr, b, False)


def _put(owner: nn.Module, attr: str, t: torch.Tensor, is_param: bool) -> None:
    if is_param:
        owner._parameters[attr] = nn.Parameter(t, requires_grad=False)
    else:
        owner._buffers[attr] = t


def block_bytes(block: nn.Module) -> int:
    """Bytes of a block's parameters and saved buffers (meta tensors counted by shape)."""
    return sum(t.numel() * t.element_size() for *_, t, _ in _tensors(block))


@dataclass
class BlockStore:
    """Where each decoder block's tensors live between uses, and which are on the device."""

    blocks: nn.ModuleList
    prefix: str  # the blocks' path in the model ("model.layers")
    index: dict[str, Path]  # the original weights, by full name
    device: torch.device
    dtype: torch.dtype | None = torch.float32
    spill: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cl-blocks-")))
    loaded: set[int] = field(default_factory=set)
    held: set[int] = field(default_factory=set)
    committed: set[int] = field(default_factory=set)  # blocks whose state is in ``spill``
    peak_loaded: int = 0  # most blocks on the device at once
    peak_bytes: int = 0  # most block bytes on the device at once

    def __post_init__(self) -> None:
        # The spill folder goes with the store at the latest (close() is the normal way):
        # when it is garbage collected or the process exits.
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.spill), True)

    def _spill_file(self, b: int) -> Path:
        return self.spill / f"block-{b:04d}.safetensors"

    def load(self, b: int) -> None:
        """Fill block ``b``'s tensors on the device (from its last commit, else the
        original weights). Idempotent."""
        if b in self.loaded:
            return
        block = self.blocks[b]
        entries = [e for e in _tensors(block) if e[3].device.type == "meta"]
        if b in self.committed:
            index = dict.fromkeys((e[0] for e in entries), self._spill_file(b))
            state = read_tensors(index, [e[0] for e in entries], self.device, None)
        else:
            full = {e[0]: f"{self.prefix}.{b}.{e[0]}" for e in entries}
            raw = read_tensors(self.index, list(full.values()), self.device, self.dtype)
            state = {k: raw[v] for k, v in full.items()}
        for name, owner, attr, t, is_param in entries:
            _put(owner, attr, state[name].reshape(t.shape), is_param)
        self.loaded.add(b)
        self.peak_loaded = max(self.peak_loaded, len(self.loaded))
        now = sum(block_bytes(self.blocks[i]) for i in self.loaded)
        self.peak_bytes = max(self.peak_bytes, now)

    def release(self, b: int) -> None:
        """Put block ``b``'s tensors back on the meta device (nothing written)."""
        if b not in self.loaded or b in self.held:
            return
        for _, owner, attr, t, is_param in list(_tensors(self.blocks[b])):
            _put(owner, attr, t.to("meta"), is_param)
        self.loaded.discard(b)
        trim_host_heap()  # the block's memory back to the system, not kept by the heap

    def hold(self, b: int) -> None:
        """Load block ``b`` and keep it until :meth:`commit` (the walker's turn on it)."""
        self.load(b)
        self.held.add(b)

    def commit(self, b: int) -> None:
        """Write block ``b`` as it now is to the spill folder, then release it."""
        from safetensors.torch import save_file

        state = {n: t.detach().contiguous().cpu() for n, _, _, t, _ in _tensors(self.blocks[b])}
        tmp = self._spill_file(b).with_suffix(".tmp")
        save_file(state, str(tmp))
        tmp.replace(self._spill_file(b))
        self.committed.add(b)
        self.held.discard(b)
        self.release(b)

    @contextmanager
    def streaming(self) -> Iterator[None]:
        """Whole-model forwards inside load each block before its forward and release it
        after (blocks the walker holds stay)."""
        handles = []
        for b, block in enumerate(self.blocks):
            handles.append(block.register_forward_pre_hook(lambda *_a, b=b: self.load(b)))
            handles.append(block.register_forward_hook(lambda *_a, b=b: self.release(b)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for b in list(self.loaded):
                self.release(b)

    def close(self) -> None:
        """Remove the spill folder (the compressed blocks written so far)."""
        self._cleanup()

    @contextmanager
    def all_loaded(self) -> Iterator[None]:
        """Every block on the device at once for the time of the block (saving the
        compressed model: its blocks are small by then), released after."""
        was, peaks = set(self.loaded), (self.peak_loaded, self.peak_bytes)
        try:
            for b in range(len(self.blocks)):
                self.load(b)
            yield
        finally:
            for b in range(len(self.blocks)):
                if b not in was:
                    self.release(b)
            self.peak_loaded, self.peak_bytes = peaks  # the work's peaks, not the save's


def store_of(model: nn.Module) -> BlockStore | None:
    """The block store of a model loaded for onloading, else None."""
    return getattr(model, STORE_ATTR, None)


@contextmanager
def all_blocks_loaded(model: nn.Module) -> Iterator[None]:
    """:meth:`BlockStore.all_loaded` if ``model`` is onloaded; nothing otherwise."""
    store = store_of(model)
    if store is None:
        yield
        return
    with store.all_loaded():
        yield


def close_store(model: nn.Module | None) -> None:
    """Remove an onloaded model's spill folder (a job's end: done, failed or cancelled)."""
    store = store_of(model) if model is not None else None
    if store is not None:
        store.close()


@contextmanager
def streaming(model: nn.Module) -> Iterator[None]:
    """:meth:`BlockStore.streaming` if ``model`` is onloaded; nothing otherwise."""
    store = store_of(model)
    if store is None:
        yield
        return
    with store.streaming():
        yield


def load_onloaded(
    folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> nn.Module:
    """The causal LM in ``folder`` (config.json + safetensors) as a skeleton whose
    decoder blocks stay in the files: only the tensors outside the blocks are read now."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.walk import find_blocks

    device = torch.device(device)
    config = AutoConfig.from_pretrained(folder)
    with params_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    index = tensor_index(folder)
    prefix, blocks = find_blocks(model)
    outside = [
        (n, o, a, t, p)
        for n, o, a, t, p in _tensors(model)
        if not n.startswith(prefix + ".") and n in index
    ]
    state = read_tensors(index, [e[0] for e in outside], device, dtype)
    for name, owner, attr, t, is_param in outside:
        _put(owner, attr, state[name].reshape(t.shape), is_param)
    model.tie_weights()
    missing = [n for n, *_, t, _ in _tensors(model) if t.is_meta and not n.startswith(prefix + ".")]
    if missing:
        raise ValueError(f"{folder}: no weights for {', '.join(missing[:5])}")
    setattr(model, STORE_ATTR, BlockStore(blocks, prefix, index, device, dtype))
    return model


@torch.no_grad()
def materialize(model: nn.Module) -> nn.Module:
    """Every block of an onloaded model loaded for good (a small model, or a test that
    compares with the in-memory run); the store is detached."""
    store = store_of(model)
    if store is None:
        return model
    for b in range(len(store.blocks)):
        store.load(b)
    store.loaded.clear()
    delattr(model, STORE_ATTR)
    return model


def each_linear(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``find_linears(model)``'s items with their weights present: an onloaded model's
    blocks are loaded one at a time while their linears are read (statistics, storage)."""
    from core.walk import find_linears

    store = store_of(model)
    if store is None:
        yield from find_linears(model).items()
        return
    for b, block in enumerate(store.blocks):
        was_loaded = b in store.loaded
        store.load(b)
        try:
            yield from find_linears(block, prefix=f"{store.prefix}.{b}").items()
        finally:
            if not was_loaded:
                store.release(b)
    inside = store.prefix + "."
    yield from ((n, m) for n, m in find_linears(model).items() if not n.startswith(inside))


MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now (file pages: just dropped)


def _file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's file-backed mappings, sorted (Linux; else none)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[4] != "0" and parts[5].startswith("/"):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end))
    return sorted(out)


def release_file_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Drop from this process's resident memory the pages of ``tensors`` that are mapped
    from a file (safetensors weights that ``from_pretrained`` memory-maps): a float weight
    the walker no longer needs stops counting in the host's RSS. Nothing is lost: a page
    read again comes back from the file (MADV_PAGEOUT never discards data: a page
    modified in place is anonymous memory, swapped out at worst; memory that is not in a
    file mapping is not advised at all).
    Only whole pages inside a tensor are advised, never a neighbour's. Returns the bytes
    advised (0 off Linux or when nothing is file-backed)."""
    import bisect
    import ctypes
    import mmap

    maps = _file_mappings()
    if not maps:
        return 0
    starts = [a for a, _ in maps]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page, done = mmap.PAGESIZE, 0
    for t in tensors:
        if t.device.type != "cpu" or t.is_meta or t.numel() == 0:
            continue
        a = t.data_ptr()
        b = a + t.numel() * t.element_size()
        i = bisect.bisect_right(starts, a) - 1
        if i < 0 or b > maps[i][1]:
            continue  # not (wholly) inside a file mapping
        lo, hi = -(-a // page) * page, b // page * page
        if hi > lo and libc.madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
            done += hi - lo
    return done


def trim_host_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``): tensors
    freed block after block otherwise leave the resident set high. No-op elsewhere."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def describe(store: BlockStore) -> dict[str, Any]:
    """What onloading held at most: blocks and their MiB at once."""
    return {"blocks_at_once": store.peak_loaded, "block_mib_at_once": store.peak_bytes / MIB}
