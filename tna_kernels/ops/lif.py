"""tna::lif_fwd / tna::lif_bwd / tna::lif_bwd_recompute: fake kernels, autograd, and the Triton
backend on CUDA.

Forward and backward are separate ops joined by autograd, which saves one ``[T, ...]`` tensor:
- when the forward wrote the pre-spike membrane (``save_h=True``, what ``functional.lif`` asks for
  on CUDA), ``h_seq`` (state dtype), and backward is ``lif_bwd``;
- otherwise the input ``x_seq`` itself (plus ``v0``), and backward is ``lif_bwd_recompute``, which
  recomputes the membrane in cache. ``functional.lif`` does this on the CPU: the forward writes no
  ``h_seq``, 4 of the 24 bytes per neuron-step a forward + backward moves."""

import torch

from .._utils import HAS_TRITON, state_dtype
from ..reference import SURROGATES
from . import CUDA_BACKENDS
from ._native import LIB


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


def _check_common(x_like, tau, alpha, surrogate):
    torch._check(x_like.dim() >= 1 and x_like.shape[0] >= 1,
                 lambda: f"x_seq must be [T, ...] with at least one time step, got shape {tuple(x_like.shape)}")
    torch._check(x_like.dtype.is_floating_point,
                 lambda: f"x_seq must be a floating-point tensor, got {x_like.dtype}")
    torch._check(tau > 0, lambda: f"tau must be a finite number > 0, got {tau}")
    torch._check(alpha > 0, lambda: f"alpha must be a finite number > 0, got {alpha}")
    torch._check(surrogate in SURROGATES, lambda: f"surrogate must be one of {SURROGATES}, got {surrogate!r}")


@torch.library.register_fake("tna::lif_fwd")
def _lif_fwd_fake(x_seq, v0, tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset,
                  surrogate, alpha, save_h):
    _check_common(x_seq, tau, alpha, surrogate)
    acc = state_dtype(x_seq.dtype)
    if v0 is not None:
        torch._check(v0.dtype == acc, lambda: f"v0 must have dtype {acc}, got {v0.dtype}")
        torch._check(v0.shape == x_seq.shape[1:],
                     lambda: f"v0 must have shape {tuple(x_seq.shape[1:])}, got {tuple(v0.shape)}")
    h_shape = x_seq.shape if save_h else (0,)
    return (torch.empty_like(x_seq, memory_format=torch.contiguous_format),
            x_seq.new_empty(x_seq.shape[1:], dtype=acc),
            x_seq.new_empty(h_shape, dtype=acc))


@torch.library.register_fake("tna::lif_bwd")
def _lif_bwd_fake(grad_spikes, grad_v_last, h_seq, tau, decay_input, v_threshold, v_reset,
                  soft_reset, detach_reset, surrogate, alpha):
    _check_common(h_seq, tau, alpha, surrogate)
    torch._check(grad_spikes.shape == h_seq.shape,
                 lambda: f"grad_spikes must have shape {tuple(h_seq.shape)}, got {tuple(grad_spikes.shape)}")
    torch._check(h_seq.dtype == state_dtype(grad_spikes.dtype),
                 lambda: f"h_seq must have dtype {state_dtype(grad_spikes.dtype)}, got {h_seq.dtype}")
    if grad_v_last is not None:
        torch._check(grad_v_last.shape == h_seq.shape[1:],
                     lambda: f"grad_v_last must have shape {tuple(h_seq.shape[1:])}, got {tuple(grad_v_last.shape)}")
    return (torch.empty_like(grad_spikes, memory_format=torch.contiguous_format),
            h_seq.new_empty(h_seq.shape[1:]))


@torch.library.register_fake("tna::lif_bwd_recompute")
def _lif_bwd_recompute_fake(grad_spikes, grad_v_last, x_seq, v0, tau, decay_input, v_threshold, v_reset,
                            soft_reset, detach_reset, surrogate, alpha):
    _check_common(x_seq, tau, alpha, surrogate)
    acc = state_dtype(x_seq.dtype)
    torch._check(grad_spikes.shape == x_seq.shape,
                 lambda: f"grad_spikes must have shape {tuple(x_seq.shape)}, got {tuple(grad_spikes.shape)}")
    torch._check(grad_spikes.dtype == x_seq.dtype,
                 lambda: f"grad_spikes must have dtype {x_seq.dtype}, got {grad_spikes.dtype}")
    for name, t in (("v0", v0), ("grad_v_last", grad_v_last)):
        if t is not None:
            torch._check(t.shape == x_seq.shape[1:],
                         lambda: f"{name} must have shape {tuple(x_seq.shape[1:])}, got {tuple(t.shape)}")
            torch._check(t.dtype == acc, lambda: f"{name} must have dtype {acc}, got {t.dtype}")
    return (torch.empty_like(grad_spikes, memory_format=torch.contiguous_format),
            x_seq.new_empty(x_seq.shape[1:] if v0 is not None else (0,), dtype=acc))


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

if HAS_TRITON:
    from ..triton import lif as _triton_lif

    torch.library.register_kernel("tna::lif_fwd", "cuda", _triton_lif.lif_fwd)
    torch.library.register_kernel("tna::lif_bwd", "cuda", _triton_lif.lif_bwd)
    torch.library.register_kernel("tna::lif_bwd_recompute", "cuda", _triton_lif.lif_bwd_recompute)
    CUDA_BACKENDS["lif_fwd"] = CUDA_BACKENDS["lif_bwd"] = "triton"
    CUDA_BACKENDS["lif_bwd_recompute"] = "triton (unfused)"
