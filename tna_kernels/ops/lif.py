"""The LIF family: ``functional.lif`` / ``tau_from_beta`` and the ops under them,
tna::lif_fwd / tna::lif_bwd / tna::lif_bwd_recompute (C++ kernels on the CPU, Triton on CUDA),
with their fake kernels and autograd.

Forward and backward are separate ops joined by autograd, which saves one ``[T, ...]`` tensor:
- when the forward wrote the pre-spike membrane (``save_h=True``, what ``lif`` asks for on CUDA),
  ``h_seq`` (state dtype), and backward is ``lif_bwd``;
- otherwise the input ``x_seq`` itself (plus ``v0``), and backward is ``lif_bwd_recompute``, which
  recomputes the membrane in cache. ``lif`` does this on the CPU: the forward writes no ``h_seq``,
  4 of the 24 bytes per neuron-step a forward + backward moves."""

import math

import torch
from torch import Tensor

from .._utils import HAS_TRITON, check, state_dtype, time_rows
from .._utils import check_device as _check_device
from ..formats import SURROGATES
from . import register_cuda
from ._native import LIB, C, dtype_code, empty_output, ptr, threads

# The C++ kernels take the surrogate as its index in their list, which must be Python's.
if tuple(C.LIF_SURROGATES) != tuple(SURROGATES):
    raise ImportError(f"tna_kernels._C.LIF_SURROGATES {tuple(C.LIF_SURROGATES)} differs from "
                      f"tna_kernels.formats.SURROGATES {SURROGATES}: rebuild the native core")
_SURROGATE_INDEX = {name: i for i, name in enumerate(SURROGATES)}


# The tna:: schemas of this family (the only place they are written).
# Multi-step LIF (SpikingJelly dynamics). x_seq: [T, *] floating; v0: [*] in the state dtype
# (float32 for half/bf16 x, else x's dtype), or None = start at the reset value (v_reset, or 0
# for soft reset). Returns spikes [T, *] (x dtype), v_last [*]
# (state dtype) and h_seq, the pre-spike membrane [T, *] in the state dtype when save_h, else
# an empty tensor. detach_reset/surrogate/alpha only shape the backward; they are validated here.
LIB.define(
    "lif_fwd(Tensor x_seq, Tensor? v0, float tau, bool decay_input, float v_threshold, float v_reset, "
    "bool soft_reset, bool detach_reset, str surrogate, float alpha, bool save_h) -> (Tensor, Tensor, "
    "Tensor)")
# Backward through time from the saved h_seq (grad_v_last None = zero). Returns
# (grad_x_seq [T, *], grad_v0 [*]).
LIB.define(
    "lif_bwd(Tensor grad_spikes, Tensor? grad_v_last, Tensor h_seq, float tau, bool decay_input, float "
    "v_threshold, float v_reset, bool soft_reset, bool detach_reset, str surrogate, float alpha) -> "
    "(Tensor, Tensor)")
# The same backward without a saved h_seq: recomputes the membrane from the forward's inputs
# (x_seq, v0) block by block in cache; equal to lif_bwd on lif_fwd's h_seq. A forward + backward
# moves 20 B per neuron-step instead of 24 (no h_seq written; x_seq read in its own dtype).
# grad_v0 is [*] when v0 is given, else an empty tensor (a constant start has no gradient).
LIB.define(
    "lif_bwd_recompute(Tensor grad_spikes, Tensor? grad_v_last, Tensor x_seq, Tensor? v0, float tau, bool"
    " decay_input, float v_threshold, float v_reset, bool soft_reset, bool detach_reset, str surrogate, "
    "float alpha) -> (Tensor, Tensor)")


# ---- Argument checks of the ops (shared by the fake kernels and the CPU kernels) ---------------

def _check_seq(t, name, what="[T, ...] with at least one time step"):
    check(t.dim() >= 1 and t.shape[0] >= 1, lambda: f"{name} must be {what}, got shape {tuple(t.shape)}")


def _check_floating(t, name):
    check(t.dtype.is_floating_point, lambda: f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_like(t, name, shape, dtype):
    """An optional tensor (None passes) of the given shape and dtype."""
    if t is not None:
        check(t.shape == shape, lambda: f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
        check(t.dtype == dtype, lambda: f"{name} must have dtype {dtype}, got {t.dtype}")


def _check_hyper(tau, v_threshold, v_reset, surrogate, alpha):
    check(math.isfinite(tau) and tau > 0, lambda: f"tau must be a finite number > 0, got {tau}")
    check(math.isfinite(v_threshold), lambda: f"v_threshold must be finite, got {v_threshold}")
    check(math.isfinite(v_reset), lambda: f"v_reset must be finite, got {v_reset}")
    check(math.isfinite(alpha) and alpha > 0, lambda: f"alpha must be a finite number > 0, got {alpha}")
    check(surrogate in _SURROGATE_INDEX,
                 lambda: f"surrogate must be one of {SURROGATES}, got {surrogate!r}")


def _check_lif_fwd(x_seq, v0, tau, v_threshold, v_reset, surrogate, alpha):
    _check_floating(x_seq, "x_seq")
    _check_seq(x_seq, "x_seq")
    _check_like(v0, "v0", x_seq.shape[1:], state_dtype(x_seq.dtype))
    _check_hyper(tau, v_threshold, v_reset, surrogate, alpha)


def _check_lif_bwd(grad_spikes, grad_v_last, h_seq, tau, v_threshold, v_reset, surrogate, alpha):
    _check_floating(grad_spikes, "grad_spikes")
    _check_seq(h_seq, "h_seq", "the [T, ...] pre-spike membrane saved by lif_fwd(save_h=True)")
    check(grad_spikes.shape == h_seq.shape,
                 lambda: f"grad_spikes must have shape {tuple(h_seq.shape)}, got {tuple(grad_spikes.shape)}")
    acc = state_dtype(grad_spikes.dtype)
    check(h_seq.dtype == acc, lambda: f"h_seq must have dtype {acc}, got {h_seq.dtype}")
    _check_like(grad_v_last, "grad_v_last", h_seq.shape[1:], acc)
    _check_hyper(tau, v_threshold, v_reset, surrogate, alpha)


def _check_lif_bwd_recompute(grad_spikes, grad_v_last, x_seq, v0, tau, v_threshold, v_reset, surrogate, alpha):
    _check_floating(x_seq, "x_seq")
    _check_seq(x_seq, "x_seq")
    _check_like(grad_spikes, "grad_spikes", x_seq.shape, x_seq.dtype)
    acc = state_dtype(x_seq.dtype)
    _check_like(v0, "v0", x_seq.shape[1:], acc)
    _check_like(grad_v_last, "grad_v_last", x_seq.shape[1:], acc)
    _check_hyper(tau, v_threshold, v_reset, surrogate, alpha)


@torch.library.register_fake("tna::lif_fwd")
def _lif_fwd_fake(x_seq, v0, tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset,
                  surrogate, alpha, save_h):
    _check_lif_fwd(x_seq, v0, tau, v_threshold, v_reset, surrogate, alpha)
    acc = state_dtype(x_seq.dtype)
    h_shape = x_seq.shape if save_h else (0,)
    return (torch.empty_like(x_seq, memory_format=torch.contiguous_format),
            x_seq.new_empty(x_seq.shape[1:], dtype=acc),
            x_seq.new_empty(h_shape, dtype=acc))


@torch.library.register_fake("tna::lif_bwd")
def _lif_bwd_fake(grad_spikes, grad_v_last, h_seq, tau, decay_input, v_threshold, v_reset,
                  soft_reset, detach_reset, surrogate, alpha):
    _check_lif_bwd(grad_spikes, grad_v_last, h_seq, tau, v_threshold, v_reset, surrogate, alpha)
    return (torch.empty_like(grad_spikes, memory_format=torch.contiguous_format),
            h_seq.new_empty(h_seq.shape[1:]))


@torch.library.register_fake("tna::lif_bwd_recompute")
def _lif_bwd_recompute_fake(grad_spikes, grad_v_last, x_seq, v0, tau, decay_input, v_threshold, v_reset,
                            soft_reset, detach_reset, surrogate, alpha):
    _check_lif_bwd_recompute(grad_spikes, grad_v_last, x_seq, v0, tau, v_threshold, v_reset, surrogate, alpha)
    acc = state_dtype(x_seq.dtype)
    return (torch.empty_like(grad_spikes, memory_format=torch.contiguous_format),
            x_seq.new_empty(x_seq.shape[1:] if v0 is not None else (0,), dtype=acc))


# ---- CPU kernels: the native core (csrc/cpu/lif.cpp) ------------------------------------------

def _check_cpu(**tensors):
    """The tensors besides the one the CPU kernel was dispatched on (None passes)."""
    for name, t in tensors.items():
        if t is not None and t.device.type != "cpu":
            raise RuntimeError(f"{name} must be a CPU tensor, got {t.device}")


def _lif_fwd_cpu(x_seq, v0, tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset, surrogate,
                 alpha, save_h):
    _check_lif_fwd(x_seq, v0, tau, v_threshold, v_reset, surrogate, alpha)
    _check_cpu(v0=v0)
    x, x_stride = time_rows(x_seq)
    acc = state_dtype(x.dtype)
    spikes = empty_output(x.shape, x.dtype)
    v_last = empty_output(x.shape[1:], acc)
    h_seq = empty_output(x.shape if save_h else (0,), acc)
    v0 = None if v0 is None else v0.contiguous()
    C.lif_fwd(dtype_code(x), ptr(x), x_stride, ptr(v0), x.shape[0], math.prod(x.shape[1:]), tau, decay_input,
              v_threshold, v_reset, soft_reset, detach_reset, _SURROGATE_INDEX[surrogate], alpha, ptr(spikes),
              ptr(v_last), ptr(h_seq) if save_h else 0, threads())
    return spikes, v_last, h_seq


def _lif_bwd_cpu(grad_spikes, grad_v_last, h_seq, tau, decay_input, v_threshold, v_reset, soft_reset,
                 detach_reset, surrogate, alpha):
    _check_lif_bwd(grad_spikes, grad_v_last, h_seq, tau, v_threshold, v_reset, surrogate, alpha)
    _check_cpu(grad_v_last=grad_v_last, h_seq=h_seq)
    gs, h = grad_spikes.contiguous(), h_seq.contiguous()
    grad_v_last = None if grad_v_last is None else grad_v_last.contiguous()
    grad_x = empty_output(gs.shape, gs.dtype)
    grad_v0 = empty_output(h.shape[1:], h.dtype)
    C.lif_bwd(dtype_code(gs), ptr(gs), ptr(grad_v_last), ptr(h), h.shape[0], math.prod(h.shape[1:]), tau,
              decay_input, v_threshold, v_reset, soft_reset, detach_reset, _SURROGATE_INDEX[surrogate], alpha,
              ptr(grad_x), ptr(grad_v0), threads())
    return grad_x, grad_v0


def _lif_bwd_recompute_cpu(grad_spikes, grad_v_last, x_seq, v0, tau, decay_input, v_threshold, v_reset,
                           soft_reset, detach_reset, surrogate, alpha):
    _check_lif_bwd_recompute(grad_spikes, grad_v_last, x_seq, v0, tau, v_threshold, v_reset, surrogate, alpha)
    _check_cpu(grad_spikes=grad_spikes, grad_v_last=grad_v_last, v0=v0)
    x, x_stride = time_rows(x_seq)
    gs, gs_stride = time_rows(grad_spikes)
    v0 = None if v0 is None else v0.contiguous()
    grad_v_last = None if grad_v_last is None else grad_v_last.contiguous()
    grad_x = empty_output(x_seq.shape, gs.dtype)
    # Without v0 the initial membrane is a constant: no gradient to return, the carry stays local.
    grad_v0 = torch.empty(x_seq.shape[1:] if v0 is not None else (0,), dtype=state_dtype(gs.dtype))
    C.lif_bwd_recompute(dtype_code(gs), ptr(gs), gs_stride, ptr(grad_v_last), ptr(x), x_stride, ptr(v0),
                        x.shape[0], math.prod(x.shape[1:]), tau, decay_input, v_threshold, v_reset, soft_reset,
                        detach_reset, _SURROGATE_INDEX[surrogate], alpha, ptr(grad_x),
                        0 if v0 is None else ptr(grad_v0), threads())
    return grad_x, grad_v0


LIB.impl("lif_fwd", _lif_fwd_cpu, "CPU")
LIB.impl("lif_bwd", _lif_bwd_cpu, "CPU")
LIB.impl("lif_bwd_recompute", _lif_bwd_recompute_cpu, "CPU")


# ---- Autograd ----------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    x_seq, v0 = inputs[0], inputs[1]
    ctx.x_dtype = x_seq.dtype
    ctx.v0_given = v0 is not None
    ctx.hyper = tuple(inputs[2:10])  # tau .. alpha
    h_seq = output[2]
    ctx.recompute = h_seq.numel() == 0
    # Either the membrane the forward wrote, or what recomputing it needs: the input and v0.
    ctx.save_for_backward(*((x_seq, v0) if ctx.recompute else (h_seq,)))
    # h_seq is a saved intermediate, not a result to differentiate; and unused outputs must not
    # be materialised as zero tensors ([T, ...] of zeros for h_seq cost as much as the kernel).
    ctx.mark_non_differentiable(h_seq)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_spikes, grad_v_last, _grad_h):
    saved = ctx.saved_tensors
    if grad_spikes is None:
        grad_spikes = torch.zeros(saved[0].shape, dtype=ctx.x_dtype, device=saved[0].device)
    if ctx.recompute:
        grad_x, grad_v0 = torch.ops.tna.lif_bwd_recompute(grad_spikes, grad_v_last, *saved, *ctx.hyper)
    else:
        grad_x, grad_v0 = torch.ops.tna.lif_bwd(grad_spikes, grad_v_last, saved[0], *ctx.hyper)
    return grad_x, grad_v0 if ctx.v0_given else None, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("tna::lif_fwd", _backward, setup_context=_setup_context)

# ---- CUDA kernels: the ops' argument checks (above, shared with the CPU and fake kernels) on the
# host, then the Triton launchers. A shape the kernels would trust (v0, grad_v_last, grad_spikes)
# is never left to a device-side fault.

if HAS_TRITON:
    from ..triton import lif as _triton_lif

    def _lif_fwd_cuda(x_seq, v0, tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset, surrogate,
                      alpha, save_h):
        _check_lif_fwd(x_seq, v0, tau, v_threshold, v_reset, surrogate, alpha)
        return _triton_lif.lif_fwd(x_seq, v0, tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset,
                                   surrogate, alpha, save_h)

    def _lif_bwd_cuda(grad_spikes, grad_v_last, h_seq, tau, decay_input, v_threshold, v_reset, soft_reset,
                      detach_reset, surrogate, alpha):
        _check_lif_bwd(grad_spikes, grad_v_last, h_seq, tau, v_threshold, v_reset, surrogate, alpha)
        return _triton_lif.lif_bwd(grad_spikes, grad_v_last, h_seq, tau, decay_input, v_threshold, v_reset,
                                   soft_reset, detach_reset, surrogate, alpha)

    def _lif_bwd_recompute_cuda(grad_spikes, grad_v_last, x_seq, v0, tau, decay_input, v_threshold, v_reset,
                                soft_reset, detach_reset, surrogate, alpha):
        _check_lif_bwd_recompute(grad_spikes, grad_v_last, x_seq, v0, tau, v_threshold, v_reset, surrogate, alpha)
        return _triton_lif.lif_bwd_recompute(grad_spikes, grad_v_last, x_seq, v0, tau, decay_input, v_threshold,
                                             v_reset, soft_reset, detach_reset, surrogate, alpha)

    register_cuda("lif_fwd", _lif_fwd_cuda, "triton")
    register_cuda("lif_bwd", _lif_bwd_cuda, "triton")
    register_cuda("lif_bwd_recompute", _lif_bwd_recompute_cuda, "triton (one kernel, membrane recomputed)")


# ---- Public API (re-exported by tna_kernels.functional) ---------------------------------------

def tau_from_beta(beta: float) -> float:
    """Time constant whose LIF decay ``1 - 1/tau`` equals the decay factor ``beta`` (0 <= beta < 1)."""
    if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    return 1.0 / (1.0 - beta)


def _lif_constants(tau, decay_input, v_threshold, v_reset, surrogate, alpha, beta) -> tuple[float, bool]:
    """Validates the neuron arguments of :func:`lif`; returns the effective ``(tau, decay_input)``."""
    if beta is not None:
        if tau is not None or decay_input:
            raise ValueError("beta replaces tau and decay_input: pass either beta or tau/decay_input")
        tau, decay_input = tau_from_beta(beta), False
    tau = 2.0 if tau is None else tau
    decay_input = True if decay_input is None else decay_input
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    if v_reset is not None and not math.isfinite(v_reset):
        raise ValueError(f"v_reset must be a finite number or None, got {v_reset!r}")
    if not math.isfinite(v_threshold):
        raise ValueError(f"v_threshold must be finite, got {v_threshold!r}")
    return float(tau), bool(decay_input)


def _check_lif(x_seq, v0, tau, decay_input, v_threshold, v_reset, detach_reset, surrogate, alpha,
               beta) -> tuple[Tensor | None, tuple]:
    """Validates the arguments of :func:`lif`; returns ``v0`` in the state dtype and the neuron
    arguments as the ops take them (:func:`_lif_hyper`)."""
    if not isinstance(x_seq, Tensor):
        raise TypeError(f"x_seq must be a torch.Tensor, got {type(x_seq).__name__}")
    if not x_seq.dtype.is_floating_point:
        raise TypeError(f"x_seq must be a floating-point tensor, got {x_seq.dtype}")
    if x_seq.dim() < 1 or x_seq.shape[0] < 1:
        raise ValueError(f"x_seq must be [T, ...] with T >= 1 time steps, got shape {tuple(x_seq.shape)}")
    hyper = _lif_hyper(tau, decay_input, v_threshold, v_reset, detach_reset, surrogate, alpha, beta)
    _check_device(x_seq)

    if v0 is not None:
        if not isinstance(v0, Tensor) or not v0.dtype.is_floating_point:
            raise TypeError("v0 must be a floating-point torch.Tensor")
        if v0.shape != x_seq.shape[1:]:
            raise ValueError(f"v0 must have shape {tuple(x_seq.shape[1:])} (x_seq.shape[1:]), "
                             f"got {tuple(v0.shape)}")
        if v0.device != x_seq.device:
            raise ValueError(f"v0 is on {v0.device} but x_seq is on {x_seq.device}")
        v0 = v0.to(state_dtype(x_seq.dtype))

    return v0, hyper


def lif(x_seq: Tensor, v0: Tensor | None = None, *, tau: float | None = None,
        decay_input: bool | None = None, v_threshold: float = 1.0, v_reset: float | None = 0.0,
        detach_reset: bool = False, surrogate: str = "atan", alpha: float = 2.0,
        beta: float | None = None, return_v: bool = False):
    """Fused multi-step leaky integrate-and-fire neuron (SpikingJelly ``LIFNode`` dynamics).

    Args:
        x_seq: input current ``[T, ...]`` (any trailing shape, any strides), float32/float64/
            float16/bfloat16. Half and bf16 are stored as given; the membrane runs in float32.
        v0: initial membrane ``[...]`` (= ``x_seq.shape[1:]``). Default: ``v_reset`` (hard reset)
            or 0 (soft reset). Pass the ``v`` returned by a previous call to stream in chunks of time.
        tau: membrane time constant (> 0), default 2.0. Charge: ``h = v + (x - (v - v_reset)) / tau``
            with ``decay_input``, else ``h = v - (v - v_reset) / tau + x``.
        decay_input: whether the input is divided by ``tau`` (default True).
        v_threshold: firing threshold: ``s = 1[h >= v_threshold]``.
        v_reset: hard-reset value (a float: ``v = v_reset`` after a spike) or ``None`` for the soft
            (subtract) reset ``v = h - v_threshold``.
        detach_reset: stop the gradient through the spike used in the reset.
        surrogate: one of ``"atan"``, ``"sigmoid"``, ``"fast_sigmoid"``, ``"triangle"``,
            ``"rectangle"`` (formulas in ``tna_kernels.reference.surrogate_grad``).
        alpha: surrogate sharpness (> 0).
        beta: decay-factor parameterisation, the paper's ``u[t] = beta*u[t-1]*(1 - s[t-1]) + I[t]``
            (with ``v_reset=0.0``): sets ``tau = 1/(1 - beta)`` and ``decay_input=False``. Cannot be
            combined with ``tau`` or ``decay_input=True``.
        return_v: also return the final membrane (state dtype: float32 for half/bf16 input).

    Returns:
        spikes ``[T, ...]`` (0/1, dtype of ``x_seq``), or ``(spikes, v_last)`` with ``return_v``.

    Backward keeps one ``[T, ...]`` tensor: on the CPU ``x_seq`` itself (no copy when it is
    contiguous; the membrane is recomputed in cache during backward), on CUDA the pre-spike
    membrane. Under ``torch.no_grad`` or when nothing requires grad it keeps nothing.
    """
    v0, hyper = _check_lif(x_seq, v0, tau, decay_input, v_threshold, v_reset, detach_reset, surrogate, alpha,
                           beta)

    # On the CPU backward recomputes the membrane from x_seq (one fewer [T, ...] write); on CUDA
    # the forward saves it.
    needs_grad = torch.is_grad_enabled() and (x_seq.requires_grad or (v0 is not None and v0.requires_grad))
    save_h = needs_grad and x_seq.device.type != "cpu"
    spikes, v_last, _ = torch.ops.tna.lif_fwd(x_seq, v0, *hyper, save_h)
    return (spikes, v_last) if return_v else spikes


def _lif_hyper(tau=None, decay_input=None, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate="atan",
               alpha=2.0, beta=None) -> tuple:
    """Validates the neuron arguments of :func:`lif`; returns them as ``tna::lif_fwd`` and
    ``tna::lif_bwd`` take them (after the input tensors)."""
    tau, decay_input = _lif_constants(tau, decay_input, v_threshold, v_reset, surrogate, alpha, beta)
    return (tau, decay_input, float(v_threshold), 0.0 if v_reset is None else float(v_reset), v_reset is None,
            bool(detach_reset), surrogate, float(alpha))
