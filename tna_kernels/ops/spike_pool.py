"""tna::spike_max_pool2d / tna::spike_max_pool2d_backward: fake kernels and the CUDA backend.

On CUDA the ops are composed of torch's max-pool and the packing ops, the backward unpacking a
slice of samples at a time (only a slice of the float input and its indices exists at once)."""

import torch

from .._utils import chunks
from . import CUDA_BACKENDS
from ._native import LIB


# The tna:: schemas of this family (the only place they are written).
# Max-pooling of 0/1 spikes keeping the input bit-packed (SpikeMaxPool2d in training):
# x [N, C, H, W] floating, values 0 or 1 only -> (y = max_pool2d(x) [N, C, OH, OW], bits =
# pack_spikes(x.reshape(N, -1)) int64 [N, ceil(C*H*W/64)]). The backward takes grad_y and bits
# and returns grad_x [input_size], each output's gradient at the element max_pool2d's indices
# pick (the window's first spike, else its first element).
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
    torch._check(x.dim() == 4, lambda: f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    oh, ow = (_pooled(v, k, s, p, d, ceil_mode)
              for v, k, s, p, d in zip((h, w), kernel_size, stride, padding, dilation, strict=True))
    return x.new_empty((n, c, oh, ow)), x.new_empty((n, (c * h * w + 63) // 64), dtype=torch.int64)


@torch.library.register_fake("tna::spike_max_pool2d_backward")
def _spike_max_pool2d_backward_fake(grad_y, bits, input_size, kernel_size, stride, padding, dilation,
                                    ceil_mode):
    torch._check(len(input_size) == 4, lambda: f"input_size must be [N, C, H, W], got {input_size}")
    return grad_y.new_empty(input_size)


def _spike_max_pool2d_composed(x, kernel_size, stride, padding, dilation, ceil_mode):
    bits = torch.ops.tna.pack_spikes(x.reshape(x.shape[0], -1), -1)  # raises if x is not 0/1
    return torch.nn.functional.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode), bits


def _spike_max_pool2d_backward_composed(grad_y, bits, input_size, kernel_size, stride, padding, dilation,
                                        ceil_mode):
    n, c, h, w = input_size
    pool = (kernel_size, stride, padding, dilation, ceil_mode)
    grad_x = grad_y.new_empty(input_size)
    for sl in chunks(n, c * h * w):
        x = torch.ops.tna.unpack_spikes(bits[sl], c * h * w).to(grad_y.dtype).view(-1, c, h, w)
        idx = torch.ops.aten.max_pool2d_with_indices(x, *pool)[1]
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(grad_y[sl], x, *pool, idx,
                                                                   grad_input=grad_x[sl])
    return grad_x


torch.library.register_kernel("tna::spike_max_pool2d", "cuda", _spike_max_pool2d_composed)
torch.library.register_kernel("tna::spike_max_pool2d_backward", "cuda", _spike_max_pool2d_backward_composed)
CUDA_BACKENDS["spike_max_pool2d"] = CUDA_BACKENDS["spike_max_pool2d_backward"] = "torch"
