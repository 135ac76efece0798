"""The one model walker: find linears, capture block inputs, run calibration hooks,
propagate block by block, apply recipe steps, and measure every targeted linear's layer
error.

Layer error, one definition for every method: ``||WX - W'X|| / ||WX||`` on the first
``ERROR_SAMPLE_ROWS`` calibration rows a linear receives (the inputs it sees once the
blocks before it are compressed), ``W`` the float linear, ``W'`` its replacement, both
applied to the same rows. For a layer method the walker has both at hand when it
applies the method. For a model method, :func:`iter_blocks` measures the block's
targets when the method is done with the block, in the pass that feeds the next block:
a replaced linear is compared with the float module it replaced (as the method left
it: AWQ folds its scale into it first); a linear rewritten in place (a folded scale)
is compared with what it computed, on the rows it read, before the method touched the
block. Model methods compute no error of their own.

Architecture differences live in :mod:`core.mappings`; nothing here is per family.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.errors import Cancelled
from core.kernels import ops
from core.mappings import BLOCK_PATHS
from core.onload import release_file_pages, store_of, streaming, trim_host_heap
from core.recipe import Recipe, Step
from core.registry import (
    LayerMethod,
    LayerReport,
    Method,
    MethodContext,
    ModelMethod,
    get_method,
)
from core.storage import CompressedLinear

log = logging.getLogger(__name__)

ERROR_SAMPLE_ROWS = 256  # calibration rows kept per linear to measure its output error
# Calibration windows of one length run through a block together, up to this many tokens
# per forward (16 x 256 at once): fewer, larger matmuls. Activations held per forward
# grow with it (tokens x intermediate size x 4 bytes in the MLP).
CALIB_BATCH_TOKENS = 4096
# A true-sequential method compresses a block in one forward when all its calibration
# windows go through together (_compress_block_one_pass): they are stacked up to the
# tokens whose activations fit this (8 tensors of the block's widest linear per token).
ONE_PASS_ACTIVATION_BYTES = 1 << 30


def get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    mod: Any = root
    for part in path.split("."):
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder block list: a known path, else the longest ``ModuleList`` of one type."""
    for path in BLOCK_PATHS:
        mod = get_submodule(model, path)
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return path, mod
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len({type(m) for m in mod}) == 1:
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise ValueError(f"no decoder blocks found in {type(model).__name__}")
    return best


def find_linears(module: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Every ``nn.Linear`` (or already-compressed linear) under ``module``, by full name."""
    out = {}
    for name, mod in module.named_modules():
        if isinstance(mod, nn.Linear | CompressedLinear):
            out[f"{prefix}.{name}" if prefix and name else prefix or name] = mod
    return out


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = get_submodule(root, parent_name) if parent_name else root
    setattr(parent, child, new)


def select_targets(model: nn.Module, step: Step) -> dict[str, nn.Linear]:
    """The plain ``nn.Linear`` layers a step applies to (already-compressed ones are skipped)."""
    return {
        n: m for n, m in find_linears(model).items() if isinstance(m, nn.Linear) and step.selects(n)
    }


class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    """The positional and keyword arguments block 0 received, one entry per calibration batch."""

    args: list[tuple[Any, ...]] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    # The block's outputs, set by a consumer of iter_blocks that already ran the block as
    # it now is (a one-pass compression): the walk takes them instead of running it again.
    outputs: list[torch.Tensor] | None = None

    def hidden(self, i: int) -> torch.Tensor:
        return self.args[i][0] if self.args[i] else self.kwargs[i]["hidden_states"]

    def with_hidden(self, i: int, h: torch.Tensor) -> None:
        if self.args[i]:
            self.args[i] = (h, *self.args[i][1:])
        else:
            self.kwargs[i]["hidden_states"] = h


def stack_windows(batches: list[torch.Tensor], max_tokens: int) -> list[torch.Tensor]:
    """Consecutive windows of one length stacked into batches of at most ``max_tokens``
    tokens (at least one window each), in order: row ``r`` of the result's concatenation
    is row ``r`` of the input's. ``max_tokens`` <= 0 keeps one window per batch."""
    if max_tokens <= 0:
        return list(batches)
    out: list[torch.Tensor] = []
    run: list[torch.Tensor] = []
    for ids in batches:
        same = run and ids.shape[1:] == run[0].shape[1:]
        if run and (not same or sum(r.numel() for r in run) + ids.numel() > max_tokens):
            out.append(torch.cat(run))
            run = []
        run.append(ids)
    if run:
        out.append(torch.cat(run))
    return out


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, batches: list[torch.Tensor]
) -> BlockInputs:
    """Run the model up to block 0 for each batch and keep what block 0 was called with."""
    captured = BlockInputs()

    def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.args.append(args)
        captured.kwargs.append(dict(kwargs))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(ids.to(_device_of(model)), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    return [
        _block_output(block(*inputs.args[i], **inputs.kwargs[i])) for i in range(len(inputs.args))
    ]


@dataclass
class _LayerCalib:
    stats: Any
    sample: list[torch.Tensor] = field(default_factory=list)  # rows of X for the error
    rows: int = 0


def _attach_hooks(
    layers: dict[str, nn.Linear],
    method: LayerMethod | None,
    cfg: Any,
    calib: dict[str, _LayerCalib] | None = None,
) -> tuple[dict[str, _LayerCalib], list[Any]]:
    if calib is None:
        calib = {
            n: _LayerCalib(stats=method.init_stats(m, cfg) if method else None)
            for n, m in layers.items()
        }
    handles = []

    def make_hook(name: str) -> Callable:
        def hook(_mod: nn.Module, args: tuple) -> None:
            _fold_input(calib[name], method, args[0].detach())

        return hook

    for n, m in layers.items():
        handles.append(m.register_forward_pre_hook(make_hook(n)))
    return calib, handles


def _fold_input(c: _LayerCalib, method: LayerMethod | None, x: torch.Tensor) -> None:
    """Fold one input of a layer into its statistics and keep its first sampled rows."""
    if method is not None:
        c.stats = method.update_stats(c.stats, x)
    if c.rows < ERROR_SAMPLE_ROWS:
        rows = x.reshape(-1, x.shape[-1])[: ERROR_SAMPLE_ROWS - c.rows]
        c.sample.append(rows.float().cpu())
        c.rows += rows.shape[0]


def _outputs(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in float32, ``x`` moved to the layer's device (and float dtype)."""
    dev = next(iter(list(layer.parameters()) + list(layer.buffers()))).device
    x = x.to(dev)
    return (layer(x.to(layer.weight.dtype)) if hasattr(layer, "weight") else layer(x)).float()


def _relative(ref: torch.Tensor, got: torch.Tensor) -> float:
    """||ref - got|| / ||ref|| (0 where ref is all zeros)."""
    denom = ref.norm().item()
    return (ref - got.to(ref.device)).norm().item() / denom if denom > 0 else 0.0


@torch.no_grad()
def relative_output_error(old: nn.Module, new: nn.Module, x: torch.Tensor) -> float:
    """||WX - W'X|| / ||WX|| on the rows ``x`` (bias excluded from neither)."""
    ref = _outputs(old, x)
    return _relative(ref, new(x.to(ref.device)).float())


def _replacement(method: Method, layer: nn.Linear, stats: Any, step: Step) -> nn.Module:
    if isinstance(method, LayerMethod):
        return method.apply(layer, stats, step.config)
    assert isinstance(method, ModelMethod)
    return method.apply_outside(layer, step.config)


def _apply_layer(
    method: Method,
    step: Step,
    model: nn.Module,
    name: str,
    layer: nn.Linear,
    calib: _LayerCalib | None,
    ctx: MethodContext,
) -> None:
    new = _replacement(method, layer, calib.stats if calib else None, step)
    _install(model, name, layer, new, calib, ctx)


def _install(
    model: nn.Module,
    name: str,
    layer: nn.Module,
    new: nn.Module,
    calib: _LayerCalib | None,
    ctx: MethodContext,
) -> None:
    """Measure ``new`` against ``layer`` on the sampled rows, put it in the model, report."""
    err = None
    if calib is not None and calib.sample:
        err = relative_output_error(layer, new, torch.cat(calib.sample))
    if new is not layer:
        replace_module(model, name, new)
    ctx.reports.append(LayerReport(name=name, rel_error=err))


def apply_step(model: nn.Module, step: Step, ctx: MethodContext) -> None:
    """Apply one recipe step to the model in place.

    Its forwards run the layers already compressed (by earlier groups, blocks or steps)
    on their plain float path: what a calibrated method computes must not depend on
    which kernel this machine's table or the first-use timing picked (the kernels agree
    only up to float rounding, and GPTQ's codes flip on rounding boundaries)."""
    with ops.use_path(ops.FLOAT_PATH):
        _apply_step(model, step, ctx)


def _apply_step(model: nn.Module, step: Step, ctx: MethodContext) -> None:
    method = get_method(step.method)()
    targets = select_targets(model, step)
    if method.needs_calibration and not ctx.calib_batches:
        raise ValueError(f"{step.method} needs a calibration set")
    if isinstance(method, ModelMethod):
        _apply_model_method(model, method, step, targets, ctx)
        return
    assert isinstance(method, LayerMethod)
    method.prepare(targets, step.config)  # sees every target before any changes
    if ctx.calib_batches:
        _apply_blockwise(model, method, step, targets, ctx)
        return
    for i, (name, layer) in enumerate(targets.items()):
        if ctx.should_cancel():
            raise Cancelled
        _apply_layer(method, step, model, name, layer, None, ctx)
        ctx.on_progress((i + 1) / max(1, len(targets)), f"{step.method}: {name}")


def _apply_model_method(
    model: nn.Module,
    method: ModelMethod,
    step: Step,
    targets: dict[str, nn.Linear],
    ctx: MethodContext,
) -> None:
    """The method walks the targets inside the blocks (``iter_blocks`` measures their
    error); the walker hands it the ones outside, one by one."""
    path, _ = find_blocks(model)
    inside = {n: m for n, m in targets.items() if n.startswith(path + ".")}
    ctx.error_targets = dict(inside)
    try:
        method.apply_model(model, step.config, inside, ctx)
    finally:
        ctx.error_targets = {}
    rest = {n: m for n, m in targets.items() if n not in inside}
    if rest:
        _apply_outside_blocks(model, method, step, rest, ctx)


def iter_blocks(
    model: nn.Module, ctx: MethodContext, label: str, *, batch_tokens: int = 0
) -> Iterator[tuple[str, nn.Module, BlockInputs]]:
    """The block-by-block machinery, for layer and model methods alike.

    Yields ``(prefix, block, inputs)`` with the inputs block ``prefix`` receives from the
    previous, already compressed, block. When the caller resumes, the block as it now is
    runs on them to make the next block's inputs, and the layer error of the block's
    ``ctx.error_targets`` (a model method's) is measured in that same pass. Checks
    ``should_cancel`` before each block (raising Cancelled) and reports progress after
    each. Holds one block's inputs at a time besides the model. With ``batch_tokens``,
    windows of one length go through a block together (:func:`stack_windows`); model
    methods keep one window per entry unless they ask. An onloaded model takes one
    window per forward: its device budget is for blocks, not for stacked activations
    (the layer Hessians are the same either way: core.quant.hessian folds by window).
    """
    path, blocks = find_blocks(model)
    assert ctx.calib_batches is not None
    store = store_of(model)  # onloaded: one block on the device at a time
    if store is not None:  # and one window's activations (the budget is for blocks)
        batch_tokens = 0
    batches = stack_windows(ctx.calib_batches, batch_tokens)
    inputs = capture_block_inputs(model, blocks, batches)
    for b, block in enumerate(blocks):
        if ctx.should_cancel():
            raise Cancelled
        if store is not None:
            store.hold(b)
        prefix = f"{path}.{b}"
        names = [n for n in ctx.error_targets if n.startswith(prefix + ".")]
        probe = _probe_before(model, block, inputs, names)
        inputs.outputs = None
        yield prefix, block, inputs
        outs = inputs.outputs
        if outs is None or probe.modules:
            outs = _run_and_measure(model, block, inputs, probe, ctx.reports)
        inputs.outputs = None
        for i, h in enumerate(outs):
            inputs.with_hidden(i, h)
        if store is not None:
            store.commit(b)  # the block as compressed, written off the device
        ctx.on_progress((b + 1) / len(blocks), f"{label}: block {b + 1}/{len(blocks)}")


def local_names(targets: dict[str, nn.Module], prefix: str) -> set[str]:
    """The names, relative to block ``prefix``, of the targets inside that block."""
    return {n[len(prefix) + 1 :] for n in targets if n.startswith(prefix + ".")}


@dataclass
class _Probe:
    """A model method's targets in one block, as they were before it ran."""

    modules: dict[str, nn.Module]  # name -> the module before the method ran
    outputs: dict[str, torch.Tensor]  # name -> its outputs on its sampled rows


def _sample_inputs(
    block: nn.Module, inputs: BlockInputs, layers: dict[str, nn.Module]
) -> tuple[dict[str, _LayerCalib], list[torch.Tensor]]:
    """Run the block, keeping each layer's first ERROR_SAMPLE_ROWS input rows."""
    calib, handles = _attach_hooks(layers, None, None)
    try:
        return calib, run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _probe_before(
    model: nn.Module, block: nn.Module, inputs: BlockInputs, names: list[str]
) -> _Probe:
    modules = {n: get_submodule(model, n) for n in names}
    if not modules:
        return _Probe({}, {})
    calib, _ = _sample_inputs(block, inputs, modules)
    outputs = {n: _outputs(modules[n], torch.cat(c.sample)) for n, c in calib.items() if c.sample}
    return _Probe(modules, outputs)


@torch.no_grad()
def _run_and_measure(
    model: nn.Module,
    block: nn.Module,
    inputs: BlockInputs,
    probe: _Probe,
    reports: list[LayerReport],
) -> list[torch.Tensor]:
    """The block's outputs; measures the probed layers' error on the same pass."""
    now = {n: get_submodule(model, n) for n in probe.modules}
    calib, outs = _sample_inputs(block, inputs, now)
    for name, new in now.items():
        err = None
        if calib[name].sample:
            x = torch.cat(calib[name].sample)
            old = probe.modules[name]
            if new is not old:  # replaced: compare with the float module it replaced
                err = relative_output_error(old, new, x)
            elif name in probe.outputs:  # rewritten in place: compare with what it computed
                err = _relative(probe.outputs[name], _outputs(new, x))
        _record_error(reports, name, err)
    return outs


def _record_error(reports: list[LayerReport], name: str, err: float | None) -> None:
    """Set the error on the step's report of ``name`` (a method's note), or add one."""
    for r in reports:
        if r.name == name and r.rel_error is None:
            r.rel_error = err
            return
    reports.append(LayerReport(name=name, rel_error=err))


@torch.no_grad()
def collect_inputs(
    block: nn.Module,
    inputs: BlockInputs,
    modules: dict[str, nn.Module],
    fold: Callable[[str, torch.Tensor], None],
) -> None:
    """Run ``block`` on every calibration batch, calling ``fold(name, x)`` with the input
    each of ``modules`` receives (for methods that keep their own statistics)."""
    handles = [
        m.register_forward_pre_hook(lambda _m, args, n=n: fold(n, args[0].detach()))
        for n, m in modules.items()
    ]
    try:
        run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The very same values in memory (``b`` kept alive while compared)."""
    return (a.data_ptr(), a.shape, a.stride()) == (b.data_ptr(), b.shape, b.stride())


def _first_window(inputs: BlockInputs) -> BlockInputs:
    """The first window of a batch of stacked windows: every tensor argument whose first
    dimension is the batch's window count cut to its first entry (rotary tables and
    masks shared by the windows have 1 there and stay as they are)."""
    b = inputs.hidden(0).shape[0]

    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v[:1] if v.dim() and v.shape[0] == b else v
        if type(v) in (tuple, list):
            return type(v)(cut(u) for u in v)
        return v

    if b == 1:
        return inputs
    return BlockInputs(
        args=[cut(inputs.args[0])], kwargs=[{k: cut(v) for k, v in inputs.kwargs[0].items()}]
    )


@torch.no_grad()
def input_groups(
    block: nn.Module, inputs: BlockInputs, layers: dict[str, nn.Module], *, one_window: bool = False
) -> list[list[str]]:
    """``layers`` in the order the block's forward calls them, consecutive layers that read
    the very same input tensor grouped (q/k/v read one normed hidden state, gate/up
    another). Found by running the first calibration batch (``one_window``: its first
    window, where the groups are only a guess; see :func:`_first_window`); no
    architecture table needed. Layers the forward never calls come last, one group each."""
    one = BlockInputs(args=inputs.args[:1], kwargs=inputs.kwargs[:1])
    if one_window:
        try:
            return input_groups(block, _first_window(one), layers)
        except Exception as e:  # an argument cut wrongly: the whole batch, as below
            log.debug("input groups from one window failed (%s); using the batch", e)
    groups: list[list[str]] = []
    last: list[torch.Tensor] = []  # the previous call's input, kept alive: its address
    seen: set[str] = set()  # cannot be reused by a new tensor while compared with

    def hook(name: str, x: torch.Tensor) -> None:
        if name in seen:
            return
        seen.add(name)
        if last and _same_tensor(x, last[0]):
            groups[-1].append(name)
        else:
            groups.append([name])
        last[:] = [x]

    handles = [
        m.register_forward_pre_hook(lambda _m, args, n=n: hook(n, args[0]))
        for n, m in layers.items()
    ]
    try:
        run_block(block, one)
    finally:
        for h in handles:
            h.remove()
        last.clear()
    groups.extend([n] for n in layers if n not in seen)
    return groups


@torch.no_grad()
def _calibrate_group(
    block: nn.Module,
    inputs: BlockInputs,
    layers: dict[str, nn.Module],
    names: list[str],
    method: LayerMethod,
    cfg: Any,
) -> _LayerCalib:
    """Statistics of one input group, on inputs from the block as compressed so far.

    The group's layers read the same input, so they share ONE statistics object (one
    Hessian instead of three for q/k/v; methods must not modify it in ``apply``). The
    forward stops as soon as the group's input reached its first layer (the statistics
    hook runs first): nothing after it is needed."""
    calib = _LayerCalib(stats=method.init_stats(layers[names[0]], cfg))
    _, hooks = _attach_hooks({names[0]: layers[names[0]]}, method, cfg, {names[0]: calib})

    def stop(_m: nn.Module, _a: tuple) -> None:
        raise _StopForward

    handles = [*hooks, layers[names[0]].register_forward_pre_hook(stop)]
    try:
        for i in range(len(inputs.args)):
            try:
                block(*inputs.args[i], **inputs.kwargs[i])
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return calib


@torch.no_grad()
def _compress_block_sequential(
    model: nn.Module,
    method: LayerMethod,
    step: Step,
    block: nn.Module,
    inputs: BlockInputs,
    layers: dict[str, nn.Linear],
    ctx: MethodContext,
) -> None:
    """Compress the block's layers group by group in forward order, each group calibrated
    on inputs produced by the already compressed groups before it."""
    for names in input_groups(block, inputs, layers):
        calib = _calibrate_group(block, inputs, layers, names, method, step.config)
        group = {n: layers[n] for n in names}
        for name, new in method.apply_group(group, calib.stats, step.config).items():
            _install(model, name, layers[name], new, calib, ctx)


@dataclass
class _Group:
    """Layers that read one input, compressed together the first time one of them runs."""

    names: list[str]
    calib: _LayerCalib | None = None  # the group's shared statistics and sampled rows
    x: weakref.ref | None = None  # the input they were computed from, while it lives
    new: dict[str, nn.Module] = field(default_factory=dict)  # name -> compressed
    own: dict[str, _LayerCalib] = field(default_factory=dict)  # a member that read another


class _Slot(nn.Module):
    """Stands in for one linear of a block during its one-pass compression. The first call
    into its group folds the input into the group's statistics and compresses the group's
    layers of that input width; every call is then answered by the compressed layer, so
    the layers after it in the forward see the outputs of the layers compressed before
    them (true sequential). A member whose input turns out not to be the group's (a wrong
    guess of the groups) is calibrated and compressed on its own input."""

    def __init__(
        self, name: str, layers: dict[str, nn.Linear], group: _Group, method: LayerMethod, cfg: Any
    ) -> None:
        super().__init__()
        self.name, self.group, self.method, self.cfg = name, group, method, cfg
        self.layers = layers  # a plain dict: the float layers stay out of the module tree
        self.called = False

    def _compress(self, names: list[str], x: torch.Tensor | None) -> _LayerCalib:
        calib = _LayerCalib(stats=self.method.init_stats(self.layers[names[0]], self.cfg))
        if x is not None:
            _fold_input(calib, self.method, x.detach())
        group = {n: self.layers[n] for n in names}
        self.group.new.update(self.method.apply_group(group, calib.stats, self.cfg))
        return calib

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group
        if not self.called:
            self.called = True
            if g.calib is None:
                width = self.layers[self.name].in_features
                same = [n for n in g.names if self.layers[n].in_features == width]
                g.calib = self._compress([self.name, *(n for n in same if n != self.name)], x)
                g.x = weakref.ref(x)  # not kept alive: its activations are the forward's
            elif (first := g.x() if g.x else None) is None or not _same_tensor(x, first):
                g.own[self.name] = self._compress([self.name], x)
        return g.new[self.name](x)


@torch.no_grad()
def _compress_block_one_pass(
    model: nn.Module,
    method: LayerMethod,
    step: Step,
    block: nn.Module,
    inputs: BlockInputs,
    layers: dict[str, nn.Linear],
    groups: list[list[str]],
    ctx: MethodContext,
) -> list[torch.Tensor]:
    """True-sequential compression of a block in ONE forward over all its calibration
    inputs (they form a single batch): each input group is calibrated and compressed when
    the forward reaches it, so the same forward carries the compressed outputs on to the
    next groups and out of the block. Computes what the group-by-group forwards of
    :func:`_compress_block_sequential` compute (the same statistics, layers and outputs)
    without running the start of the block again for every group, nor the block once
    more for its outputs. Returns the block's outputs."""
    made = [_Group(names) for names in groups]
    slots = {n: _Slot(n, layers, g, method, step.config) for g in made for n in g.names}
    for name, slot in slots.items():
        replace_module(model, name, slot)
    try:
        outs = run_block(block, inputs)
    finally:
        for name in slots:
            replace_module(model, name, layers[name])
    for g in made:
        g.x = None
        for name in [n for n in g.names if n not in g.new]:  # the forward never called it:
            g.own[name] = slots[name]._compress([name], None)  # the method's no-data fallback
        for name in g.names:
            _install(model, name, layers[name], g.new[name], g.own.get(name, g.calib), ctx)
    return outs


def _group_key(block: nn.Module, prefix: str, layers: dict[str, nn.Module]) -> tuple:
    return (type(block), tuple(sorted(local_names(layers, prefix))))


@torch.no_grad()
def _apply_blockwise(
    model: nn.Module,
    method: LayerMethod,
    step: Step,
    targets: dict[str, nn.Linear],
    ctx: MethodContext,
) -> None:
    """Calibrate and compress block by block, feeding each block the compressed outputs
    of the previous one. Holds one block's inputs at a time besides the model."""
    done: set[str] = set()
    sequential = method.sequential(step.config)
    known: dict[tuple, list[list[str]]] = {}  # block kind -> its input groups, local names
    _release(model, targets)  # weights mapped from a file are read again block by block
    batch_tokens = CALIB_BATCH_TOKENS
    if sequential and targets:
        widest = max(max(m.in_features, m.out_features) for m in targets.values())
        batch_tokens = max(batch_tokens, ONE_PASS_ACTIVATION_BYTES // (8 * 4 * widest))
    for prefix, block, inputs in iter_blocks(model, ctx, step.method, batch_tokens=batch_tokens):
        layers = {n: m for n, m in targets.items() if n.startswith(prefix + ".")}
        done.update(layers)
        if sequential and len(inputs.args) == 1:
            # Blocks of one kind call their linears in one order: found once, reused (a
            # wrong guess costs time only: a slot whose input differs calibrates alone).
            key = _group_key(block, prefix, layers)
            if key not in known:
                found = input_groups(block, inputs, layers, one_window=True)
                known[key] = [[n[len(prefix) + 1 :] for n in g] for g in found]
            groups = [[f"{prefix}.{n}" for n in g] for g in known[key]]
            inputs.outputs = _compress_block_one_pass(
                model, method, step, block, inputs, layers, groups, ctx
            )
        elif sequential:
            _compress_block_sequential(model, method, step, block, inputs, layers, ctx)
        else:
            calib, handles = _attach_hooks(layers, method, step.config)
            try:
                run_block(block, inputs)
            finally:
                for h in handles:
                    h.remove()
            for name, layer in layers.items():
                _apply_layer(method, step, model, name, layer, calib[name], ctx)
        _release(model, layers)
        for name in layers:  # the float layers are replaced: let their memory go
            targets.pop(name, None)
    rest = {n: m for n, m in targets.items() if n not in done}
    if rest:
        _apply_outside_blocks(model, method, step, rest, ctx)


def _release(model: nn.Module, layers: dict[str, nn.Module]) -> None:
    """Host memory back as the walk goes: the pages of ``layers``' weights that are
    mapped from a file (an in-memory model from safetensors) leave the resident set (read
    again from the file if used), and the C heap returns what freed tensors left."""
    release_file_pages(m.weight for m in layers.values() if isinstance(m, nn.Linear))
    trim_host_heap()


@torch.no_grad()
def _apply_outside_blocks(
    model: nn.Module,
    method: Method,
    step: Step,
    layers: dict[str, nn.Linear],
    ctx: MethodContext,
) -> None:
    """Linears outside the blocks (an lm_head someone targeted), for every method:
    calibrate on a full forward, then replace each one on its own."""
    stats_method = method if isinstance(method, LayerMethod) else None
    calib, handles = _attach_hooks(layers, stats_method, step.config)
    try:
        with streaming(model):
            for ids in stack_windows(ctx.calib_batches or [], CALIB_BATCH_TOKENS):
                model(ids.to(_device_of(model)), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    for name, layer in layers.items():
        _apply_layer(method, step, model, name, layer, calib[name], ctx)


def apply_recipe(
    model: nn.Module,
    recipe: Recipe,
    *,
    on_progress: Callable[[float, str], None],
    should_cancel: Callable[[], bool],
    calib_batches: list[torch.Tensor] | None = None,
) -> list[LayerReport]:
    """Apply every step of ``recipe`` in order; returns one report per compressed layer."""
    reports: list[LayerReport] = []
    n = max(1, len(recipe.steps))
    for i, step in enumerate(recipe.steps):

        def step_progress(f: float, msg: str, i: int = i) -> None:
            on_progress((i + f) / n, msg)

        ctx = MethodContext(
            on_progress=step_progress,
            should_cancel=should_cancel,
            calib_batches=calib_batches,
            device=_device_of(model),
        )
        apply_step(model, step, ctx)
        reports.extend(ctx.reports)
    finalize_recipe(model, recipe)
    return reports


def finalize_recipe(model: nn.Module, recipe: Recipe) -> None:
    """Once every step ran, let each method used (once, however many steps use it) move
    its outputs into final storage: pruned linears that no later step replaced become
    sparse modules."""
    for name in dict.fromkeys(step.method for step in recipe.steps):
        get_method(name)().finalize_model(model)
