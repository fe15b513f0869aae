"""User-facing functions. Each validates its arguments (errors name the argument), never modifies
the caller's tensors, and calls a tna:: op, which runs the C++ kernel on CPU tensors and the Triton
kernel on CUDA tensors."""

import math

import torch
from torch import Tensor

from . import reference as _reference
from ._utils import HAS_TRITON
from .ops.ternary import FORMAT_VERSION as TERNARY_FORMAT_VERSION
from .ops.ternary import PackedTernary, conv_geometry
from .reference import MSE_REDUCTIONS, SURROGATES, TERNARY_METHODS

__all__ = ["lif", "tau_from_beta", "SURROGATES",
           "TERNARY_FORMAT_VERSION", "PackedTernary", "ternarize", "ternary_ste", "quantize_pack",
           "pack_ternary", "unpack_ternary", "pack_spikes", "unpack_spikes", "ternary_linear",
           "spike_ternary_linear", "ternary_conv2d", "spike_ternary_conv2d", "lif_pack",
           "spike_ternary_conv2d_lif",
           "twin_loss", "kd_loss", "dml_loss", "MSE_REDUCTIONS"]


from .ops.lif import _lif_hyper, lif, tau_from_beta  # noqa: E402, F401  (the LIF family lives in ops/lif.py)


def _check_device(x: Tensor) -> None:
    if x.device.type == "cuda" and not HAS_TRITON:
        raise RuntimeError("CUDA tensors need Triton for the tna GPU kernels: pip install triton")


# ---- Ternary weights (packed format v1: tna_kernels.ops.ternary, docs/FORMAT.md) ----------------

def _check_method(method: str, per_channel: bool) -> None:
    if method not in TERNARY_METHODS:
        raise ValueError(f"method must be one of {TERNARY_METHODS}, got {method!r}")
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be a bool, got {type(per_channel).__name__}")


def _check_weight(w: Tensor, name: str = "w") -> None:
    if not isinstance(w, Tensor) or not w.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {getattr(w, 'dtype', type(w))}")
    if w.dim() < 2 or w.numel() == 0:
        raise ValueError(f"{name} must have shape [out_channels, ...] with >= 2 non-empty dims, "
                         f"got {tuple(w.shape)}")


def ternarize(w: Tensor, *, method: str = "twn", per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Ternary codes and scales of a weight (dim 0 = output channel).

    Args:
        w: float weight ``[N, ...]`` (``nn.Linear`` ``[N, K]`` or ``nn.Conv2d`` ``[N, C, kh, kw]``).
        method: ``"twn"`` (threshold 0.7 mean|w|, scale = mean |w| above it) or ``"absmean"``
            (BitNet: round(w / (mean|w| + 1e-5)) clipped to [-1, 1], scale = mean|w|).
        per_channel: one scale per output channel (default) or one for the tensor (repeated N times).

    Returns:
        ``(codes, scale)``: int8 codes shaped like ``w`` and float32 ``scale`` ``[N]``; the weight
        is ``codes * scale[:, None, ...]``. Formulas: :func:`tna_kernels.reference.ternarize`.
    """
    _check_weight(w)
    _check_method(method, per_channel)
    codes, scale, _ = torch.ops.tna.ternarize(w.detach(), method, per_channel, False)
    return codes, scale


class _TernarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, method, per_channel, clip):
        codes, scale, _ = torch.ops.tna.ternarize(w.detach(), method, per_channel, False)
        ctx.clip = clip
        if clip is not None:
            ctx.save_for_backward(w)
        return codes.to(w.dtype) * scale.to(w.dtype).reshape((-1,) + (1,) * (w.dim() - 1))

    @staticmethod
    def backward(ctx, grad):
        if ctx.clip is not None:
            (w,) = ctx.saved_tensors
            grad = grad * (w.abs() <= ctx.clip).to(grad.dtype)
        return grad, None, None, None


def ternary_ste(w: Tensor, *, method: str = "twn", per_channel: bool = True,
                clip: float | None = None) -> Tensor:
    """Ternarised weight ``codes * scale`` (dtype and shape of ``w``) for training the latent float
    weights with the straight-through estimator: ``grad_w = grad_out`` (identity), or
    ``grad_out * 1[|w| <= clip]`` with ``clip`` (e.g. 1.0). The scale is a constant in backward.
    ``method``/``per_channel`` as in :func:`ternarize`."""
    _check_weight(w)
    _check_method(method, per_channel)
    if clip is not None and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be None or a finite number > 0, got {clip!r}")
    return _TernarySTE.apply(w, method, per_channel, None if clip is None else float(clip))


def _to_pack_layout(t: Tensor, name: str) -> Tensor:
    """Linear [N, K] stays; conv [N, C, kh, kw] -> [N, kh, kw, C] (packing runs over channels)."""
    if t.dim() == 4:
        return t.permute(0, 2, 3, 1)
    if t.dim() == 2:
        return t
    raise ValueError(f"{name} must be a linear weight [N, K] or a conv2d weight [N, C, kh, kw], "
                     f"got shape {tuple(t.shape)}")


def _vector(t: Tensor | None, n: int, name: str) -> Tensor | None:
    if t is None:
        return None
    if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D tensor of {n} values (one per output channel), "
                         f"got {tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    return t.detach().to(torch.float32).contiguous()


def quantize_pack(w: Tensor, *, method: str = "twn", per_channel: bool = True,
                  bias: Tensor | None = None) -> PackedTernary:
    """Ternarise and pack in one fused kernel call: float weight (``[N, K]`` or ``[N, C, kh, kw]``)
    -> :class:`PackedTernary` (format v1). ``bias`` (optional, ``[N]``) is stored as float32."""
    _check_weight(w)
    _check_method(method, per_channel)
    wl = _to_pack_layout(w.detach(), "w")
    _, scale, words = torch.ops.tna.ternarize(wl, method, per_channel, True)
    return PackedTernary(words, scale, wl.shape[-1], _vector(bias, w.shape[0], "bias"))


def pack_ternary(codes: Tensor, scale: Tensor | None = None, bias: Tensor | None = None) -> PackedTernary:
    """Pack int8 codes in {-1, 0, +1} (linear ``[N, K]`` or conv ``[N, C, kh, kw]``) into format v1.

    ``scale`` (``[N]``, default ones) and ``bias`` (``[N]`` or None) are stored as float32. Raises
    on any other code value. The input is never modified."""
    if not isinstance(codes, Tensor) or codes.dtype != torch.int8:
        got = getattr(codes, "dtype", type(codes))
        raise TypeError(f"codes must be an int8 tensor of -1/0/+1, got {got}")
    cl = _to_pack_layout(codes, "codes")
    n = codes.shape[0]
    scale = torch.ones(n, device=codes.device) if scale is None else _vector(scale, n, "scale")
    return PackedTernary(torch.ops.tna.pack_ternary(cl), scale, cl.shape[-1], _vector(bias, n, "bias"))


def unpack_ternary(packed: PackedTernary) -> Tensor:
    """int8 codes of a :class:`PackedTernary`, in torch layout (``[N, K]`` or ``[N, C, kh, kw]``)."""
    if not isinstance(packed, PackedTernary):
        raise TypeError(f"packed must be a PackedTernary, got {type(packed).__name__}")
    return packed.codes()


def pack_spikes(spikes: Tensor, dim: int = -1) -> Tensor:
    """Bit-pack 0/1 spikes along ``dim`` (moved last): ``[..., K] -> int64 [..., ceil(K/64)]``.

    For conv inputs ``[B, C, H, W]`` use ``dim=1``: the result is ``[B, H, W, CW]``, what
    :func:`spike_ternary_conv2d` takes. Any real or bool dtype; raises on values other than 0 and 1."""
    if not isinstance(spikes, Tensor):
        raise TypeError(f"spikes must be a torch.Tensor, got {type(spikes).__name__}")
    if spikes.dim() == 0:
        raise ValueError("spikes must have at least one dimension")
    return torch.ops.tna.pack_spikes(spikes, dim)


def unpack_spikes(bits: Tensor, K: int, dim: int = -1, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`pack_spikes`: ``[..., KW] -> [..., K]`` in ``dtype``, the unpacked axis
    moved to ``dim``."""
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be an int >= 1, got {K!r}")
    return torch.ops.tna.unpack_spikes(bits, K).to(dtype).movedim(-1, dim)


def _check_packed(weight, conv: bool) -> None:
    if not isinstance(weight, PackedTernary):
        raise TypeError(f"weight must be a PackedTernary (functional.pack_ternary / quantize_pack), "
                        f"got {type(weight).__name__}")
    if weight.is_conv != conv:
        kind = "a conv2d weight [N, kh, kw, 2, CW]" if conv else "a linear weight [N, 2, KW]"
        raise ValueError(f"weight must be {kind}, got words of shape {tuple(weight.words.shape)}")
    if weight.scale.requires_grad or (weight.bias is not None and weight.bias.requires_grad):
        raise ValueError("weight.scale must not require grad: the packed ops differentiate w.r.t. the "
                         "input (and bias) only; train latent weights with ternary_ste")


_DIRECT_MAX_ROWS = 12  # kDirectMaxM in csrc/cpu/ternary_linear.cpp


def _use_dequantized(x: Tensor, weight: PackedTernary) -> bool:
    """float32 on CPU, eager: torch's GEMM / conv on the weight's cached float copy
    (:meth:`PackedTernary.float_codes` / :meth:`PackedTernary.dequantized`), the same maths as the
    tna op, which decodes on every call. Weights only used with spike inputs never build it."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.words.device.type == "cpu"
            and not torch.compiler.is_compiling())


def ternary_linear(x: Tensor, weight: PackedTernary) -> Tensor:
    """Float activations ``x [..., K]`` times a packed ternary weight: ``(x @ codes.T) * scale + bias``.

    Differentiable w.r.t. ``x`` (``grad_x = (grad_y * scale) @ codes``); returns x's dtype. float32
    on CPU with more than 12 rows runs torch's GEMM on ``weight.float_codes()`` (cached on the
    weight, 4 bytes per weight); otherwise the ``tna::ternary_linear`` op."""
    _check_packed(weight, conv=False)
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 1 or x.shape[-1] != weight.K:
        raise ValueError(f"x must have shape [..., {weight.K}] (in_features), got {tuple(x.shape)}")
    _check_device(x)
    if _use_dequantized(x, weight) and x.numel() > _DIRECT_MAX_ROWS * weight.K:
        # the op's arithmetic (exact sums on 0/1 inputs, then * scale + bias: two roundings) on
        # torch's GEMM; up to _DIRECT_MAX_ROWS rows the op's own GEMV kernel is faster
        y = torch.matmul(x, weight.float_codes().T) * weight.scale
        return y if weight.bias is None else y + weight.bias
    return torch.ops.tna.ternary_linear(x, weight.words, weight.scale, weight.bias, weight.version)


def spike_ternary_linear(spike_bits: Tensor, weight: PackedTernary) -> Tensor:
    """Bit-packed spikes (``pack_spikes``, ``[..., KW]``) times a packed ternary weight, exactly:
    ``float32(popcount(S & P) - popcount(S & N)) * scale + bias``; returns float32 ``[..., N]``.

    On CPU the kernel picks popcount or the event-driven (sparse) loop by spike density; the
    latter's K-major weight copy is cached on ``weight`` (:meth:`PackedTernary.kmajor`)."""
    _check_packed(weight, conv=False)
    if not isinstance(spike_bits, Tensor) or spike_bits.dtype != torch.int64:
        raise TypeError(f"spike_bits must be int64 packed spikes (pack_spikes), got "
                        f"{getattr(spike_bits, 'dtype', type(spike_bits))}")
    _check_device(spike_bits)
    return torch.ops.tna.spike_ternary_linear(spike_bits, weight.words, weight.scale, weight.bias,
                                              weight.K, weight.version, weight.kmajor())


def ternary_conv2d(x: Tensor, weight: PackedTernary, stride=1, padding=0, dilation=1) -> Tensor:
    """conv2d (groups = 1) of float ``x [B, C, H, W]`` with a packed ternary weight, times scale,
    plus bias. Differentiable w.r.t. ``x``; returns x's dtype ``[B, N, OH, OW]``. float32 on CPU
    runs torch's conv on ``weight.dequantized()`` (cached on the weight); otherwise the
    ``tna::ternary_conv2d`` op."""
    _check_packed(weight, conv=True)
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.dim() != 4:
        raise TypeError(f"x must be a floating-point [B, C, H, W] tensor, got "
                        f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
    if x.shape[1] != weight.K:
        raise ValueError(f"x has {x.shape[1]} channels but the weight expects {weight.K}")
    _check_device(x)
    s, p, d = conv_geometry(stride, padding, dilation)
    if _use_dequantized(x, weight):
        return torch.nn.functional.conv2d(x, weight.dequantized(), weight.bias, s, p, d)
    return torch.ops.tna.ternary_conv2d(x, weight.words, weight.scale, weight.bias, s, p, d, weight.version)


def spike_ternary_conv2d(spike_bits: Tensor, weight: PackedTernary, stride=1, padding=0,
                         dilation=1) -> Tensor:
    """conv2d (groups = 1) of bit-packed spikes ``[B, H, W, CW]`` (``pack_spikes(s, dim=1)``; fold
    T into B) with a packed ternary weight, exact integer accumulation, float32 epilogue.
    Returns float32 ``[B, N, OH, OW]`` (channels-last memory)."""
    _check_packed(weight, conv=True)
    if not isinstance(spike_bits, Tensor) or spike_bits.dtype != torch.int64:
        raise TypeError(f"spike_bits must be int64 packed spikes (pack_spikes(s, dim=1)), got "
                        f"{getattr(spike_bits, 'dtype', type(spike_bits))}")
    _check_device(spike_bits)
    s, p, d = conv_geometry(stride, padding, dilation)
    return torch.ops.tna.spike_ternary_conv2d(spike_bits, weight.words, weight.scale, weight.bias,
                                              weight.K, s, p, d, weight.version, weight.kmajor())


from .ops.lif_pack import _lif_pack_args, lif_pack  # noqa: E402, F401  (ops/lif_pack.py)


def spike_ternary_conv2d_lif(spike_bits: Tensor, weight: PackedTernary, T: int, stride=1, padding=0,
                             dilation=1, *, tau: float | None = None, decay_input: bool | None = None,
                             v_threshold: float = 1.0, v_reset: float | None = 0.0,
                             detach_reset: bool = False, surrogate: str = "atan", alpha: float = 2.0,
                             beta: float | None = None) -> Tensor:
    """:func:`spike_ternary_conv2d` followed by :func:`lif_pack` in one kernel (the LIF runs in the
    GEMM's epilogue, tile by tile): packed spikes ``[T·B, H, W, CW]`` (time-major) → packed spikes
    ``[T·B, OH, OW, ceil(N/64)]``. Bit-identical to the two-step composition. No autograd."""
    _check_packed(weight, conv=True)
    if not isinstance(spike_bits, Tensor) or spike_bits.dtype != torch.int64:
        raise TypeError(f"spike_bits must be int64 packed spikes (pack_spikes(s, dim=1)), got "
                        f"{getattr(spike_bits, 'dtype', type(spike_bits))}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1 or spike_bits.dim() < 1 \
            or spike_bits.shape[0] % T:
        raise ValueError(f"T must be an int >= 1 that divides spike_bits.shape[0] (T·B, time-major), got T={T!r} "
                         f"for shape {tuple(spike_bits.shape)}")
    _check_device(spike_bits)
    s, p, d = conv_geometry(stride, padding, dilation)
    return torch.ops.tna.spike_ternary_conv2d_lif(
        spike_bits, weight.words, weight.scale, weight.bias, weight.K, s, p, d, weight.version, T,
        *_lif_pack_args(tau, decay_input, v_threshold, v_reset, surrogate, alpha, beta), weight.kmajor())


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
