"""tna::twin_loss_fwd / tna::twin_loss_bwd: fake kernels, autograd, and the CUDA backends.

The forward op returns the loss, its three unweighted parts and both logit gradients for
grad_output = 1 (computed in the same fused pass). Autograd saves those two gradients and the
backward op only scales them by grad_output (one elementwise pass, no host sync). ``parts`` and the
gradient outputs are marked non-differentiable (logging / internal), and double backward is not
supported (the saved gradients carry no graph).

tna::twin_loss is what ``functional.twin_loss`` calls: the same autograd written in C++
(csrc/autograd/twin_loss.cpp), one dispatcher call per forward and per backward instead of ~60 us
of Python autograd.Function glue. The ``register_autograd`` of the fwd op below stays for direct callers of the
fwd op."""

import torch

from .._utils import HAS_TRITON, state_dtype
from . import CUDA_BACKENDS
from ._native import LIB


# The tna:: schemas of this family (the only place they are written).
# Fused twin loss: wa CE(logits_base) + wb CE(logits_twin) + lam MSE(logits_base, logits_twin),
# loss and both logit gradients in one fused pass (formulas in csrc/cpu/twin_loss.cpp).
# logits_*: [B, C] floating, same dtype; target: [B] int64, a class or ignore_index.
# mse_reduction: 0 = mean over B*C elements (F.mse_loss), 1 = sum over classes / B.
# Returns loss (0-dim) and parts [3] = (CE_base, CE_twin, MSE), unweighted, both float32 for
# half/bf16 logits (else the logits' dtype); grad_base / grad_twin: dL/dlogits for
# grad_output = 1 in the logits' dtype, or empty tensors where need_grad_* is false.
LIB.define(
    "twin_loss_fwd(Tensor logits_base, Tensor logits_twin, Tensor target, float ce_weight_base, float "
    "ce_weight_twin, float mse_weight, int mse_reduction, float label_smoothing, int ignore_index, bool "
    "need_grad_base, bool need_grad_twin) -> (Tensor, Tensor, Tensor, Tensor)")
# Backward of twin_loss_fwd: (grad_loss * grad_base, grad_loss * grad_twin) in the logits' dtype.
# grad_loss: 0-dim in the loss dtype; an empty grad_base / grad_twin gives an empty result.
LIB.define("twin_loss_bwd(Tensor grad_loss, Tensor grad_base, Tensor grad_twin) -> (Tensor, Tensor)")
# The loss with its autograd (csrc/autograd/twin_loss.cpp): (loss, parts) of twin_loss_fwd;
# gradients reach the logits that require grad unless detach_base / detach_twin.
LIB.define(
    "twin_loss(Tensor logits_base, Tensor logits_twin, Tensor target, float ce_weight_base, float "
    "ce_weight_twin, float mse_weight, int mse_reduction, float label_smoothing, int ignore_index, bool "
    "detach_base, bool detach_twin) -> (Tensor, Tensor)")


@torch.library.register_fake("tna::twin_loss_fwd")
def _twin_loss_fwd_fake(logits_base, logits_twin, target, ce_weight_base, ce_weight_twin,
                        mse_weight, mse_reduction, label_smoothing, ignore_index, need_grad_base,
                        need_grad_twin):
    torch._check(logits_base.dtype.is_floating_point,
                 lambda: f"logits_base must be a floating-point tensor, got {logits_base.dtype}")
    torch._check(logits_base.dim() == 2,
                 lambda: "logits_base must be a 2-D [batch, classes] tensor, got shape "
                         f"{tuple(logits_base.shape)}")
    torch._check(logits_twin.dtype == logits_base.dtype,
                 lambda: f"logits_twin must have dtype {logits_base.dtype}, got {logits_twin.dtype}")
    torch._check(logits_twin.shape == logits_base.shape,
                 lambda: f"logits_twin must have shape {tuple(logits_base.shape)}, "
                         f"got {tuple(logits_twin.shape)}")
    torch._check(target.dtype == torch.int64,
                 lambda: f"target must have dtype torch.int64, got {target.dtype}")
    torch._check(target.shape == logits_base.shape[:1],
                 lambda: f"target must have shape {tuple(logits_base.shape[:1])}, got {tuple(target.shape)}")
    torch._check(mse_reduction in (0, 1),
                 lambda: f"mse_reduction must be 0 ('mean') or 1 ('sum_over_batch'), got {mse_reduction}")
    acc = state_dtype(logits_base.dtype)

    def grad(need):
        shape = logits_base.shape if need else (0,)
        return logits_base.new_empty(shape)

    return (logits_base.new_empty((), dtype=acc), logits_base.new_empty((3,), dtype=acc),
            grad(need_grad_base), grad(need_grad_twin))


@torch.library.register_fake("tna::twin_loss_bwd")
def _twin_loss_bwd_fake(grad_loss, grad_base, grad_twin):
    torch._check(grad_loss.dim() == 0,
                 lambda: f"grad_loss must be a 0-dim tensor, got shape {tuple(grad_loss.shape)}")
    torch._check(grad_base.dtype.is_floating_point,
                 lambda: f"grad_base must be a floating-point tensor, got {grad_base.dtype}")
    torch._check(grad_twin.dtype == grad_base.dtype,
                 lambda: f"grad_twin must have dtype {grad_base.dtype}, got {grad_twin.dtype}")
    torch._check(grad_loss.dtype == state_dtype(grad_base.dtype),
                 lambda: f"grad_loss must have dtype {state_dtype(grad_base.dtype)}, got {grad_loss.dtype}")
    return (torch.empty_like(grad_base, memory_format=torch.contiguous_format),
            torch.empty_like(grad_twin, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    need_base, need_twin = inputs[9], inputs[10]
    _, parts, grad_base, grad_twin = output
    ctx.mark_non_differentiable(parts, grad_base, grad_twin)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the non-differentiable outputs
    ctx.need = (need_base, need_twin)
    ctx.save_for_backward(grad_base, grad_twin)


def _backward(ctx, grad_loss, _grad_parts, _grad_gb, _grad_gt):
    grad_base, grad_twin = ctx.saved_tensors
    need_base, need_twin = ctx.need
    if grad_loss is None:  # the loss itself was not used (only parts): nothing flows back
        return (None,) * 11
    gb, gt = torch.ops.tna.twin_loss_bwd(grad_loss, grad_base, grad_twin)
    gb = gb if need_base and ctx.needs_input_grad[0] else None
    gt = gt if need_twin and ctx.needs_input_grad[1] else None
    return gb, gt, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("tna::twin_loss_fwd", _backward, setup_context=_setup_context)


@torch.library.register_fake("tna::twin_loss")
def _twin_loss_fake(logits_base, logits_twin, target, ce_weight_base, ce_weight_twin, mse_weight,
                    mse_reduction, label_smoothing, ignore_index, detach_base, detach_twin):
    loss, parts, _, _ = _twin_loss_fwd_fake(logits_base, logits_twin, target, ce_weight_base, ce_weight_twin,
                                            mse_weight, mse_reduction, label_smoothing, ignore_index, False, False)
    return loss, parts


if HAS_TRITON:
    from ..triton import twin_loss as _triton_twin_loss

    torch.library.register_kernel("tna::twin_loss_fwd", "cuda", _triton_twin_loss.twin_loss_fwd)
    torch.library.register_kernel("tna::twin_loss_bwd", "cuda", _triton_twin_loss.twin_loss_bwd)
    CUDA_BACKENDS["twin_loss_fwd"] = "triton"
    CUDA_BACKENDS["twin_loss_bwd"] = "torch"  # one fused elementwise multiply per tensor
    CUDA_BACKENDS["twin_loss"] = "triton (C++ glue)"  # C++ autograd over the two above
