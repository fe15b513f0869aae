"""tna::spike_max_pool2d / tna::spike_max_pool2d_backward: CPU kernels on the native core, fake
kernels, the autograd (``register_autograd``: the backward op is spike_max_pool2d's backward, so
``nn.SpikeMaxPool2d`` and direct callers of the op share it) and the CUDA backend.

On the CPU the forward packs the input with tna::pack_spikes (which rejects values other than 0
and 1) and pools it in C++ (csrc/cpu/spike_pool.cpp); the backward reads the bits. On CUDA the ops
are composed of torch's max-pool and the packing ops, the backward unpacking a slice of samples at
a time (only a slice of the float input and its indices exists at once)."""

import torch

from .._utils import HAS_TRITON, check, chunks, is_channels_last
from . import register_cuda
from ._native import LIB, C, dtype_code, dtype_str, empty_output, shape_str, threads

# The tna:: schemas of this family (the only place they are written).
# Max-pooling of 0/1 spikes keeping the input bit-packed (SpikeMaxPool2d in training):
# x [N, C, H, W] floating, values 0 or 1 only -> (y = max_pool2d(x) [N, C, OH, OW], bits =
# pack_spikes(x.reshape(N, -1)) int64 [N, ceil(C*H*W/64)]). The backward takes grad_y and bits
# and returns grad_x [input_size], each output's gradient at the element max_pool2d's indices
# pick (the window's first spike, else its first element). On the CPU a channels-last x with 2x2
# windows (stride 2, no padding, even H and W) stays channels-last: y and, in backward, grad_x are
# channels-last and bits = pack_spikes(x, dim=1) [N, H, W, ceil(C/64)] (the backward reads the
# layout from bits' rank).
LIB.define(
    "spike_max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool "
    "ceil_mode) -> (Tensor, Tensor)")
LIB.define(
    "spike_max_pool2d_backward(Tensor grad_y, Tensor bits, int[4] input_size, int[2] kernel_size, int[2] "
    "stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor")


def _pooled(size, k, s, p, d, ceil_mode):
    """torch's pooling_output_shape."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    return out - 1 if ceil_mode and (out - 1) * s >= size + p else out


@torch.library.register_fake("tna::spike_max_pool2d")
def _spike_max_pool2d_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    check(x.dim() == 4, lambda: f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    oh, ow = (_pooled(v, k, s, p, d, ceil_mode)
              for v, k, s, p, d in zip((h, w), kernel_size, stride, padding, dilation, strict=True))
    if x.device.type == "cpu" and channels_last_2x2(x, kernel_size, stride, padding, dilation):
        return (x.new_empty((n, c, oh, ow)).contiguous(memory_format=torch.channels_last),
                x.new_empty((n, h, w, (c + 63) // 64), dtype=torch.int64))
    return x.new_empty((n, c, oh, ow)), x.new_empty((n, (c * h * w + 63) // 64), dtype=torch.int64)


@torch.library.register_fake("tna::spike_max_pool2d_backward")
def _spike_max_pool2d_backward_fake(grad_y, bits, input_size, kernel_size, stride, padding, dilation,
                                    ceil_mode):
    check(len(input_size) == 4, lambda: f"input_size must be [N, C, H, W], got {input_size}")
    if bits.dim() == 4:
        return grad_y.new_empty(input_size).contiguous(memory_format=torch.channels_last)
    return grad_y.new_empty(input_size)


# ---- Argument checks (the CPU and the CUDA kernels) and CPU kernels ----------------------------
# The pooling arguments and x's shape are checked by the native core (C.spike_pool_output_size, a
# host function on sizes: errors naming the argument); the tensors here.

def _check_floating(t, name: str) -> None:
    if not t.is_floating_point():
        raise RuntimeError(f"{name} must be a floating-point tensor, got {dtype_str(t.dtype)}")


def _check_floating_cpu(t, name: str) -> None:
    if not t.is_cpu:
        raise RuntimeError(f"{name} must be a CPU tensor, got {t.device}")
    _check_floating(t, name)


def _check_forward(x, kernel_size, stride, padding, dilation, ceil_mode):
    """x and the pooling arguments; returns the pooling arguments as lists and (OH, OW)."""
    pool = (list(kernel_size), list(stride), list(padding), list(dilation))
    return pool, C.spike_pool_output_size(list(x.shape), *pool, ceil_mode)


def channels_last_2x2(x, kernel_size, stride, padding, dilation) -> bool:
    """Whether the CPU pools x in its channels-last memory (see the schema comment)."""
    return is_channels_last(x) and _is_2x2(x.shape, kernel_size, stride, padding, dilation)


def _is_2x2(shape, kernel_size, stride, padding, dilation) -> bool:
    return (list(kernel_size) == [2, 2] and list(stride) == [2, 2] and list(padding) == [0, 0]
            and list(dilation) == [1, 1] and shape[2] % 2 == 0 and shape[3] % 2 == 0)


def _check_backward(grad_y, bits, input_size, kernel_size, stride, padding, dilation, ceil_mode):
    """grad_y, bits, input_size and the pooling arguments (after the device checks)."""
    _check_floating(grad_y, "grad_y")
    if len(input_size) != 4:
        raise RuntimeError(f"input_size must be [N, C, H, W], got {shape_str(input_size)}")
    pool = (list(kernel_size), list(stride), list(padding), list(dilation))
    n, c, h, w = input_size
    oh, ow = C.spike_pool_output_size(list(input_size), *pool, ceil_mode)
    if tuple(grad_y.shape) != (n, c, oh, ow):
        raise RuntimeError(f"grad_y must have shape {shape_str((n, c, oh, ow))}, got {shape_str(grad_y.shape)}")
    if bits.dtype != torch.int64:
        raise RuntimeError(f"bits must be int64 packed spike words, got {dtype_str(bits.dtype)}")
    if bits.dim() == 4:  # channels-last forward: pack_spikes(x, dim=1)
        want = (n, h, w, (c + 63) // 64)
        if not _is_2x2(input_size, kernel_size, stride, padding, dilation):
            raise RuntimeError("bits [N, H, W, CW] (a channels-last forward) go with 2x2 windows, stride 2, no "
                               f"padding or dilation and even H, W; got kernel_size {list(kernel_size)}, stride "
                               f"{list(stride)}, padding {list(padding)}, dilation {list(dilation)}, input size "
                               f"{list(input_size)}")
    else:
        want = (n, (c * h * w + 63) // 64)
    if tuple(bits.shape) != want:
        raise RuntimeError(f"bits must have shape {shape_str(want)}, got {shape_str(bits.shape)}")
    return pool


def _spike_max_pool2d_cpu(x, kernel_size, stride, padding, dilation, ceil_mode):
    _check_floating_cpu(x, "x")
    pool, (oh, ow) = _check_forward(x, kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = x.shape
    if channels_last_2x2(x, kernel_size, stride, padding, dilation):  # in place: no NCHW copy
        bits = torch.ops.tna.pack_spikes(x, 1)  # [N, H, W, CW]; raises if x is not 0/1
        y = empty_output((n, c, oh, ow), x.dtype, torch.channels_last)
        C.spike_max_pool2d_2x2_cl(dtype_code(x), x.data_ptr(), y.data_ptr(), n, c, h, w, threads())
        return y, bits
    xc = x.contiguous()
    bits = torch.ops.tna.pack_spikes(xc.view(n, c * h * w), -1)  # raises if x is not 0/1
    y = empty_output((n, c, oh, ow), x.dtype)
    C.spike_max_pool2d(dtype_code(x), xc.data_ptr(), y.data_ptr(), [n, c, h, w], *pool, ceil_mode, threads())
    return y, bits


def _spike_max_pool2d_backward_cpu(grad_y, bits, input_size, kernel_size, stride, padding, dilation,
                                   ceil_mode):
    _check_floating_cpu(grad_y, "grad_y")
    if not bits.is_cpu:
        raise RuntimeError(f"bits must be a CPU tensor, got {bits.device}")
    pool = _check_backward(grad_y, bits, input_size, kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = input_size
    if bits.dim() == 4:  # the channels-last forward's bits: grad_x channels-last, grad_y read in place
        b = bits.contiguous()
        grad_x = empty_output((n, c, h, w), grad_y.dtype, torch.channels_last)  # written whole
        C.spike_max_pool2d_2x2_backward(dtype_code(grad_y), grad_y.data_ptr(), list(grad_y.stride()), b.data_ptr(),
                                        grad_x.data_ptr(), n, c, h, w, True, threads())
        return grad_x
    b = bits.contiguous()
    grad_x = empty_output((n, c, h, w), grad_y.dtype)  # written whole by the kernel
    if _is_2x2(input_size, kernel_size, stride, padding, dilation):
        # grad_y read in place (the spike conv's channels-last gradient: no NCHW copy)
        C.spike_max_pool2d_2x2_backward(dtype_code(grad_y), grad_y.data_ptr(), list(grad_y.stride()), b.data_ptr(),
                                        grad_x.data_ptr(), n, c, h, w, False, threads())
        return grad_x
    gy = grad_y.contiguous()
    C.spike_max_pool2d_backward(dtype_code(gy), gy.data_ptr(), b.data_ptr(), grad_x.data_ptr(), [n, c, h, w],
                                *pool, ceil_mode, threads())
    return grad_x


LIB.impl("spike_max_pool2d", _spike_max_pool2d_cpu, "CPU")
LIB.impl("spike_max_pool2d_backward", _spike_max_pool2d_backward_cpu, "CPU")


# ---- Autograd: the bits are saved (1 bit per input value), the backward op reads them -----------

def _setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, ceil_mode = inputs
    _, bits = output
    ctx.mark_non_differentiable(bits)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(bits)
    ctx.pool = (list(x.shape), kernel_size, stride, padding, dilation, ceil_mode)


def _backward(ctx, grad_y, _grad_bits):
    if grad_y is None or not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    (bits,) = ctx.saved_tensors
    return torch.ops.tna.spike_max_pool2d_backward(grad_y, bits, *ctx.pool), None, None, None, None, None


torch.library.register_autograd("tna::spike_max_pool2d", _backward, setup_context=_setup_context)


# ---- CUDA: composed of torch ops ------------------------------------------------------------------

def _spike_max_pool2d_composed(x, kernel_size, stride, padding, dilation, ceil_mode):
    _check_floating(x, "x")
    _check_forward(x, kernel_size, stride, padding, dilation, ceil_mode)
    bits = torch.ops.tna.pack_spikes(x.reshape(x.shape[0], -1), -1)  # raises if x is not 0/1
    return torch.nn.functional.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode), bits


def _spike_max_pool2d_backward_composed(grad_y, bits, input_size, kernel_size, stride, padding, dilation,
                                        ceil_mode):
    _check_backward(grad_y, bits, input_size, kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = input_size
    pool = (kernel_size, stride, padding, dilation, ceil_mode)
    grad_x = grad_y.new_empty(input_size)
    for sl in chunks(n, c * h * w, grad_y.device):
        x = torch.ops.tna.unpack_spikes(bits[sl], c * h * w).to(grad_y.dtype).view(-1, c, h, w)
        idx = torch.ops.aten.max_pool2d_with_indices(x, *pool)[1]
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(grad_y[sl], x, *pool, idx,
                                                                   grad_input=grad_x[sl])
    return grad_x


# The composition packs and unpacks with the Triton kernels: without Triton there is no CUDA kernel,
# and functional/nn callers get check_device's "pip install triton" instead of a dispatcher error.
if HAS_TRITON:
    register_cuda("spike_max_pool2d", _spike_max_pool2d_composed, "torch + triton (un)packing")
    register_cuda("spike_max_pool2d_backward", _spike_max_pool2d_backward_composed, "torch + triton (un)packing")
