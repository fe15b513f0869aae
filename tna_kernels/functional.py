"""User-facing functions. Each validates its arguments (errors name the argument), never modifies
the caller's tensors, and calls a tna:: op, which runs the C++ kernel on CPU tensors and the Triton
kernel on CUDA tensors."""

import math

import torch
from torch import Tensor

from ._utils import HAS_TRITON, state_dtype
from .reference import SURROGATES

__all__ = ["lif", "tau_from_beta", "SURROGATES"]


def tau_from_beta(beta: float) -> float:
    """Time constant whose LIF decay ``1 - 1/tau`` equals the decay factor ``beta`` (0 <= beta < 1)."""
    if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    return 1.0 / (1.0 - beta)


def _check_device(x: Tensor) -> None:
    if x.device.type == "cuda" and not HAS_TRITON:
        raise RuntimeError("CUDA tensors need Triton for the tna GPU kernels: pip install triton")


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

    Backward saves one ``[T, ...]`` tensor (the pre-spike membrane); under ``torch.no_grad`` or
    when nothing requires grad it saves nothing.
    """
    if not isinstance(x_seq, Tensor):
        raise TypeError(f"x_seq must be a torch.Tensor, got {type(x_seq).__name__}")
    if not x_seq.dtype.is_floating_point:
        raise TypeError(f"x_seq must be a floating-point tensor, got {x_seq.dtype}")
    if x_seq.dim() < 1 or x_seq.shape[0] < 1:
        raise ValueError(f"x_seq must be [T, ...] with T >= 1 time steps, got shape {tuple(x_seq.shape)}")
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
    _check_device(x_seq)

    acc = state_dtype(x_seq.dtype)
    if v0 is None:
        v0 = torch.full(x_seq.shape[1:], 0.0 if v_reset is None else float(v_reset), dtype=acc,
                        device=x_seq.device)
    else:
        if not isinstance(v0, Tensor) or not v0.dtype.is_floating_point:
            raise TypeError("v0 must be a floating-point torch.Tensor")
        if v0.shape != x_seq.shape[1:]:
            raise ValueError(f"v0 must have shape {tuple(x_seq.shape[1:])} (x_seq.shape[1:]), "
                             f"got {tuple(v0.shape)}")
        if v0.device != x_seq.device:
            raise ValueError(f"v0 is on {v0.device} but x_seq is on {x_seq.device}")
        v0 = v0.to(acc)

    save_h = torch.is_grad_enabled() and (x_seq.requires_grad or v0.requires_grad)
    spikes, v_last, _ = torch.ops.tna.lif_fwd(
        x_seq, v0, float(tau), bool(decay_input), float(v_threshold),
        0.0 if v_reset is None else float(v_reset), v_reset is None, bool(detach_reset),
        surrogate, float(alpha), save_h)
    return (spikes, v_last) if return_v else spikes
