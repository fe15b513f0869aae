"""The twin loss family: tna::twin_loss_fwd / tna::twin_loss_bwd / tna::twin_loss (schemas, CPU
kernels on the native core, fake kernels, the one autograd, the CUDA backends) and the public loss
functions ``twin_loss``, ``kd_loss`` and ``dml_loss`` (re-exported by :mod:`tna_kernels.functional`).

The forward op returns the loss, its three unweighted parts and both logit gradients for
grad_output = 1 (computed in the same fused pass). Autograd (``register_autograd`` on
tna::twin_loss_fwd, the family's only autograd) saves those two gradients and backward only scales
them by grad_output (tna::twin_loss_bwd: one elementwise pass, no host sync), or with
grad_output = 1 on the CPU hands the saved gradients back as they are. ``parts`` and the gradient
outputs are non-differentiable (logging / internal), and double backward is not supported (the
saved gradients carry no graph).

tna::twin_loss, what :func:`twin_loss` calls, is CompositeImplicitAutograd: it decides which
gradients are needed (grad mode, requires_grad, the detach flags) and calls tna::twin_loss_fwd, so
it differentiates through that op's autograd; there is no second autograd for the loss.

Per-call cost of that autograd (the C++ autograd node it replaces cost next to nothing): on the
2-core development VM, forward+backward of ``twin_loss`` at B = 256, C = 10 takes ~140-200 us of
CPU time against ~60-80 us with the C++ node, at B = 1024, C = 100 (one thread) ~480 against
~310 us. The floor is torch's: register_autograd on an op with this 11-argument schema and a
kernel that does nothing costs ~100-125 us per forward+backward (a 2-argument schema ~70 us, a
plain autograd.Function ~40 us); torch._library.utils.fill_defaults alone, run on every forward
to hand setup_context the inputs, takes ~38 us (it rebuilds FunctionSchema.arguments on each of
its 12 reads)."""

import math

import torch
from torch import Tensor

from .. import reference as _reference
from .._utils import HAS_TRITON, check, state_dtype
from .._utils import check_device as _check_device
from ..formats import MSE_REDUCTIONS
from . import CUDA_BACKENDS, register_cuda
from ._native import LIB, C, dtype_code, dtype_str, shape_str, threads

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
# The loss with its autograd: (loss, parts) of twin_loss_fwd, whose autograd it uses (a
# CompositeImplicitAutograd op, below); gradients reach the logits that require grad unless
# detach_base / detach_twin.
LIB.define(
    "twin_loss(Tensor logits_base, Tensor logits_twin, Tensor target, float ce_weight_base, float "
    "ce_weight_twin, float mse_weight, int mse_reduction, float label_smoothing, int ignore_index, bool "
    "detach_base, bool detach_twin) -> (Tensor, Tensor)")


# ---- CPU kernels (csrc/cpu/twin_loss.cpp) --------------------------------------------------------
# Shapes, dtypes and devices are checked here with the messages the C++ checks used to give; the
# scalar arguments and the target values are checked by the native kernel before it writes.

# c10's names of the dtypes, which the op-level messages use ("target must have dtype Long").


def _fail(msg: str):
    raise RuntimeError(msg)


def _check_cpu(t: Tensor, name: str) -> None:
    if not t.is_cpu:
        _fail(f"{name} must be a CPU tensor, got {t.device}")


def _check_dtype(t: Tensor, name: str, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        _fail(f"{name} must have dtype {dtype_str(dtype)}, got {dtype_str(t.dtype)}")


def _check_floating(t: Tensor, name: str) -> None:
    if not t.is_floating_point():
        _fail(f"{name} must be a floating-point tensor, got {dtype_str(t.dtype)}")


# opmath dtype (loss, parts, grad_loss) and dtype code of each logits dtype
_ACC = {dt: state_dtype(dt) for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
_CODES = {dt: dtype_code(dt) for dt in _ACC}
_EMPTY = (0,)


def _check_fwd_tensors(a: Tensor, b: Tensor, y: Tensor) -> None:
    """Raises the error for the first bad tensor argument of twin_loss_fwd (the C++ checks' order)."""
    _check_cpu(a, "logits_base")
    _check_cpu(b, "logits_twin")
    _check_cpu(y, "target")
    _check_floating(a, "logits_base")
    if a.dtype not in _ACC:
        raise TypeError(f"dtype {a.dtype} is not supported by the tna_kernels CPU kernels")
    shape = a.shape
    if len(shape) != 2:
        _fail(f"logits_base must be a 2-D [batch, classes] tensor, got shape {shape_str(shape)}")
    if shape[1] < 1:
        _fail(f"logits_base must have at least one class, got shape {shape_str(shape)}")
    _check_dtype(b, "logits_twin", a.dtype)
    if b.shape != shape:
        _fail(f"logits_twin must have shape {shape_str(shape)}, got {shape_str(b.shape)}")
    _check_dtype(y, "target", torch.int64)
    if y.shape != shape[:1]:
        _fail(f"target must have shape [{shape[0]}], got {shape_str(y.shape)}")


def _twin_loss_fwd_cpu(logits_base, logits_twin, target, ce_weight_base, ce_weight_twin, mse_weight,
                       mse_reduction, label_smoothing, ignore_index, need_grad_base, need_grad_twin):
    a, b, y = logits_base, logits_twin, target
    dtype, shape = a.dtype, a.shape
    # one test for the usual case (this runs on every training step); the details only on failure
    if not (dtype in _ACC and len(shape) == 2 and shape[1] >= 1 and b.dtype == dtype and b.shape == shape
            and y.dtype == torch.int64 and y.shape == shape[:1] and a.is_cpu and b.is_cpu and y.is_cpu):
        _check_fwd_tensors(a, b, y)
    a, b, y = a.contiguous(), b.contiguous(), y.contiguous()
    acc = _ACC[dtype]
    loss = torch.empty((), dtype=acc)
    parts = torch.empty(3, dtype=acc)
    grad_a = torch.empty_like(a) if need_grad_base else a.new_empty(_EMPTY)
    grad_b = torch.empty_like(a) if need_grad_twin else a.new_empty(_EMPTY)
    C.twin_loss_fwd(_CODES[dtype], a.data_ptr(), b.data_ptr(), y.data_ptr(), shape[0], shape[1], ce_weight_base,
                    ce_weight_twin, mse_weight, mse_reduction, label_smoothing, ignore_index,
                    loss.data_ptr(), parts.data_ptr(), grad_a.data_ptr() if need_grad_base else 0,
                    grad_b.data_ptr() if need_grad_twin else 0, threads())
    return loss, parts, grad_a, grad_b


def _twin_loss_bwd_cpu(grad_loss, grad_base, grad_twin):
    _check_cpu(grad_loss, "grad_loss")
    _check_cpu(grad_base, "grad_base")
    _check_cpu(grad_twin, "grad_twin")
    if grad_loss.dim() != 0:
        _fail(f"grad_loss must be a 0-dim tensor, got shape {shape_str(grad_loss.shape)}")
    dtype = grad_base.dtype
    if dtype not in _ACC:
        _check_floating(grad_base, "grad_base")
        raise TypeError(f"dtype {dtype} is not supported by the tna_kernels CPU kernels")
    _check_dtype(grad_twin, "grad_twin", dtype)
    _check_dtype(grad_loss, "grad_loss", _ACC[dtype])
    ga, gb = grad_base.contiguous(), grad_twin.contiguous()
    out_a, out_b = torch.empty_like(ga), torch.empty_like(gb)
    C.twin_loss_bwd(_CODES[dtype], grad_loss.data_ptr(), ga.data_ptr(), gb.data_ptr(), ga.numel(),
                    gb.numel(), out_a.data_ptr(), out_b.data_ptr(), threads())
    return out_a, out_b


LIB.impl("twin_loss_fwd", _twin_loss_fwd_cpu, "CPU")
LIB.impl("twin_loss_bwd", _twin_loss_bwd_cpu, "CPU")


@torch.library.register_fake("tna::twin_loss_fwd")
def _twin_loss_fwd_fake(logits_base, logits_twin, target, ce_weight_base, ce_weight_twin,
                        mse_weight, mse_reduction, label_smoothing, ignore_index, need_grad_base,
                        need_grad_twin):
    check(logits_base.dtype.is_floating_point,
                 lambda: f"logits_base must be a floating-point tensor, got {logits_base.dtype}")
    check(logits_base.dim() == 2,
                 lambda: "logits_base must be a 2-D [batch, classes] tensor, got shape "
                         f"{tuple(logits_base.shape)}")
    check(logits_twin.dtype == logits_base.dtype,
                 lambda: f"logits_twin must have dtype {logits_base.dtype}, got {logits_twin.dtype}")
    check(logits_twin.shape == logits_base.shape,
                 lambda: f"logits_twin must have shape {tuple(logits_base.shape)}, "
                         f"got {tuple(logits_twin.shape)}")
    check(target.dtype == torch.int64,
                 lambda: f"target must have dtype torch.int64, got {target.dtype}")
    check(target.shape == logits_base.shape[:1],
                 lambda: f"target must have shape {tuple(logits_base.shape[:1])}, got {tuple(target.shape)}")
    check(mse_reduction in (0, 1),
                 lambda: f"mse_reduction must be 0 ('mean') or 1 ('sum_over_batch'), got {mse_reduction}")
    acc = state_dtype(logits_base.dtype)

    def grad(need):
        shape = logits_base.shape if need else (0,)
        return logits_base.new_empty(shape)

    return (logits_base.new_empty((), dtype=acc), logits_base.new_empty((3,), dtype=acc),
            grad(need_grad_base), grad(need_grad_twin))


@torch.library.register_fake("tna::twin_loss_bwd")
def _twin_loss_bwd_fake(grad_loss, grad_base, grad_twin):
    check(grad_loss.dim() == 0,
                 lambda: f"grad_loss must be a 0-dim tensor, got shape {tuple(grad_loss.shape)}")
    check(grad_base.dtype.is_floating_point,
                 lambda: f"grad_base must be a floating-point tensor, got {grad_base.dtype}")
    check(grad_twin.dtype == grad_base.dtype,
                 lambda: f"grad_twin must have dtype {grad_base.dtype}, got {grad_twin.dtype}")
    check(grad_loss.dtype == state_dtype(grad_base.dtype),
                 lambda: f"grad_loss must have dtype {state_dtype(grad_base.dtype)}, got {grad_loss.dtype}")
    return (torch.empty_like(grad_base, memory_format=torch.contiguous_format),
            torch.empty_like(grad_twin, memory_format=torch.contiguous_format))


# ---- Autograd: register_autograd on tna::twin_loss_fwd (the family's only one) -------------------

def _setup_context(ctx, inputs, output):
    need_base, need_twin = inputs[9], inputs[10]
    _, parts, grad_base, grad_twin = output
    ctx.mark_non_differentiable(parts, grad_base, grad_twin)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the non-differentiable outputs
    ctx.need = (need_base, need_twin)
    ctx.save_for_backward(grad_base, grad_twin)


def _is_plain_one(t: Tensor) -> bool:
    """A real CPU tensor holding 1: no subclass (fake, functional, traced), no C++ functionalization
    and no dispatch mode around it, so that reading its value is safe and means what it says."""
    return (type(t) is Tensor and t.is_cpu and not torch._is_functional_tensor(t)
            and torch._C._len_torch_dispatch_stack() == 0 and t.item() == 1.0)


def _backward(ctx, grad_loss, _grad_parts, _grad_gb, _grad_gt):
    # create_graph=True would need the gradients' own graph, which the fused kernel does not keep
    if torch.is_grad_enabled():
        raise RuntimeError("tna_kernels twin_loss does not support double backward (create_graph=True); use "
                           "tna_kernels.reference.twin_loss for that")
    if grad_loss is None:  # the loss itself was not used (only parts): nothing flows back
        return (None,) * 11
    grad_base, grad_twin = ctx.saved_tensors
    need_base, need_twin = ctx.need
    if _is_plain_one(grad_loss):
        # loss.backward(): the saved gradients are the answer, handed back without a copy (with
        # retain_graph, an in-place change to a returned gradient is caught by the saved tensors'
        # version counter)
        gb, gt = grad_base, grad_twin
    else:
        gb, gt = torch.ops.tna.twin_loss_bwd(grad_loss, grad_base, grad_twin)
    gb = gb if need_base and ctx.needs_input_grad[0] else None
    gt = gt if need_twin and ctx.needs_input_grad[1] else None
    return gb, gt, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("tna::twin_loss_fwd", _backward, setup_context=_setup_context)


# ---- tna::twin_loss: a composition over twin_loss_fwd (CompositeImplicitAutograd) --------------
# (No fake kernel: a CompositeImplicitAutograd op decomposes into twin_loss_fwd, whose fake serves;
# torch.library refuses a fake for such an op.)

def _twin_loss_composite(logits_base, logits_twin, target, ce_weight_base, ce_weight_twin, mse_weight,
                         mse_reduction, label_smoothing, ignore_index, detach_base, detach_twin):
    # A detached input (detach_base / detach_twin, grad mode off, or no requires_grad) gets no
    # gradient buffer at all; the kernel skips it.
    grad_on = torch.is_grad_enabled()
    need_base = grad_on and not detach_base and logits_base.requires_grad
    need_twin = grad_on and not detach_twin and logits_twin.requires_grad
    if detach_base:
        logits_base = logits_base.detach()
    if detach_twin:
        logits_twin = logits_twin.detach()
    loss, parts, _, _ = torch.ops.tna.twin_loss_fwd(
        logits_base, logits_twin, target, ce_weight_base, ce_weight_twin, mse_weight, mse_reduction,
        label_smoothing, ignore_index, need_base, need_twin)
    return loss, parts


LIB.impl("twin_loss", _twin_loss_composite, "CompositeImplicitAutograd")


if HAS_TRITON:
    from ..triton import twin_loss as _triton_twin_loss

    register_cuda("twin_loss_fwd", _triton_twin_loss.twin_loss_fwd, "triton")
    register_cuda("twin_loss_bwd", _triton_twin_loss.twin_loss_bwd, "torch")  # one fused multiply per tensor
    CUDA_BACKENDS["twin_loss"] = "triton (via twin_loss_fwd)"  # composite over the two above


# ---- Public loss functions (re-exported by tna_kernels.functional) --------------------------------

def _check_number(name: str, value, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        bounds = "" if (lo, hi) == (-math.inf, math.inf) else f" in [{lo}, {hi}]"
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}")
    return float(value)


def _check_logits_pair(name_a: str, a, name_b: str, b) -> None:
    for name, x in ((name_a, a), (name_b, b)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.dim() != 2 or x.shape[1] < 1:
            raise ValueError(f"{name} must be a 2-D [batch, classes] tensor, got shape {tuple(x.shape)}")
    if b.shape != a.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")
    if b.dtype != a.dtype:
        raise TypeError(f"{name_b} must have the dtype of {name_a} ({a.dtype}), got {b.dtype}")
    if b.device != a.device:
        raise ValueError(f"{name_b} is on {b.device} but {name_a} is on {a.device}")
    _check_device(a)


def _check_target(target, logits: Tensor, ignore_index) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.dtype != torch.int64:
        raise TypeError(f"target must hold class indices with dtype torch.int64, got {target.dtype}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must have shape {tuple(logits.shape[:1])} (one class per row), "
                         f"got {tuple(target.shape)}")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but the logits are on {logits.device}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")


def _twin_loss_args(logits_base, logits_twin, target, mse_weight, ce_weight_base, ce_weight_twin,
                    mse_reduction, label_smoothing, ignore_index) -> tuple:
    """Checks the arguments of :func:`twin_loss`; returns tna::twin_loss's scalar arguments
    (ce_weight_base, ce_weight_twin, mse_weight, mse_reduction code, label_smoothing, ignore_index)."""
    _check_logits_pair("logits_base", logits_base, "logits_twin", logits_twin)
    _check_target(target, logits_base, ignore_index)
    mse_weight = _check_number("mse_weight", mse_weight)
    ce_weight_base = _check_number("ce_weight_base", ce_weight_base)
    ce_weight_twin = _check_number("ce_weight_twin", ce_weight_twin)
    label_smoothing = _check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    if mse_reduction not in MSE_REDUCTIONS:
        raise ValueError(f"mse_reduction must be one of {MSE_REDUCTIONS}, got {mse_reduction!r}")
    return (ce_weight_base, ce_weight_twin, mse_weight, MSE_REDUCTIONS.index(mse_reduction), label_smoothing,
            int(ignore_index))


def _kd_loss_args(student_logits, teacher_logits, target, temperature, alpha, label_smoothing,
                  ignore_index) -> tuple[float, float, float]:
    """Checks the arguments of :func:`kd_loss`; returns (temperature, alpha, label_smoothing)."""
    _check_logits_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    temperature = _check_number("temperature", temperature)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    alpha = _check_number("alpha", alpha, 0.0, 1.0)
    label_smoothing = _check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    if alpha != 1.0 or target is not None:
        if target is None:
            raise ValueError(f"target is required when alpha < 1 (alpha={alpha})")
        _check_target(target, student_logits, ignore_index)
    return temperature, alpha, label_smoothing


def _dml_loss_args(logits_a, logits_b, target, kl_weight, label_smoothing, ignore_index) -> tuple[float, float]:
    """Checks the arguments of :func:`dml_loss`; returns (kl_weight, label_smoothing)."""
    _check_logits_pair("logits_a", logits_a, "logits_b", logits_b)
    _check_target(target, logits_a, ignore_index)
    kl_weight = _check_number("kl_weight", kl_weight)
    label_smoothing = _check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    return kl_weight, label_smoothing


def twin_loss(logits_base: Tensor, logits_twin: Tensor, target: Tensor, *, mse_weight: float = 0.005,
              ce_weight_base: float = 1.0, ce_weight_twin: float = 1.0,
              mse_reduction: str = "sum_over_batch", label_smoothing: float = 0.0,
              ignore_index: int = -100, detach_twin: bool = False, detach_base: bool = False,
              return_parts: bool = False):
    """Fused Twin Network Augmentation loss, forward and both logit gradients in one pass:

        loss = ce_weight_base * CE(logits_base, target) + ce_weight_twin * CE(logits_twin, target)
               + mse_weight * MSE(logits_base, logits_twin)

    Args:
        logits_base, logits_twin: ``[B, C]`` logits of the base and the twin network, same shape,
            dtype (float32, bfloat16, float16 or float64) and device; any strides. Arithmetic runs
            in float32 for half/bf16 (float64 for float64); the gradients come back in the logits' dtype.
        target: ``[B]`` int64 class indices in ``[0, C)``, or ``ignore_index``. An index out of range
            is an error (raised by the CPU kernel; a device-side assert on CUDA).
        mse_weight: the λ of the MSE term. Default 0.005 with ``mse_reduction="sum_over_batch"``:
            the default of the TNA authors' code (``λ · MSELoss(reduction="sum")(a, b) / B``), so
            their published λ reproduces as is.
        ce_weight_base, ce_weight_twin: weights of the two cross-entropy terms (0 drops a term).
        mse_reduction: ``"sum_over_batch"`` (default): ``Σ_{i,j} (a - b)² / B`` (squared error summed
            over classes, averaged over the batch; the authors' convention); ``"mean"``:
            ``Σ (a - b)² / (B·C)``, ``F.mse_loss``'s default (for α values quoted with a mean MSE;
            λ_sum_over_batch = λ_mean / C gives the same loss). The MSE covers every row,
            including rows whose target is ``ignore_index`` (it does not read the target).
        label_smoothing: in ``[0, 1]``, as in ``F.cross_entropy`` (applied to both CE terms).
        ignore_index: target value whose rows are left out of both CE terms. Each CE is the mean
            over the N non-ignored rows; when N = 0 (all rows ignored) it is defined as 0, with a
            zero CE gradient (``F.cross_entropy`` would return NaN).
        detach_twin: treat ``logits_twin`` as a constant (as if ``logits_twin.detach()`` were
            passed): no gradient reaches the twin from any term. With a frozen twin this is
            offline logit matching (distillation from a same-size teacher). Its CE still appears
            in the loss value and in ``parts``; set ``ce_weight_twin=0`` to drop it.
        detach_base: the mirror case for ``logits_base``.
        return_parts: also return ``parts = [CE_base, CE_twin, MSE]`` (unweighted, detached, float32
            for half/bf16 logits) for logging; computed by the same pass at no extra cost.

    Returns:
        ``loss`` (0-dim, float32 for half/bf16 logits, else the logits' dtype), or
        ``(loss, parts)`` with ``return_parts``.

    The forward kernel writes both gradients for ``grad_output = 1`` into new buffers (the logits
    are never modified); backward multiplies them by ``grad_output``. A gradient is computed only
    where it is needed (grad mode on, the tensor requires grad, not detached). No host syncs.
    Double backward is not supported.
    """
    # The composition tna::twin_loss runs, called directly: one dispatcher hop fewer per call (its
    # only autograd is twin_loss_fwd's, which this goes through just the same).
    loss, parts = _twin_loss_composite(
        logits_base, logits_twin, target,
        *_twin_loss_args(logits_base, logits_twin, target, mse_weight, ce_weight_base, ce_weight_twin,
                         mse_reduction, label_smoothing, ignore_index), detach_base, detach_twin)
    return (loss, parts) if return_parts else loss


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor | None = None, *,
            temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0,
            ignore_index: int = -100) -> Tensor:
    """Hinton knowledge distillation (the KD baseline), teacher detached:

        alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student, target)

    Args:
        student_logits, teacher_logits: ``[B, C]``, same shape, dtype and device.
        target: ``[B]`` int64 class indices (``ignore_index`` rows leave the CE term); may be None
            only when ``alpha == 1`` (pure distillation).
        temperature: T > 0 (default 4). The T² factor keeps the soft-target gradient scale
            independent of T.
        alpha: weight of the distillation term in [0, 1] (default 0.9).
        label_smoothing, ignore_index: as in :func:`twin_loss` (CE term only).

    KL is summed over classes and averaged over all B rows; CE is the mean over non-ignored rows
    (0 if none). Pure-torch composition (``tna_kernels.reference.kd_loss``), float32 arithmetic
    for half/bf16 logits.
    """
    temperature, alpha, label_smoothing = _kd_loss_args(student_logits, teacher_logits, target, temperature,
                                                        alpha, label_smoothing, ignore_index)
    return _reference.kd_loss(student_logits, teacher_logits, target, temperature=temperature,
                              alpha=alpha, label_smoothing=label_smoothing, ignore_index=ignore_index)


def dml_loss(logits_a: Tensor, logits_b: Tensor, target: Tensor, *, kl_weight: float = 1.0,
             label_smoothing: float = 0.0, ignore_index: int = -100) -> Tensor:
    """Deep mutual learning (the DML baseline of the TNA authors' code), for both networks at once:

        CE(a) + CE(b) + kl_weight · (KL(softmax(b) ‖ softmax(a)) + KL(softmax(a) ‖ softmax(b)))

    Args:
        logits_a, logits_b: ``[B, C]`` logits of the two networks, same shape, dtype and device.
        target: ``[B]`` int64 class indices or ``ignore_index``.
        kl_weight: weight of the symmetric KL (default 1, no temperature, as the authors).
        label_smoothing, ignore_index: as in :func:`twin_loss`.

    No detach: each KL term sends gradient into both networks. KL is summed over classes and
    averaged over all rows; CE is the mean over non-ignored rows (0 if none). Pure-torch
    composition (``tna_kernels.reference.dml_loss``).
    """
    kl_weight, label_smoothing = _dml_loss_args(logits_a, logits_b, target, kl_weight, label_smoothing,
                                                ignore_index)
    return _reference.dml_loss(logits_a, logits_b, target, kl_weight=kl_weight,
                               label_smoothing=label_smoothing, ignore_index=ignore_index)
