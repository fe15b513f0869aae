"""User-facing functions. Each validates its arguments (errors name the argument), never modifies
the caller's tensors, and calls a tna:: op, which runs the C++ kernel on CPU tensors and the Triton
kernel on CUDA tensors."""

import math

import torch
from torch import Tensor

from . import reference as _reference
from ._utils import HAS_TRITON
from ._utils import HAS_TRITON, state_dtype
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


# ---- Losses: defined with their ops in tna_kernels/ops/twin_loss.py --------------------------------

from .ops.twin_loss import dml_loss, kd_loss, twin_loss  # noqa: E402
