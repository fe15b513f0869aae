"""The training batch-norm family: tna::batch_norm_forward and tna::batch_norm_apply, batch norm
with batch statistics on the native core (CPU, float32 [N, C, S] with S > 1, NCHW-contiguous or
4-D channels-last, the output in the input's layout), for the fused BN + LIF layer
(:mod:`tna_kernels.nn.bn_lif`).

Why: torch's CPU batch norm sums each channel in one float64 chain, latency-bound (3-8 ms for one
8-17 MB layer of the training benchmark on one core, ten times a copy of it), and the fused layer's
backward ran it a second time to recompute its output. Here eight channels' chains run side by
side in the same order of additions per channel, and the normalisation rounds as torch's kernel
rounds it, so the output and the batch and running statistics equal ``torch.native_batch_norm``'s
bit for bit (the spikes after them are nn.BatchNorm's, and torch's backward, given the same mean
and invstd, gives the same gradients); ``batch_norm_apply`` recomputes the output from the saved
mean and invstd without the statistics pass. torch sends inputs with S == 1 ([N, C], or 1×1
images) to its channels-last kernel, which sums in another order: those stay on torch's op.

How torch rounds the normalisation depends on the kernel it dispatched: its AVX2 / AVX-512 kernels
fuse ``x * a + b`` into one FMA, its portable one rounds the product first.
:func:`torch_rounding` (found at import) ran torch's batch norm and both of ours on probe inputs and says which
matches (``"fused"``, ``"unfused"``) or ``None``; the ops use the matching one, and
:func:`reproduces_torch` (what bn_lif asks before using them) is False when neither does.

``batch_norm_backward_channels_last`` is the backward for channels-last inputs (torch's backward
is slow when it gets one with an NCHW gradient, and no faster than this with both channels-last);
NCHW inputs use torch's backward (on one thread ~2x this kernel's time at the same size,
[256, 32, 16, 16]: an NCHW variant of this kernel is not written yet). No autograd: the fused
BN + LIF layer's ``autograd.Function`` calls the backward itself.

On CUDA only the fused pair ``batch_norm_lif_forward`` / ``_backward`` has a kernel (Triton,
:mod:`tna_kernels.triton.batch_norm`: NCHW or channels-last, float32 / bfloat16 / float16 x, float32
arithmetic, deterministic sums in another order than torch's, so spikes and statistics equal
torch's batch norm + LIF up to float rounding); the other ops stay CPU-only and the unfused layer
keeps torch's batch norm there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import HAS_TRITON, check, is_channels_last
from . import register_cuda
from ._native import LIB, C, dtype_str, empty_output, ptr, shape_str, threads
from .lif import _SURROGATE_INDEX, _check_hyper

# The tna:: schemas of this family (the only place they are written).
# Training batch norm over x [N, C, *] (float32; a 4-D channels-last x is read in place and y is
# channels-last too, otherwise y is contiguous): (y, mean [C], invstd [C]) as
# torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps) returns
# them; running_mean / running_var (float32 [C], optional) are updated in place as torch does.
LIB.define(
    "batch_norm_forward(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, Tensor(b!)? "
    "running_var, float momentum, float eps) -> (Tensor, Tensor, Tensor)")
# The forward's y again from its mean and invstd (no statistics pass).
LIB.define("batch_norm_apply(Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias) -> Tensor")
# Gradients of the training forward for a channels-last x (the spike conv's layout; NCHW inputs
# use torch's native_batch_norm_backward): (grad_x channels-last, grad_weight [C],
# grad_bias [C]); an output masked off by output_mask is an empty tensor, as is grad_weight without
# a weight. torch's formula, summed per channel in position order (float tolerance against torch).
LIB.define(
    "batch_norm_backward_channels_last(Tensor grad_y, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, "
    "bool[3] output_mask) -> (Tensor, Tensor, Tensor)")

# Batch norm (batch statistics) + LIF fused, for a channels-last float32 x [T*B, C, H, W] (sample
# t*B + b at step t; the LIF runs over the T steps of each of the B*C*H*W neurons from its reset
# value): (spikes [T*B, C, H, W] channels-last, mean [C], invstd [C]), equal bit for bit to
# batch_norm_forward then lif_fwd on its output in memory order; the batch norm's output is never
# written (csrc/cpu/batch_norm_lif.cpp). The LIF arguments are lif_fwd's.
LIB.define(
    "batch_norm_lif_forward(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, Tensor(b!)? "
    "running_var, float momentum, float eps, int T, float tau, bool decay_input, float v_threshold, float v_reset, "
    "bool soft_reset, bool detach_reset, str surrogate, float alpha) -> (Tensor, Tensor, Tensor)")
# Its backward from the spikes' gradient [T*B, C, H, W]: (grad_x channels-last, grad_weight [C],
# grad_bias [C]) as batch_norm_apply, lif_bwd_recompute and batch_norm_backward_channels_last give
# them (bit for bit when B*H*W is a multiple of 256; otherwise in float rounding); an output masked
# off by output_mask is an empty tensor, as is grad_weight without a weight.
LIB.define(
    "batch_norm_lif_backward(Tensor grad_spikes, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? "
    "bias, int T, float tau, bool decay_input, float v_threshold, float v_reset, bool soft_reset, bool "
    "detach_reset, str surrogate, float alpha, bool[3] output_mask) -> (Tensor, Tensor, Tensor)")

ROUNDINGS = ("fused", "unfused")
GPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # x and grad_spikes of the CUDA BN + LIF kernels


# ---- Argument checks ---------------------------------------------------------------------------

def _check_x(x: Tensor, name: str = "x", gpu: bool = False) -> tuple[int, int, int]:
    """x: a CPU float32 [N, C, *] tensor (``gpu``: the CUDA kernels' float32, bfloat16 or float16 on
    any device); returns (N, C, S) with S the product of the trailing sizes."""
    if gpu:
        if x.dtype not in GPU_DTYPES:
            raise RuntimeError(f"{name} must have dtype Float, BFloat16 or Half, got {dtype_str(x.dtype)}")
    else:
        if not x.is_cpu:
            raise RuntimeError(f"{name} must be a CPU tensor, got {x.device}")
        if x.dtype != torch.float32:
            raise RuntimeError(f"{name} must have dtype Float, got {dtype_str(x.dtype)}")
    if x.dim() < 2:
        raise RuntimeError(f"{name} must be [N, C, ...] with at least 2 dims, got shape {shape_str(x.shape)}")
    n, c = x.shape[:2]
    return n, c, x.numel() // max(n * c, 1)


def _check_values_per_channel(x: Tensor, values: int) -> None:
    if values < 2:
        raise RuntimeError(f"batch norm in training needs more than one value per channel, got input shape "
                           f"{shape_str(x.shape)}")


def _check_backward_args(grad: Tensor, grad_name: str, x: Tensor, c: int, mean: Tensor, invstd: Tensor,
                         weight: Tensor | None, bias: Tensor | None, output_mask,
                         gpu: bool = False) -> tuple[bool, bool, bool]:
    """A backward's output gradient (x's shape), per-channel tensors and mask; returns the outputs
    to compute (grad_weight only with a weight)."""
    _check_x(grad, grad_name, gpu)
    if grad.shape != x.shape:
        raise RuntimeError(f"{grad_name} must have x's shape {shape_str(x.shape)}, got {shape_str(grad.shape)}")
    if grad.device != x.device:
        raise RuntimeError(f"{grad_name} must be on x's device {x.device}, got {grad.device}")
    for t, name in ((mean, "mean"), (invstd, "invstd"), (weight, "weight"), (bias, "bias")):
        _check_channel(t, name, c, x.device)
    if len(output_mask) != 3:
        raise RuntimeError(f"output_mask must have 3 entries, got {len(output_mask)}")
    want_x, want_w, want_b = output_mask
    return bool(want_x), bool(want_w and weight is not None), bool(want_b)


def _check_channel(t: Tensor | None, name: str, c: int, device: torch.device | None = None) -> None:
    """An optional per-channel float32 vector of length c, on the CPU (or on ``device``)."""
    if t is None:
        return
    if device is None or device.type == "cpu":
        if not t.is_cpu:
            raise RuntimeError(f"{name} must be a CPU tensor, got {t.device}")
    elif t.device != device:
        raise RuntimeError(f"{name} must be on x's device {device}, got {t.device}")
    if t.dtype != torch.float32:
        raise RuntimeError(f"{name} must have dtype Float, got {dtype_str(t.dtype)}")
    if tuple(t.shape) != (c,):
        raise RuntimeError(f"{name} must have shape [{c}], got {shape_str(t.shape)}")


def _check_running(t: Tensor | None, name: str, c: int, device: torch.device | None = None) -> None:
    _check_channel(t, name, c, device)
    if t is not None and not t.is_contiguous():
        raise RuntimeError(f"{name} must be contiguous (it is updated in place)")


# The kernels read a channels-last x ([N, H, W, C] memory: _utils.is_channels_last) in place and
# anything else as an NCHW-contiguous tensor (a copy when x is neither). Both give the same bits:
# the sums run per channel in the same order whatever the layout.

def _output_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def _vec(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


# ---- CPU kernels -------------------------------------------------------------------------------

def _forward(x, weight, bias, running_mean, running_var, momentum, eps, fused):
    n, c, s = _check_x(x)
    for t, name in ((weight, "weight"), (bias, "bias")):
        _check_channel(t, name, c)
    _check_running(running_mean, "running_mean", c)
    _check_running(running_var, "running_var", c)
    _check_values_per_channel(x, n * s)
    cl = is_channels_last(x)
    xc, w, b = (x if cl else x.contiguous()), _vec(weight), _vec(bias)
    y = empty_output(tuple(x.shape), torch.float32, _output_format(x))
    mean, invstd = torch.empty(c), torch.empty(c)
    C.batch_norm_forward(xc.data_ptr(), ptr(w), ptr(b), ptr(running_mean), ptr(running_var), y.data_ptr(),
                         mean.data_ptr(), invstd.data_ptr(), n, c, s, float(momentum), float(eps), fused, cl,
                         threads())
    return y, mean, invstd


def _apply(x, mean, invstd, weight, bias, fused):
    n, c, s = _check_x(x)
    for t, name in ((mean, "mean"), (invstd, "invstd"), (weight, "weight"), (bias, "bias")):
        _check_channel(t, name, c)
    cl = is_channels_last(x)
    xc = x if cl else x.contiguous()
    y = empty_output(tuple(x.shape), torch.float32, _output_format(x))
    C.batch_norm_apply(xc.data_ptr(), mean.contiguous().data_ptr(), invstd.contiguous().data_ptr(),
                       ptr(_vec(weight)), ptr(_vec(bias)), y.data_ptr(), n, c, s, fused, cl, threads())
    return y


def _batch_norm_forward_cpu(x, weight, bias, running_mean, running_var, momentum, eps):
    return _forward(x, weight, bias, running_mean, running_var, momentum, eps, _rounding_fused())


def _batch_norm_apply_cpu(x, mean, invstd, weight, bias):
    return _apply(x, mean, invstd, weight, bias, _rounding_fused())


def _batch_norm_backward_channels_last_cpu(grad_y, x, mean, invstd, weight, output_mask):
    n, c, s = _check_x(x)
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        raise RuntimeError(f"x must be a channels-last [N, C, H, W] tensor, got shape {shape_str(x.shape)} with "
                           f"strides {list(x.stride())} (for NCHW inputs use torch's native_batch_norm_backward)")
    want_x, want_w, want_b = _check_backward_args(grad_y, "grad_y", x, c, mean, invstd, weight, None, output_mask)
    gy = grad_y.contiguous(memory_format=torch.channels_last)
    grad_x = empty_output(tuple(x.shape), torch.float32, torch.channels_last) if want_x else x.new_empty((0,))
    grad_w = torch.empty(c) if want_w else x.new_empty((0,))
    grad_b = torch.empty(c) if want_b else x.new_empty((0,))
    C.batch_norm_backward_cl(gy.data_ptr(), x.data_ptr(), mean.contiguous().data_ptr(),
                             invstd.contiguous().data_ptr(), ptr(_vec(weight)), grad_x.data_ptr() if want_x else 0,
                             grad_w.data_ptr() if want_w else 0, grad_b.data_ptr() if want_b else 0, n, c, s,
                             threads())
    return grad_x, grad_w, grad_b


def _check_lif_input(x: Tensor, T: int, surrogate: str, gpu: bool = False) -> tuple[int, int, int]:
    """x for the fused batch norm + LIF: channels-last [T*B, C, H, W] (``gpu``: NCHW-contiguous or
    channels-last, the layouts the CUDA step produces); returns (N, C, S)."""
    n, c, s = _check_x(x, "x", gpu)
    if gpu:
        if x.dim() != 4 or not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            raise RuntimeError(f"x must be an NCHW-contiguous or channels-last [N, C, H, W] tensor, got shape "
                               f"{shape_str(x.shape)} with strides {list(x.stride())}")
    elif x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        raise RuntimeError(f"x must be a channels-last [N, C, H, W] tensor, got shape {shape_str(x.shape)} with "
                           f"strides {list(x.stride())}")
    if T < 1 or n % T:
        raise RuntimeError(f"x must have T*B samples for T = {T} (T >= 1), got {n}")
    if surrogate not in _SURROGATE_INDEX:
        raise RuntimeError(f"surrogate must be one of {sorted(_SURROGATE_INDEX)}, got {surrogate!r}")
    return n, c, s


def _batch_norm_lif_forward_cpu(x, weight, bias, running_mean, running_var, momentum, eps, T, tau, decay_input,
                                v_threshold, v_reset, soft_reset, detach_reset, surrogate, alpha):
    n, c, s = _check_lif_input(x, T, surrogate)
    for t, name in ((weight, "weight"), (bias, "bias")):
        _check_channel(t, name, c)
    _check_running(running_mean, "running_mean", c)
    _check_running(running_var, "running_var", c)
    _check_values_per_channel(x, n * s)
    spikes = empty_output(tuple(x.shape), torch.float32, torch.channels_last)
    mean, invstd = torch.empty(c), torch.empty(c)
    C.batch_norm_lif_forward_cl(x.data_ptr(), ptr(_vec(weight)), ptr(_vec(bias)), ptr(running_mean),
                                ptr(running_var), mean.data_ptr(), invstd.data_ptr(), spikes.data_ptr(), T, n, c, s,
                                float(momentum), float(eps), _rounding_fused(), tau, decay_input, v_threshold,
                                v_reset, soft_reset, detach_reset, _SURROGATE_INDEX[surrogate], alpha, threads())
    return spikes, mean, invstd


def _batch_norm_lif_backward_cpu(grad_spikes, x, mean, invstd, weight, bias, T, tau, decay_input, v_threshold,
                                 v_reset, soft_reset, detach_reset, surrogate, alpha, output_mask):
    n, c, s = _check_lif_input(x, T, surrogate)
    _check_values_per_channel(x, n * s)
    want_x, want_w, want_b = _check_backward_args(grad_spikes, "grad_spikes", x, c, mean, invstd, weight, bias,
                                                  output_mask)
    gs = grad_spikes.contiguous(memory_format=torch.channels_last)
    grad_x = empty_output(tuple(x.shape), torch.float32, torch.channels_last)  # also the kernel's scratch
    grad_w = torch.empty(c) if want_w else x.new_empty((0,))
    grad_b = torch.empty(c) if want_b else x.new_empty((0,))
    C.batch_norm_lif_backward_cl(gs.data_ptr(), n // T * s * c, x.data_ptr(), mean.contiguous().data_ptr(),
                                 invstd.contiguous().data_ptr(), ptr(_vec(weight)), ptr(_vec(bias)), grad_x.data_ptr(),
                                 grad_w.data_ptr() if want_w else 0, grad_b.data_ptr() if want_b else 0, T, n, c, s,
                                 _rounding_fused(), tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset,
                                 _SURROGATE_INDEX[surrogate], alpha, threads())
    return (grad_x if want_x else x.new_empty((0,))), grad_w, grad_b


LIB.impl("batch_norm_forward", _batch_norm_forward_cpu, "CPU")
LIB.impl("batch_norm_backward_channels_last", _batch_norm_backward_channels_last_cpu, "CPU")
LIB.impl("batch_norm_apply", _batch_norm_apply_cpu, "CPU")
LIB.impl("batch_norm_lif_forward", _batch_norm_lif_forward_cpu, "CPU")
LIB.impl("batch_norm_lif_backward", _batch_norm_lif_backward_cpu, "CPU")

# ---- CUDA kernels of the fused BN + LIF (Triton): the CPU op's checks on the host, widened to the
# GPU step's layouts and dtypes (NCHW or channels-last; float32, bfloat16, float16 x), then the
# launchers. The other ops of this family stay CPU-only: on CUDA the unfused layer runs torch's
# batch norm (cuDNN), which needs no help reaching its bandwidth.

if HAS_TRITON:
    from ..triton import batch_norm as _triton_bn

    def _batch_norm_lif_forward_cuda(x, weight, bias, running_mean, running_var, momentum, eps, T, tau, decay_input,
                                     v_threshold, v_reset, soft_reset, detach_reset, surrogate, alpha):
        n, c, s = _check_lif_input(x, T, surrogate, gpu=True)
        _check_hyper(tau, v_threshold, v_reset, surrogate, alpha)
        for t, name in ((weight, "weight"), (bias, "bias")):
            _check_channel(t, name, c, x.device)
        _check_running(running_mean, "running_mean", c, x.device)
        _check_running(running_var, "running_var", c, x.device)
        _check_values_per_channel(x, n * s)
        return _triton_bn.batch_norm_lif_forward(x, weight, bias, running_mean, running_var, float(momentum),
                                                 float(eps), T, tau, decay_input, v_threshold, v_reset, soft_reset)

    def _batch_norm_lif_backward_cuda(grad_spikes, x, mean, invstd, weight, bias, T, tau, decay_input, v_threshold,
                                      v_reset, soft_reset, detach_reset, surrogate, alpha, output_mask):
        n, c, s = _check_lif_input(x, T, surrogate, gpu=True)
        _check_hyper(tau, v_threshold, v_reset, surrogate, alpha)
        _check_values_per_channel(x, n * s)
        mask = _check_backward_args(grad_spikes, "grad_spikes", x, c, mean, invstd, weight, bias, output_mask,
                                    gpu=True)
        return _triton_bn.batch_norm_lif_backward(grad_spikes, x, mean, invstd, weight, bias, T, tau, decay_input,
                                                  v_threshold, v_reset, soft_reset, detach_reset,
                                                  _SURROGATE_INDEX[surrogate], alpha, mask)

    register_cuda("batch_norm_lif_forward", _batch_norm_lif_forward_cuda,
                  "triton (statistics tiles, then normalise + LIF in one kernel)")
    register_cuda("batch_norm_lif_backward", _batch_norm_lif_backward_cuda,
                  "triton (normalise + LIF backward + sums in one kernel, then the gradient)")


@torch.library.register_fake("tna::batch_norm_forward")
def _batch_norm_forward_fake(x, weight, bias, running_mean, running_var, momentum, eps):
    check(x.dim() >= 2, lambda: f"x must be [N, C, ...], got shape {tuple(x.shape)}")
    c = x.shape[1]
    return torch.empty_like(x, memory_format=_output_format(x)), x.new_empty((c,)), x.new_empty((c,))


@torch.library.register_fake("tna::batch_norm_apply")
def _batch_norm_apply_fake(x, mean, invstd, weight, bias):
    return torch.empty_like(x, memory_format=_output_format(x))


@torch.library.register_fake("tna::batch_norm_backward_channels_last")
def _batch_norm_backward_channels_last_fake(grad_y, x, mean, invstd, weight, output_mask):
    c = x.shape[1]
    want_w = output_mask[1] and weight is not None
    grad_x = (torch.empty_like(x, memory_format=torch.channels_last) if output_mask[0] else x.new_empty((0,)))
    return grad_x, x.new_empty((c,) if want_w else (0,)), x.new_empty((c,) if output_mask[2] else (0,))


@torch.library.register_fake("tna::batch_norm_lif_forward")
def _batch_norm_lif_forward_fake(x, weight, bias, running_mean, running_var, momentum, eps, T, tau, decay_input,
                                 v_threshold, v_reset, soft_reset, detach_reset, surrogate, alpha):
    check(x.dim() == 4, lambda: f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    c = x.shape[1]
    stats = x.new_empty((c,), dtype=torch.float32)
    return torch.empty_like(x, memory_format=_output_format(x)), stats, stats.new_empty((c,))


@torch.library.register_fake("tna::batch_norm_lif_backward")
def _batch_norm_lif_backward_fake(grad_spikes, x, mean, invstd, weight, bias, T, tau, decay_input, v_threshold,
                                  v_reset, soft_reset, detach_reset, surrogate, alpha, output_mask):
    c = x.shape[1]
    want_w = output_mask[1] and weight is not None
    grad_x = torch.empty_like(x, memory_format=_output_format(x)) if output_mask[0] else x.new_empty((0,))
    return (grad_x, x.new_empty((c,) if want_w else (0,), dtype=torch.float32),
            x.new_empty((c,) if output_mask[2] else (0,), dtype=torch.float32))


# ---- Which rounding torch uses here --------------------------------------------------------------

def _probe_inputs() -> list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """Fixed pseudo-random inputs on which the two roundings of the normalisation differ in many
    elements: a [N, C, H, W] and a [N, C, L] case, with affine parameters and running statistics."""
    g = torch.Generator().manual_seed(20261203)
    cases = []
    for shape in ((5, 12, 6, 7), (9, 12, 13)):
        c = shape[1]
        x = torch.randn(shape, generator=g) * 3 + torch.randn(c, *([1] * (len(shape) - 2)), generator=g)
        cases.append((x, torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g),
                      torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5))
    return cases


def _detect_rounding() -> str | None:
    for rounding in ROUNDINGS:
        ok = True
        for x, w, b, rm, rv in _probe_inputs():
            rm_t, rv_t, rm_o, rv_o = rm.clone(), rv.clone(), rm.clone(), rv.clone()
            want = torch.native_batch_norm(x, w, b, rm_t, rv_t, True, 0.3, 1e-5)
            got = _forward(x, w, b, rm_o, rv_o, 0.3, 1e-5, rounding == "fused")
            again = _apply(x, got[1], got[2], w, b, rounding == "fused")
            pairs = zip((*got, rm_o, rv_o, again), (*want, rm_t, rv_t, want[0]), strict=True)
            ok = ok and all(torch.equal(a, e) for a, e in pairs)
        if ok:
            return rounding
    return None


# Found once, at import (well under a millisecond of work), so that a torch.compile trace reads a
# constant instead of running the probe.
TORCH_ROUNDING: str | None = _detect_rounding()


def torch_rounding() -> str | None:
    """``"fused"`` or ``"unfused"``: the rounding of torch's CPU batch norm in this process (its
    output, batch and running statistics equal ours with it on the probe inputs), or None when
    neither matches (then :func:`reproduces_torch` is False and the fused layer keeps torch's)."""
    return TORCH_ROUNDING


def reproduces_torch() -> bool:
    """Whether these ops give ``torch.native_batch_norm``'s bits in this process."""
    return TORCH_ROUNDING is not None


def _rounding_fused() -> bool:
    return TORCH_ROUNDING != "unfused"
