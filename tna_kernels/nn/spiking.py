"""Spiking layers over ``[T, B, ...]`` tensors: ternary (or full-precision) conv/linear + batch norm
+ fused LIF, and the small containers a spiking network needs.

Conv/linear and batch norm do not depend on the membrane, so they run once on all T·B samples
(time folded into the batch: batch-norm statistics are taken over T·B, as in SNN practice); only
the LIF is sequential in time, inside its fused kernel. A static image ``[B, C, H, W]`` (direct
encoding) is convolved once and the same current is fed to the neuron at every step. In training
(batch statistics) BN and LIF run as one autograd function that keeps only the BN input for
backward, not also the membrane (:mod:`tna_kernels.nn.bn_lif`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .. import functional as F
from ..ops import batch_norm as batch_norm_ops
from ..ops.spike_train import TRAIN_PATHS, conv2d_input, conv_ste
from ..ops.ternary import PackedTernary, _check_ste
from .bn_lif import uses_batch_stats
from .lif import LIF
from .ternary import TernaryConv2d, TernaryLinear, _use_packed_path

NEURON_KEYS = ("tau", "decay_input", "v_threshold", "v_reset", "detach_reset", "surrogate", "alpha",
               "beta")


def fold_time(x: Tensor) -> Tensor:
    """``[T, B, ...]`` → ``[T·B, ...]``."""
    return x.flatten(0, 1)


def unfold_time(y: Tensor, T: int) -> Tensor:
    """``[T·B, ...]`` → ``[T, B, ...]``."""
    return y.unflatten(0, (T, y.shape[0] // T))


class SeqToANN(nn.Module):
    """Applies ordinary layers to ``[T, B, ...]`` by folding time into the batch."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.body = modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3:
            raise ValueError(f"SeqToANN expects [T, B, ...], got shape {tuple(x.shape)}")
        return unfold_time(self.body(fold_time(x)), x.shape[0])


class MeanOverTime(nn.Module):
    """Readout: average over the time dimension, ``[T, B, ...]`` → ``[B, ...]``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(0)


def _neuron(kwargs: dict) -> LIF:
    unknown = set(kwargs) - set(NEURON_KEYS)
    if unknown:
        raise TypeError(f"unknown neuron option(s) {sorted(unknown)}; expected some of {NEURON_KEYS}")
    return LIF(**kwargs)


class _SpikeInputConv2d(torch.autograd.Function):
    """conv2d of 0/1 spikes that keeps its input for the weight gradient **bit-packed** (1 bit per
    value, ``pack_spikes`` along channels) instead of float32: 32× less saved memory. Gradients are
    those of ``nn.functional.conv2d`` (the unpacked input is the same 0/1 tensor)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        bits = F.pack_spikes(x, dim=1)  # raises if x is not 0/1
        ctx.save_for_backward(bits, weight)
        ctx.conf = (x.shape, x.dtype, stride, padding, dilation, bias is not None)
        return nn.functional.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_y):
        bits, weight = ctx.saved_tensors
        shape, dtype, stride, padding, dilation, has_bias = ctx.conf
        grad_x = grad_w = grad_b = None
        # Under autocast the forward's conv ran in grad_y's dtype (e.g. bf16): so do its gradients
        # (the 0/1 input is exact in any float dtype); without autocast this casts nothing.
        w = weight.to(grad_y.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = conv2d_input(shape, w, grad_y, stride, padding, dilation).to(dtype)
        if ctx.needs_input_grad[1]:
            x = F.unpack_spikes(bits, shape[1], dim=1, dtype=grad_y.dtype)
            grad_w = nn.grad.conv2d_weight(x, weight.shape, grad_y, stride, padding,
                                           dilation).to(weight.dtype)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def _spike_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode):
    """max_pool2d of 0/1 spikes that keeps its input for backward **bit-packed** (1 bit per value)
    instead of the float input and the int64 indices: ``tna::spike_max_pool2d`` (pooling and
    packing in one op), differentiable through its ``register_autograd`` (tna_kernels/ops/spike_pool.py),
    whose backward reads the bits (``tna::spike_max_pool2d_backward``) and sends each gradient to the
    element ``nn.MaxPool2d`` picks."""
    x4 = x if x.dim() == 4 else x.unsqueeze(0)  # nn.MaxPool2d also takes [C, H, W]
    pool = tuple(list(_pair(v)) for v in (kernel_size, stride or kernel_size, padding, dilation))
    y, _ = torch.ops.tna.spike_max_pool2d(x4, *pool, ceil_mode)  # raises if x is not 0/1
    return y if x.dim() == 4 else y.squeeze(0)


class SpikeMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` for 0/1 spike inputs: with autograd it saves its input bit-packed (1 bit per
    value) instead of the float input and the int64 indices (48 bits per input value for 2×2
    windows); outputs and gradients are ``nn.MaxPool2d``'s. Raises on values other than 0 and 1.
    ``recompute = False`` (attribute, or :func:`set_recompute`) runs plain ``nn.MaxPool2d``: more
    memory, no max-pool rerun in backward."""

    recompute = True

    def forward(self, x: Tensor) -> Tensor:
        if self.return_indices or not self.recompute or not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        return _spike_max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class _SpikingMixin:
    """Shared forward: affine map on T·B samples → optional BN → optional LIF."""

    def _init_spiking(self, ternary: bool, bn: nn.Module | None, lif: bool, T: int | None,
                      neuron: dict, recompute: bool = True) -> None:
        self.ternary = bool(ternary)
        self.recompute = bool(recompute)
        self.bn = bn
        self.neuron = _neuron(neuron) if lif else None
        if T is not None and (not isinstance(T, int) or T < 1):
            raise ValueError(f"T must be a positive int or None, got {T!r}")
        self.T = T

    def folded_packed(self) -> PackedTernary:
        """The packed ternary weight with the eval-mode batch norm folded in: the layer's
        pre-neuron current is ``acc · scale + bias`` with ``acc`` the exact ternary accumulation."""
        p = self.packed_weight()
        if self.bn is None:
            return p
        bn = self.bn
        with torch.no_grad():
            a = torch.rsqrt(bn.running_var.float() + bn.eps)
            if bn.affine:
                a = a * bn.weight.float()
            bias = -bn.running_mean.float() * a
            if bn.affine:
                bias = bias + bn.bias.float()
            if p.bias is not None:
                bias = bias + p.bias * a
        return PackedTernary(p.words, (p.scale * a).contiguous(), p.K, bias.contiguous())

    def _folded_inference(self) -> bool:
        """Eval without autograd: BN folded into the packed weight, the same arithmetic as the
        packed model (so a packed model reproduces this layer's spikes exactly)."""
        return self.ternary and self.bn is not None and self.bn.track_running_stats and _use_packed_path(self)

    def _pre_neuron(self, x: Tensor) -> Tensor:
        if self._folded_inference():
            return self._folded_affine(x)
        return self._bn(self._affine(x))

    def _forward_spiking(self, x: Tensor, T: int | None, sample_dims: int) -> Tensor:
        """``sample_dims`` = rank of one sample (3 for C×H×W, 1 for features)."""
        if x.dim() == sample_dims + 2:
            T_, static, x = x.shape[0], False, fold_time(x)
        elif x.dim() == sample_dims + 1:
            T_, static = (T if T is not None else self.T), True
            if T_ is None:
                raise ValueError(f"{type(self).__name__} got a static input of shape {tuple(x.shape)}; "
                                 "pass T (forward(x, T=...) or the T constructor argument) or a "
                                 "[T, B, ...] sequence")
        else:
            raise ValueError(f"{type(self).__name__} expects [T, B, ...] with {sample_dims} sample dims "
                             f"(or a static [B, ...]), got shape {tuple(x.shape)}")
        if self._fused_bn_lif():  # through the neuron module, so its forward hooks still see the spikes
            return self.neuron(self._affine(x, layout_free=True), bn=self.bn, T=T_, static=static)
        y = self._pre_neuron(x)
        y = y.unsqueeze(0).expand(T_, *y.shape) if static else unfold_time(y, T_)
        return y if self.neuron is None else self.neuron(y)

    def _fused_bn_lif(self) -> bool:
        """Training with batch statistics: BN + LIF in one autograd function that saves only the BN
        input (not also the LIF membrane)."""
        return (self.recompute and self.bn is not None and self.neuron is not None and torch.is_grad_enabled()
                and uses_batch_stats(self.bn))

    def _bn(self, y: Tensor) -> Tensor:
        return y if self.bn is None else self.bn(y)

    def _spiking_repr(self) -> str:
        return f", ternary={self.ternary}, bn={self.bn is not None}, lif={self.neuron is not None}"


class TernaryLIFConv2d(_SpikingMixin, TernaryConv2d):
    """``nn.Conv2d`` with ternary weights (STE) + BatchNorm2d over T·B + fused LIF.

    Input ``[T, B, C, H, W]`` (or a static ``[B, C, H, W]`` image with ``T``); output spikes
    ``[T, B, C', H', W']``. Constructor: the ``nn.Conv2d`` arguments, then keyword options
    ``ternary`` (False = full-precision weights, same structure), the ternariser's ``method``,
    ``per_channel``, ``clip``; ``bn`` (+ ``bn_eps``, ``bn_momentum``); ``lif`` (False returns the
    BN output, e.g. before a residual addition); ``T`` for static inputs; ``spike_input`` (the input
    is 0/1 spikes: training saves it bit-packed for the weight gradient, and eval without autograd
    runs the exact spike × ternary popcount kernel on bit-packed input, the packed model's
    arithmetic); ``train_path`` (spike inputs, ternary weights, training: ``"auto"`` (default)
    the faster of ``"spike"``, the packed model's arithmetic in training (popcount forward,
    event-driven weight gradient from the bits), and ``"dense"`` (dense QAT), measured per layer
    shape and spike density (:func:`tna_kernels.functional.spike_ternary_conv2d_ste`; the choice
    is in :func:`train_paths`); ``recompute`` (default True: in training, save only the BN input and recompute BN
    and the membrane in backward, :mod:`tna_kernels.nn.bn_lif`; False saves them, faster, more
    memory; see :func:`set_recompute`); and the neuron options of
    :func:`tna_kernels.functional.lif` (``tau``, ``v_threshold``, ``v_reset``, ``surrogate``, ...).
    State-dict keys: ``weight`` (latent float weights), ``bias``, ``bn.*``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, ternary: bool = True, method: str = "twn",
                 per_channel: bool = True, clip: float | None = None, bn: bool = True,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1, lif: bool = True,
                 T: int | None = None, spike_input: bool = False, recompute: bool = True,
                 train_path: str = "auto", **neuron):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype, method=method, per_channel=per_channel,
                         clip=clip)
        norm = nn.BatchNorm2d(out_channels, bn_eps, bn_momentum, device=device, dtype=dtype) if bn else None
        self._init_spiking(ternary, norm, lif, T, neuron, recompute)
        self.spike_input = bool(spike_input)
        if train_path not in TRAIN_PATHS:
            raise ValueError(f"train_path must be one of {TRAIN_PATHS}, got {train_path!r}")
        self.train_path = train_path
        self.last_train_path: str | None = None  # the path the last training forward took

    def _affine(self, x: Tensor, layout_free: bool = False) -> Tensor:
        """The conv; ``layout_free``: the caller (the fused BN + LIF) reads a channels-last output
        as well, which the spike path then returns without a transpose when that batch norm is the
        native one (tna_kernels.ops.batch_norm: the same bits for either layout)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        if self.spike_input and torch.is_grad_enabled() and self.training:
            if self.ternary:
                clip = _check_ste(self.weight, self.method, self.per_channel, self.clip)  # as ternary_ste checks
                y, self.last_train_path = conv_ste(x, self.weight, self.bias, self.stride, self.padding,
                                                   self.dilation, self.method, self.per_channel, clip,
                                                   self.train_path,
                                                   layout_free and x.is_cpu and batch_norm_ops.reproduces_torch())
                return y
            return _SpikeInputConv2d.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        if self.ternary:
            return TernaryConv2d.forward(self, x)
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def _folded_affine(self, x: Tensor) -> Tensor:
        if self.spike_input:  # the packed model's arithmetic: exact popcount accumulation
            y = F.spike_ternary_conv2d(F.pack_spikes(x, dim=1), self.folded_packed(), self.stride,
                                       self.padding, self.dilation)
            return y
        return F.ternary_conv2d(x, self.folded_packed(), self.stride, self.padding, self.dilation)

    def forward(self, x: Tensor, T: int | None = None) -> Tensor:
        return self._forward_spiking(x, T, sample_dims=3)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._spiking_repr()


class TernaryLIFLinear(_SpikingMixin, TernaryLinear):
    """``nn.Linear`` with ternary weights (STE) + BatchNorm1d over T·B + fused LIF.

    Input ``[T, B, in_features]`` (or static ``[B, in_features]`` with ``T``); output spikes
    ``[T, B, out_features]``. Options as :class:`TernaryLIFConv2d`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, ternary: bool = True, method: str = "twn", per_channel: bool = True,
                 clip: float | None = None, bn: bool = True, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, lif: bool = True, T: int | None = None, recompute: bool = True,
                 **neuron):
        super().__init__(in_features, out_features, bias, device, dtype, method=method,
                         per_channel=per_channel, clip=clip)
        norm = nn.BatchNorm1d(out_features, bn_eps, bn_momentum, device=device, dtype=dtype) if bn else None
        self._init_spiking(ternary, norm, lif, T, neuron, recompute)

    def _affine(self, x: Tensor, layout_free: bool = False) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got {x.shape[-1]}")
        if self.ternary:
            return TernaryLinear.forward(self, x)
        return nn.functional.linear(x, self.weight, self.bias)

    def _folded_affine(self, x: Tensor) -> Tensor:
        return F.ternary_linear(x, self.folded_packed())

    def forward(self, x: Tensor, T: int | None = None) -> Tensor:
        return self._forward_spiking(x, T, sample_dims=1)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._spiking_repr()


def set_recompute(model: nn.Module, enabled: bool) -> nn.Module:
    """Training memory vs speed for every spiking layer and spike max-pool in ``model``: ``True``
    (the default) keeps only the BN input per layer and bit-packed pool inputs, recomputing BN, the
    LIF membrane and max-pool in backward (~1/6 of SpikingJelly's training memory here, ~10–17 %
    slower steps on CPU); ``False`` saves those tensors instead. Returns ``model``."""
    for m in model.modules():
        if isinstance(m, (_SpikingMixin, SpikeMaxPool2d)):
            m.recompute = bool(enabled)
    return model


def set_train_path(model: nn.Module, path: str) -> nn.Module:
    """Sets ``train_path`` ("auto" | "spike" | "dense") of every spiking conv layer in ``model``;
    returns ``model``."""
    if path not in TRAIN_PATHS:
        raise ValueError(f"path must be one of {TRAIN_PATHS}, got {path!r}")
    for m in model.modules():
        if isinstance(m, TernaryLIFConv2d):
            m.train_path = path
    return model


def train_paths(model: nn.Module) -> dict[str, str]:
    """The training path each spike-input ternary conv layer of ``model`` took in its last training
    forward ("spike" | "dense"; layers that have not trained yet are left out)."""
    return {n: m.last_train_path for n, m in model.named_modules()
            if isinstance(m, TernaryLIFConv2d) and m.last_train_path is not None}


def spiking_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of a model's spiking conv/linear layers, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (TernaryLIFConv2d, TernaryLIFLinear))]


@torch.no_grad()
def firing_rates(model: nn.Module, x: Tensor) -> dict[str, float]:
    """Mean firing rate of every spiking layer's neurons on input ``x`` (one forward, no grad)."""
    rates, hooks = {}, []
    for name, m in spiking_layers(model):
        if m.neuron is not None:
            hooks.append(m.neuron.register_forward_hook(
                lambda _m, _i, out, name=name: rates.__setitem__(name, out.float().mean().item())))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return rates
