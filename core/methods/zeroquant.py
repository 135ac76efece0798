"""ZeroQuant: group-wise weight quantization, optional per-token int8 activations, and
layer-wise knowledge distillation (LKD), one decoder block at a time.

Yao et al. 2022, "ZeroQuant: Efficient and Affordable Post-Training Quantization for
Large-Scale Transformers" (arXiv:2206.01861), sec. 4: LKD trains the quantized block
``L_i^q`` to reproduce the float block: minimise ``||L_i(X_{i-1}) - L_i^q(X^q_{i-1})||^2``,
with ``X_{i-1}`` the float model's inputs to block i (the teacher path) and ``X^q_{i-1}``
those of the already quantized blocks (the student path). Only one block is held in two
copies at a time.

The student's linears are :class:`_FakeQuantLinear`: the weight is rounded on the forward
and the rounding is skipped on the backward (straight-through estimator). What learns:
``learn="weights"`` moves each weight by up to a few quantization steps (a parameter in
units of its group's step); ``learn="scales"`` moves each group's scale (a log-factor).
After training, each linear is stored as an ordinary format: :class:`AffineLinear`
(int-N, one fp16 scale per group) for weight-only, :class:`W8A8Linear` (int8 weights per
row, int8 activations per token at run time) with ``act_quant``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.quant.actquant import QMAX as ACT_QMAX
from core.quant.rtn import QuantizedTensor, QuantSpec, qrange, quantize, quantize_with
from core.registry import (
    ConfigError,
    MethodCard,
    MethodConfig,
    MethodContext,
    ModelMethod,
    param,
    register,
)
from core.storage import AffineLinear, W8A8Linear
from core.walk import BlockInputs, get_submodule, iter_blocks, local_names, replace_module

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZeroQuantConfig(MethodConfig):
    bits: int = param(4, "weight bits (symmetric, absmax per group)", min=2, max=8)
    group_size: int | None = param(
        128,
        "input columns per scale (power of two, 32..256); null = one scale per row",
        min=32,
        max=256,
    )
    act_quant: bool = param(
        False,
        "also quantize activations to int8 per token at run time (W8A8: needs bits=8 and "
        "group_size=null, stored in the W8A8 format and run on the int8 kernel)",
    )
    lkd_steps: int = param(
        100, "LKD optimizer steps per block (0: no distillation, plain rounding)", min=0, max=5000
    )
    lr: float = param(
        0.01,
        "Adam learning rate, in quantization steps per update (weights) or relative "
        "change per update (scales)",
        min=1e-6,
        max=1.0,
    )
    learn: str = param(
        "weights",
        "what LKD trains: the weights through straight-through rounding, or only the "
        "per-group scales",
        choices=("weights", "scales"),
    )

    def validate(self) -> None:
        size = self.group_size
        if size is not None and size & (size - 1):
            raise ConfigError(f"group_size={size} must be a power of two in [32, 256]")
        if self.act_quant and (self.bits != 8 or size is not None):
            raise ConfigError(
                "act_quant=true stores W8A8 (int8 weights, one scale per row): set bits=8 "
                "and group_size=null, or act_quant=false for group-wise int-N weights"
            )

    def spec(self) -> QuantSpec:
        size = self.group_size
        return QuantSpec(
            bits=self.bits,
            symmetric=True,
            granularity="channel" if size is None else "group",
            group_size=size or 128,
        )


class _RoundSTE(torch.autograd.Function):
    """round() on the forward, identity on the backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return torch.round(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return g


def fake_quant_per_token(x: torch.Tensor) -> torch.Tensor:
    """Per-token symmetric int8 round trip with a straight-through gradient."""
    s = (x.detach().abs().amax(dim=-1, keepdim=True) / ACT_QMAX).clamp_min(1e-12)
    return _RoundSTE.apply(x / s).clamp(-ACT_QMAX, ACT_QMAX) * s


class _FakeQuantLinear(nn.Module):
    """A student linear: ``W' = clamp(round(W / s)) * s`` per group, W and s trainable as
    ``learn`` says. ``W = W0 + delta * s0`` (delta in steps), ``s = s0 * exp(log_gain)``."""

    def __init__(self, layer: nn.Linear, cfg: ZeroQuantConfig) -> None:
        super().__init__()
        spec = cfg.spec()
        qt = quantize(layer.weight, spec)  # absmax scales: the starting point
        self.bits, self.cols, self.in_f = cfg.bits, qt.group_cols, layer.in_features
        self.act_quant = cfg.act_quant
        w = layer.weight.detach().float()
        pad = (-self.in_f) % self.cols
        self.register_buffer("w0", F.pad(w, (0, pad)).reshape(w.shape[0], -1, self.cols))
        self.register_buffer("s0", qt.scale.float().expand(w.shape[0], -1).clone())
        self.delta = nn.Parameter(torch.zeros_like(self.w0), requires_grad=cfg.learn == "weights")
        self.log_gain = nn.Parameter(torch.zeros_like(self.s0), requires_grad=cfg.learn == "scales")
        self.bias = None if layer.bias is None else layer.bias.detach().float()

    def weight_and_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(grouped float weight (N, G, cols), scale (N, G)) as trained."""
        s = self.s0 * torch.exp(self.log_gain)
        return self.w0 + self.delta * self.s0.unsqueeze(-1), s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, s = self.weight_and_scale()
        _, qmax = qrange(self.bits, True)
        q = _RoundSTE.apply(w / s.unsqueeze(-1)).clamp(-qmax, qmax)
        wq = (q * s.unsqueeze(-1)).reshape(w.shape[0], -1)[:, : self.in_f]
        if self.act_quant:
            x = fake_quant_per_token(x)
        return F.linear(x, wq.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def stored(self) -> nn.Module:
        """The trained student in its stored format."""
        w, s = self.weight_and_scale()
        if self.act_quant:  # W8A8 re-derives the per-row absmax scale from the weight
            flat = (w.reshape(w.shape[0], -1)[:, : self.in_f]).contiguous()
            return W8A8Linear.build(flat, self.bias, act_mode="dynamic")
        s16 = s.half().float()  # the scale as the format stores it
        q = quantize_with(w, s16, None, self.bits).reshape(w.shape[0], -1)[:, : self.in_f]
        qt = QuantizedTensor(q=q, scale=s16, zero=None, bits=self.bits, group_cols=self.cols)
        return AffineLinear.build(qt, self.bias)


def plain_quantized(layer: nn.Linear, cfg: ZeroQuantConfig) -> nn.Module:
    """The layer rounded to nearest with ZeroQuant's quantizer (no distillation)."""
    return _FakeQuantLinear(layer, cfg).stored()


def _block_call(block: nn.Module, inputs: BlockInputs, i: int, h: torch.Tensor) -> torch.Tensor:
    args = (h, *inputs.args[i][1:]) if inputs.args[i] else ()
    kwargs = dict(inputs.kwargs[i])
    if not inputs.args[i]:
        kwargs["hidden_states"] = h
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, tuple | list) else out


def distill_block(
    student: nn.Module,
    teacher_out: list[torch.Tensor],
    inputs: BlockInputs,
    cfg: ZeroQuantConfig,
) -> list[float]:
    """Train the student block's trainable parameters for ``cfg.lkd_steps`` Adam steps,
    one calibration batch per step (in turn), on the mean squared error to the teacher's
    outputs. Returns the loss of every step."""
    params = [p for p in student.parameters() if p.requires_grad]
    if not params or cfg.lkd_steps == 0:
        return []
    opt = torch.optim.Adam(params, lr=cfg.lr)
    losses = []
    n = len(inputs.args)
    with torch.enable_grad():
        for step in range(cfg.lkd_steps):
            i = step % n
            out = _block_call(student, inputs, i, inputs.hidden(i))
            loss = F.mse_loss(out.float(), teacher_out[i].float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
    return losses


@register(
    "zeroquant",
    kind="quant",
    config=ZeroQuantConfig,
    card=MethodCard(
        idea="Fine-grained, hardware-friendly quantization: symmetric group-wise int-N "
        "weights (optionally int8 activations per token, W8A8), then layer-wise knowledge "
        "distillation: each quantized decoder block is trained, one at a time, to "
        "reproduce the float block's outputs on the calibration inputs (rounding passes "
        "gradients straight through), so teacher and student need not both be in memory "
        "beyond one block.",
        calibration=True,
        static_or_dynamic="static weights; activations (with act_quant) dynamic: one int8 "
        "scale per token computed at run time",
        scope="weights only, or weights and activations with act_quant (integer matmul)",
        parameters="learned from data: LKD trains the weights (straight-through rounding) "
        "or the per-group scales on the calibration set; without LKD the scales are the "
        "heuristic absmax per group",
        hardware="weight-only: no special hardware (int4 kernel where the layout allows, "
        "else dequantized for the matmul); act_quant: the int8 kernels of W8A8 (VNNI/AMX "
        "CPUs, int8 tensor cores on a GPU)",
        memory="weight-only: about 32/bits x smaller than FP32 plus an fp16 scale per group; "
        "act_quant: about 4x (int8 + a float32 scale per row)",
        speed="weight-only: no speed-up (a space saving); act_quant: as W8A8, measured per "
        "run. Compression costs lkd_steps forward+backward passes of one block per block",
        reference="Yao et al. 2022, ZeroQuant (arXiv:2206.01861)",
    ),
)
class ZeroQuant(ModelMethod):
    needs_calibration = True

    def apply_model(
        self,
        model: nn.Module,
        cfg: ZeroQuantConfig,
        targets: dict[str, nn.Linear],
        ctx: MethodContext,
    ) -> None:
        teacher_in: list[torch.Tensor] | None = None
        for prefix, block, inputs in iter_blocks(model, ctx, "zeroquant"):
            if teacher_in is None:  # block 0: both paths start from the embeddings
                teacher_in = [inputs.hidden(i).detach().clone() for i in range(len(inputs.args))]
            with torch.no_grad():  # the float block on the float path (the teacher)
                teacher_out = [_block_call(block, inputs, i, h) for i, h in enumerate(teacher_in)]
            names = sorted(local_names(targets, prefix))
            if names:
                self._quantize_block(model, prefix, block, inputs, teacher_out, names, cfg)
            teacher_in = teacher_out

    def _quantize_block(
        self,
        model: nn.Module,
        prefix: str,
        block: nn.Module,
        inputs: BlockInputs,
        teacher_out: list[torch.Tensor],
        names: list[str],
        cfg: ZeroQuantConfig,
    ) -> None:
        """Replace the block's targets by trained students, then by their stored form."""
        student = copy.deepcopy(block)
        for p in student.parameters():
            p.requires_grad_(False)
        fq = {}
        for n in names:
            layer = get_submodule(block, n)
            assert isinstance(layer, nn.Linear)
            fq[n] = _FakeQuantLinear(layer, cfg)
            replace_module(student, n, fq[n])
        losses = distill_block(student, teacher_out, inputs, cfg)
        if losses:
            log.info("zeroquant %s: LKD loss %.3g -> %.3g", prefix, losses[0], losses[-1])
        for n in names:
            replace_module(model, f"{prefix}.{n}", fq[n].stored())

    def apply_outside(self, layer: nn.Linear, cfg: ZeroQuantConfig) -> nn.Module:
        return plain_quantized(layer, cfg)
