"""Training with the arithmetic the packed model runs: spike-input ternary conv2d / linear layers
whose forward is the bit-packed spike × packed ternary kernel and whose weight gradient is read from
the bit-packed spikes, event by event.

* ``tna::spike_conv2d_grad_weight`` (CPU: csrc/cpu/spike_train.cpp, event-driven; CUDA: registered
  by the Triton backend when present): the weight gradient of ``conv2d(x, w)`` for 0/1 spikes ``x``
  held as ``pack_spikes(x, dim=1)`` bits. A linear layer is its 1×1 case on 1×1 images.
* :func:`spike_ternary_conv2d_ste` / :func:`spike_ternary_linear_ste`: the straight-through
  training forms (the same gradients as ``conv2d(x, ternary_ste(w))``): forward = the latent
  weight quantised and packed once per call (one fused kernel) and the exact popcount kernel
  (``float32(integer sum) * scale + bias``, the packed model's arithmetic); backward = grad_input
  from the ternary weight (dense float, as dense QAT), grad_weight event-driven from the bits
  (only active inputs contribute), the STE clip mask applied after.
* :func:`choose_path`: ``"spike"`` or ``"dense"`` per layer shape and spike density, measured once
  per (shape, density band) on this machine (dense wins where spikes are too dense); the choices
  are kept in :data:`PATH_CHOICES` (``tna_kernels.nn.train_paths(model)`` lists a model's).
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

from .._utils import is_channels_last
from ..formats import FORMAT_VERSION
from ._native import LIB, dtype_str, empty_output, ptr, shape_str, threads
from ._native import C as NATIVE
from .ternary import _check_ste, conv_geometry, pack_spikes, unpack_spikes

# The tna:: schema of this family (the only place it is written).
# grad_y [B, N, OH, OW] floating (any layout), spike_bits [B, H, W, ceil(C/64)]
# int64 (pack_spikes along channels) -> grad_w [N, C, kh, kw] in grad_y's dtype (sums in float32).
LIB.define(
    "spike_conv2d_grad_weight(Tensor grad_y, Tensor spike_bits, int C, int[2] kernel_size, int[2] stride, "
    "int[2] padding, int[2] dilation) -> Tensor")


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@torch.library.register_fake("tna::spike_conv2d_grad_weight")
def _spike_conv2d_grad_weight_fake(grad_y, spike_bits, C, kernel_size, stride, padding, dilation):
    return grad_y.new_empty((grad_y.shape[1], C, *kernel_size))


def check_grad_weight_args(grad_y, spike_bits, C, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    """The arguments of spike_conv2d_grad_weight on any device (errors name the argument); returns
    the input's (H, W)."""
    if not grad_y.is_floating_point():
        raise RuntimeError(f"grad_y must be a floating-point tensor, got {dtype_str(grad_y.dtype)}")
    if spike_bits.dtype != torch.int64:
        raise RuntimeError(f"spike_bits must be int64 packed spike words (pack_spikes along channels), got "
                           f"{dtype_str(spike_bits.dtype)}")
    if spike_bits.device != grad_y.device:
        raise RuntimeError(f"spike_bits and grad_y must be on one device, got {spike_bits.device} and "
                           f"{grad_y.device}")
    for name, v, low in (("kernel_size", kernel_size, 1), ("stride", stride, 1), ("padding", padding, 0),
                         ("dilation", dilation, 1)):
        if len(v) != 2 or min(v) < low:
            raise RuntimeError(f"{name} must be 2 values >= {low}, got {list(v)}")
    cw = (C + 63) // 64
    if C < 1 or spike_bits.dim() != 4 or spike_bits.shape[3] != cw:
        raise RuntimeError(f"spike_bits must have shape [B, H, W, {cw}] (C = {C} channels packed last), got "
                           f"{shape_str(spike_bits.shape)}")
    b, h, w = spike_bits.shape[:3]
    oh, ow = (_conv_out(v, k, s, p, d) for v, k, s, p, d in zip((h, w), kernel_size, stride, padding, dilation,
                                                                  strict=True))
    n = grad_y.shape[1] if grad_y.dim() == 4 else 0
    if grad_y.dim() != 4 or tuple(grad_y.shape) != (b, n, oh, ow) or n < 1:
        raise RuntimeError(f"grad_y must have shape [{b}, N, {oh}, {ow}] (the conv output for spike_bits "
                           f"{shape_str(spike_bits.shape)}), got {shape_str(grad_y.shape)}")
    return h, w


def _spike_conv2d_grad_weight_cpu(grad_y, spike_bits, C, kernel_size, stride, padding, dilation):
    for name, t in (("grad_y", grad_y), ("spike_bits", spike_bits)):
        if not t.is_cpu:
            raise RuntimeError(f"{name} must be a CPU tensor, got {t.device}")
    h, w = check_grad_weight_args(grad_y, spike_bits, C, kernel_size, stride, padding, dilation)
    b, n, oh, ow = grad_y.shape
    # float32, in place when its (OH, OW) merge into one position stride (NCHW and channels-last
    # both do; the kernel transposes NCHW tiles itself), else one copy
    gy = grad_y.to(torch.float32)
    if oh > 1 and ow > 1 and gy.stride(2) != ow * gy.stride(3):
        gy = gy.contiguous()
    position_stride = gy.stride(3) if ow > 1 else gy.stride(2)
    bits = spike_bits.contiguous()
    grad_w = empty_output((n, C, *kernel_size), torch.float32)
    NATIVE.spike_conv2d_grad_weight(ptr(gy), [gy.stride(0), gy.stride(1), position_stride], ptr(bits), ptr(grad_w),
                                    [b, C, h, w], n, oh, ow, list(kernel_size), list(stride), list(padding),
                                    list(dilation), threads())
    return grad_w.to(grad_y.dtype)


LIB.impl("spike_conv2d_grad_weight", _spike_conv2d_grad_weight_cpu, "CPU")


def spike_density(spike_bits: Tensor, n_values: int) -> float:
    """Fraction of ones among ``n_values`` spikes packed in ``spike_bits`` (CPU: popcount of the
    words; other devices: the same count on the device)."""
    if n_values <= 0:
        return 0.0
    if spike_bits.is_cpu:
        words = spike_bits.contiguous()
        return NATIVE.popcount_words(ptr(words), words.numel()) / n_values
    return float(_device_popcount(spike_bits)) / n_values


def _device_popcount(words: Tensor) -> Tensor:
    """Set bits of int64 words with torch ops (SWAR popcount), for devices without the native core."""
    x = words.reshape(-1)
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56).sum()  # >> is arithmetic on int64: the top byte is < 128


# ---- Straight-through training forms ----------------------------------------------------------------

def _weight_grad_mask(grad_w: Tensor, w: Tensor | None, clip: float | None) -> Tensor:
    """The STE's clip: gradient only where |w| <= clip (ternary_ste's backward)."""
    return grad_w if clip is None else grad_w * (w.abs() <= clip).to(grad_w.dtype)


# Profiler ranges of the training conv's three products (scripts/train_step_breakdown.py reads them).
FORWARD_LABEL, GRAD_INPUT_LABEL, GRAD_WEIGHT_LABEL = "tna.conv_forward", "tna.conv_grad_input", "tna.conv_grad_weight"


class _SpikeTernaryConv2dSTE(torch.autograd.Function):
    """conv2d(x, ternary_ste(w)) for 0/1 spikes x, saving x bit-packed. ``spike`` path: forward by
    the popcount kernel on the packed weight, weight gradient event-driven from the bits; ``dense``
    path: forward and weight gradient by torch's conv (bits unpacked in backward), i.e. dense QAT.
    Both: grad_input = conv2d_input(grad_y, codes * scale), the weight quantised once per call."""

    @staticmethod
    def forward(ctx, x, bits, weight, bias, stride, padding, dilation, method, per_channel, clip, path, channels_last):
        with torch.profiler.record_function(FORWARD_LABEL):
            codes, scale, packed = torch.ops.tna.ternarize(weight.detach().permute(0, 2, 3, 1), method, per_channel,
                                                           path == "spike")
            # ternary_ste(w) in torch's layout (a channels-last weight would make torch's conv pick
            # channels-last outputs and gradients), except on the channels-last spike path, where
            # it only serves grad_input, computed channels-last
            layout = torch.channels_last if channels_last and path == "spike" else torch.contiguous_format
            wq = (codes.permute(0, 3, 1, 2).to(x.dtype) * scale.to(x.dtype).view(-1, 1, 1, 1)).contiguous(
                memory_format=layout)
            if path == "spike":
                b = None if bias is None else bias.detach().to(torch.float32)
                # the kernel writes channels-last; that is returned as it is when the caller reads any
                # layout (channels_last: the fused BN + LIF layer), else NCHW as dense QAT's
                y = torch.ops.tna.spike_ternary_conv2d(bits, packed, scale, b, x.shape[1], stride, padding, dilation,
                                                       FORMAT_VERSION, None)
                if not channels_last:
                    y = y.contiguous()
            else:
                y = torch.nn.functional.conv2d(x, wq, bias, stride, padding, dilation)
        ctx.save_for_backward(bits, wq, weight if clip is not None else None)
        ctx.conf = (tuple(x.shape), stride, padding, dilation, bias is not None, clip, path)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        bits, wq, weight = ctx.saved_tensors
        shape, stride, padding, dilation, has_bias, clip, path = ctx.conf
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            with torch.profiler.record_function(GRAD_INPUT_LABEL):
                w = wq.to(grad_y.dtype)
                if is_channels_last(grad_y):  # torch's conv then runs channels-last without reorders
                    w = w.contiguous(memory_format=torch.channels_last)
                grad_x = conv2d_input(shape, w, grad_y, stride, padding, dilation)
        if ctx.needs_input_grad[2]:
            with torch.profiler.record_function(GRAD_WEIGHT_LABEL):
                grad_w = _grad_weight(grad_y, bits, shape, wq, stride, padding, dilation, path)
            grad_w = _weight_grad_mask(grad_w, weight, clip).to(wq.dtype)
        if has_bias and ctx.needs_input_grad[3]:
            grad_b = grad_y.sum((0, 2, 3))
        return grad_x, None, grad_w, grad_b, None, None, None, None, None, None, None, None


def conv2d_input(input_size, weight, grad_y, stride, padding, dilation) -> Tensor:
    """``torch.nn.grad.conv2d_input`` (groups 1) without its placeholder copy: torch's CPU convolution
    backward makes its input argument contiguous in the weight's memory format even when only
    grad_input is asked for, which turns conv2d_input's ``expand()``ed one-element placeholder into a
    write of the whole input (4 MB per call on the spike path). An uninitialised tensor already in
    that format takes its place; no backend reads the input's values for grad_input alone."""
    layout = torch.channels_last if is_channels_last(weight) else torch.contiguous_format
    x = torch.empty(tuple(input_size), dtype=grad_y.dtype, device=grad_y.device, memory_format=layout)
    return torch.ops.aten.convolution_backward(grad_y, x, weight, None, _pair(stride), _pair(padding),
                                               _pair(dilation), False, [0], 1, (True, False, False))[0]


def _grad_weight(grad_y, bits, shape, wq, stride, padding, dilation, path):
    if path == "spike":
        return torch.ops.tna.spike_conv2d_grad_weight(grad_y, bits, shape[1], list(wq.shape[2:]), stride, padding,
                                                      dilation)
    x = unpack_spikes(bits, shape[1], dim=1, dtype=grad_y.dtype)
    return torch.nn.grad.conv2d_weight(x, wq.shape, grad_y, stride, padding, dilation)


TRAIN_PATHS = ("auto", "spike", "dense")
# (layer shape, density band) -> "spike" | "dense", measured once per process (choose_path).
PATH_CHOICES: dict[tuple, str] = {}
PATH_TIMES: dict[tuple, list[float]] = {}  # the same keys -> [spike s, dense s] (forward + both gradients)
# Upper edges of the spike-density bands a choice is measured for (a layer's density drifts in
# training; a new band is measured when it crosses an edge).
DENSITY_BANDS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)


def density_band(density: float) -> float:
    return next(edge for edge in DENSITY_BANDS if density <= edge)


def _best_time(fn, repeats: int = 2) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _measure_conv(x, bits, weight, stride, padding, dilation, channels_last: bool = False) -> str:
    """Times one training step of this conv layer on both paths, as each runs it here: forward,
    weight gradient and input gradient. The spike path's output, and so its output gradient, is
    channels-last when ``channels_last`` (the fused BN + LIF layer reads it in place), and its input
    gradient then runs on a channels-last weight; dense QAT's stay in the input's layout. Returns the
    faster path and both times (s). Measured inside the training forward, so it holds as little as
    it can beside the step's live tensors: one output-sized gradient at a time."""
    codes, scale, packed = torch.ops.tna.ternarize(weight.detach().permute(0, 2, 3, 1), "twn", True, True)
    wq = (codes.permute(0, 3, 1, 2).to(x.dtype) * scale.view(-1, 1, 1, 1)).contiguous()
    C, shape, k = x.shape[1], tuple(x.shape), list(wq.shape[2:])
    out_shape = torch.nn.functional.conv2d(x.to("meta"), wq.to("meta"), None, stride, padding, dilation).shape
    generator = torch.Generator().manual_seed(0)  # not the global RNG

    def random_grad(layout):
        return torch.empty(out_shape, dtype=x.dtype, memory_format=layout).normal_(generator=generator)

    with torch.no_grad():
        layout = torch.channels_last if channels_last else torch.contiguous_format
        grad_y, w = random_grad(layout), wq.contiguous(memory_format=layout)

        def spike():
            torch.ops.tna.spike_ternary_conv2d(bits, packed, scale, None, C, stride, padding, dilation,
                                               FORMAT_VERSION, None)
            torch.ops.tna.spike_conv2d_grad_weight(grad_y, bits, C, k, stride, padding, dilation)
            conv2d_input(shape, w, grad_y, stride, padding, dilation)

        t_spike = _best_time(spike, 3)
        del grad_y, w
        grad_y = random_grad(torch.contiguous_format)

        def dense():
            torch.nn.functional.conv2d(x, wq, None, stride, padding, dilation)
            torch.nn.grad.conv2d_weight(unpack_spikes(bits, C, dim=1, dtype=x.dtype), wq.shape, grad_y, stride,
                                        padding, dilation)
            conv2d_input(shape, wq, grad_y, stride, padding, dilation)

        t_dense = _best_time(dense, 3)
    return ("spike" if t_spike <= t_dense else "dense"), t_spike, t_dense


def choose_path(x: Tensor, bits: Tensor, weight: Tensor, stride, padding, dilation,
                channels_last: bool = False) -> tuple[str, float]:
    """The faster training path for this conv layer at this input's spike density, measured on
    the first call per (shape, density band) and remembered in :data:`PATH_CHOICES`; returns
    ``(path, density)``. Not measured on CUDA (never run on a GPU yet): ``"dense"`` there.
    ``channels_last``: the layout the spike path would run in (see :func:`_measure_conv`); a
    layer's calls all pass the same, so it is not part of the key (which checkpoints store)."""
    density = spike_density(bits, x.numel())
    if not x.is_cpu:  # measured on GPUs once one has run this path; until then dense QAT there
        return "dense", density
    key = (tuple(x.shape), tuple(weight.shape), tuple(stride), tuple(padding), tuple(dilation), torch.get_num_threads(),
           density_band(density))
    path = PATH_CHOICES.get(key)
    if path is None:
        path, *PATH_TIMES[key] = _measure_conv(x.detach(), bits, weight, stride, padding, dilation, channels_last)
        PATH_CHOICES[key] = path
    return path, density


def resolve_train_path(x: Tensor, bits: Tensor, weight: Tensor, stride, padding, dilation, path: str,
                       channels_last: bool = False) -> str:
    """``path`` ("auto" | "spike" | "dense") for this call: "auto" measures (:func:`choose_path`);
    the spike kernels run float32 only, so other dtypes and autocast regions take "dense" under
    "auto" (an explicit "spike" under autocast computes in float32: exact integer sums anyway).
    Under torch.compile "auto" cannot measure (host timing in a traced graph): "spike" on the CPU,
    "dense" elsewhere."""
    if path not in TRAIN_PATHS:
        raise ValueError(f"path must be one of {TRAIN_PATHS}, got {path!r}")
    f32 = x.dtype == torch.float32 and weight.dtype == torch.float32
    if path == "spike" and not f32:
        raise ValueError(f"path='spike' needs float32 input and weight (the popcount kernel's output), got "
                         f"{x.dtype} and {weight.dtype}; use path='dense' or 'auto'")
    if path != "auto":
        return path
    if not f32 or torch.is_autocast_enabled(x.device.type):
        return "dense"
    if torch.compiler.is_compiling():  # no measuring inside a traced graph: the CPU's usual winner
        return "spike" if x.is_cpu else "dense"
    return choose_path(x, bits, weight, stride, padding, dilation, channels_last)[0]


def spike_ternary_conv2d_ste(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                             dilation=1, *, method: str = "twn", per_channel: bool = True,
                             clip: float | None = None, path: str = "auto") -> Tensor:
    """``conv2d(x, ternary_ste(weight), bias)`` for 0/1 spikes ``x [B, C, H, W]``, trained with the
    packed model's arithmetic.

    ``path="spike"``: forward = the latent weight ternarised and packed (one fused call) and the
    exact popcount kernel (:func:`spike_ternary_conv2d`: ``float32(integer sum) * scale + bias``,
    channels-last float32 output), weight gradient event-driven from the bit-packed input
    (``tna::spike_conv2d_grad_weight``). ``path="dense"``: dense QAT (torch's conv on
    ``codes * scale``; the input still saved bit-packed). ``path="auto"`` (default): the faster of
    the two for this layer shape and spike density, measured once (:func:`choose_path`). Both
    paths: ``grad_input = conv2d_input(grad_y, codes * scale)`` and the STE's gradient to
    ``weight`` (``* 1[|w| <= clip]`` with ``clip``). The integer part of the spike forward equals
    dense QAT's exactly; outputs and gradients agree within float32 rounding. Raises on inputs
    other than 0/1."""
    stride, padding, dilation = conv_geometry(stride, padding, dilation)
    clip = _check_ste_args(x, weight, bias, method, per_channel, clip)
    return conv_ste(x, weight, bias, stride, padding, dilation, method, per_channel, clip, path)[0]


def conv_ste(x, weight, bias, stride, padding, dilation, method, per_channel, clip, path,
             channels_last: bool = False) -> tuple[Tensor, str]:
    """spike_ternary_conv2d_ste on checked arguments (TernaryLIFConv2d's training forward calls it
    directly); returns the output and the path taken. ``channels_last``: the caller reads any
    layout, so the spike path's output stays in the kernel's channels-last memory (no transpose
    pass), and so does the input gradient computed from a channels-last output gradient."""
    bits = pack_spikes(x, dim=1)  # raises if x is not 0/1
    chosen = resolve_train_path(x, bits, weight, stride, padding, dilation, path, channels_last)
    y = _SpikeTernaryConv2dSTE.apply(x, bits, weight, bias, stride, padding, dilation, method, per_channel, clip,
                                     chosen, channels_last)
    return y, chosen


def _check_ste_args(x, weight, bias, method, per_channel, clip) -> float | None:
    """x, weight and bias here; the ternariser's arguments by ternary_ste's own checker."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be a floating-point [B, C, H, W] tensor of 0/1 spikes, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(weight, Tensor) or weight.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be [N, {x.shape[1]}, kh, kw] (groups = 1), got "
                         f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
    if x.device != weight.device:
        raise ValueError(f"x and weight must be on one device, got {x.device} and {weight.device}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"bias must be None or [{weight.shape[0]}], got {tuple(bias.shape)}")
    return _check_ste(weight, method, per_channel, clip)


def spike_ternary_linear_ste(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, method: str = "twn",
                             per_channel: bool = True, clip: float | None = None, path: str = "auto") -> Tensor:
    """``linear(x, ternary_ste(weight), bias)`` for 0/1 spikes ``x [..., K]``: the 1×1 case of
    :func:`spike_ternary_conv2d_ste` (same paths, same kernels) on ``[M, K, 1, 1]``."""
    if not isinstance(x, Tensor) or x.dim() < 1 or not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError("x must be [..., K] and weight [N, K]")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features, weight expects {weight.shape[1]}")
    lead = x.shape[:-1]
    y = spike_ternary_conv2d_ste(x.reshape(-1, x.shape[-1], 1, 1), weight[:, :, None, None], bias, method=method,
                                 per_channel=per_channel, clip=clip, path=path)
    return y.reshape(*lead, weight.shape[0])


# ---- CUDA: the Triton GEMM (tna_kernels/triton/spike_train.py) ----------------------------------------
# The imports sit with the registration, so the family's CUDA backend is this one block.
from .._utils import HAS_TRITON  # noqa: E402
from . import register_cuda  # noqa: E402

if HAS_TRITON:
    from ..triton import spike_train as _triton_spike_train

    register_cuda("spike_conv2d_grad_weight", _triton_spike_train.spike_conv2d_grad_weight, "triton")
