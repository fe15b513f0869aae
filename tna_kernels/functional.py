"""User-facing functions. Each validates its arguments (errors name the argument), never modifies
the caller's tensors, and calls a tna:: op, which runs the C++ kernel on CPU tensors and the Triton
kernel on CUDA tensors."""

import math

import torch
from torch import Tensor

from . import reference as _reference
from ._utils import HAS_TRITON, state_dtype
from .ops.ternary import FORMAT_VERSION as TERNARY_FORMAT_VERSION
from .ops.ternary import PackedTernary
from .reference import MSE_REDUCTIONS, SURROGATES

__all__ = ["lif", "tau_from_beta", "SURROGATES",
           "TERNARY_FORMAT_VERSION", "PackedTernary", "ternarize", "ternary_ste", "quantize_pack",
           "pack_ternary", "unpack_ternary", "pack_spikes", "unpack_spikes", "ternary_linear",
           "spike_ternary_linear", "ternary_conv2d", "spike_ternary_conv2d", "lif_pack",
           "spike_ternary_conv2d_lif",
           "twin_loss", "kd_loss", "dml_loss", "MSE_REDUCTIONS"]


def tau_from_beta(beta: float) -> float:
    """Time constant whose LIF decay ``1 - 1/tau`` equals the decay factor ``beta`` (0 <= beta < 1)."""
    if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    return 1.0 / (1.0 - beta)


def _check_device(x: Tensor) -> None:
    if x.device.type == "cuda" and not HAS_TRITON:
        raise RuntimeError("CUDA tensors need Triton for the tna GPU kernels: pip install triton")


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


# ---- Ternary weights (packed format v1): defined with their ops in tna_kernels.ops.ternary ----------

from .ops.ternary import (  # noqa: E402  (re-exported)
    pack_spikes,
    pack_ternary,
    quantize_pack,
    spike_ternary_conv2d,
    spike_ternary_linear,
    ternarize,
    ternary_conv2d,
    ternary_linear,
    ternary_ste,
    unpack_spikes,
    unpack_ternary,
)


def _lif_pack_args(tau, decay_input, v_threshold, v_reset, surrogate, alpha, beta) -> tuple:
    tau, decay_input = _lif_constants(tau, decay_input, v_threshold, v_reset, surrogate, alpha, beta)
    return tau, decay_input, float(v_threshold), 0.0 if v_reset is None else float(v_reset), v_reset is None


def lif_pack(x_seq: Tensor, *, tau: float | None = None, decay_input: bool | None = None,
             v_threshold: float = 1.0, v_reset: float | None = 0.0, detach_reset: bool = False,
             surrogate: str = "atan", alpha: float = 2.0, beta: float | None = None) -> Tensor:
    """Inference LIF with bit-packed output: ``x_seq`` float32 ``[T, ..., C]`` (channels last) →
    int64 ``[T, ..., ceil(C/64)]``, equal to ``pack_spikes(lif(x_seq, ...), dim=-1)`` without the
    float spike tensor. Neuron arguments as in :func:`lif` (the membrane starts at the reset value);
    ``detach_reset``, ``surrogate`` and ``alpha`` only shape gradients, so they are accepted (a
    layer's ``neuron.kwargs`` can be passed as is) and have no effect here. No autograd."""
    if not isinstance(x_seq, Tensor) or x_seq.dtype != torch.float32:
        raise TypeError(f"x_seq must be a float32 torch.Tensor, got {getattr(x_seq, 'dtype', type(x_seq))}")
    if x_seq.dim() < 2 or x_seq.shape[0] < 1:
        raise ValueError(f"x_seq must be [T, ..., C] with T >= 1, got shape {tuple(x_seq.shape)}")
    _check_device(x_seq)
    return torch.ops.tna.lif_pack(x_seq, *_lif_pack_args(tau, decay_input, v_threshold, v_reset, surrogate,
                                                         alpha, beta))


from .ops.ternary import spike_ternary_conv2d_lif  # noqa: E402  (re-exported; the LIF conv of packed inference)


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
    _check_logits_pair("logits_base", logits_base, "logits_twin", logits_twin)
    _check_target(target, logits_base, ignore_index)
    mse_weight = _check_number("mse_weight", mse_weight)
    ce_weight_base = _check_number("ce_weight_base", ce_weight_base)
    ce_weight_twin = _check_number("ce_weight_twin", ce_weight_twin)
    label_smoothing = _check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    if mse_reduction not in MSE_REDUCTIONS:
        raise ValueError(f"mse_reduction must be one of {MSE_REDUCTIONS}, got {mse_reduction!r}")
    loss, parts = torch.ops.tna.twin_loss(logits_base, logits_twin, target, ce_weight_base, ce_weight_twin,
                                          mse_weight, MSE_REDUCTIONS.index(mse_reduction), label_smoothing,
                                          int(ignore_index), detach_base, detach_twin)
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
    _check_logits_pair("logits_a", logits_a, "logits_b", logits_b)
    _check_target(target, logits_a, ignore_index)
    kl_weight = _check_number("kl_weight", kl_weight)
    label_smoothing = _check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    return _reference.dml_loss(logits_a, logits_b, target, kl_weight=kl_weight,
                               label_smoothing=label_smoothing, ignore_index=ignore_index)
