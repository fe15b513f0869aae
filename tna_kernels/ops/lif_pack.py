"""tna::lif_pack (LIF with bit-packed spike output) and tna::spike_ternary_conv2d_lif (the spike ×
ternary conv with that LIF as its epilogue): fake kernels and CUDA backends. Inference only: no
autograd (packed models are frozen)."""

import torch

from .._utils import HAS_TRITON
from . import CUDA_BACKENDS
from .ternary import _check_version, _conv_out


@torch.library.register_fake("tna::lif_pack")
def _lif_pack_fake(x_seq, tau, decay_input, v_threshold, v_reset, soft_reset):
    torch._check(x_seq.dtype == torch.float32, lambda: f"x_seq must be float32, got {x_seq.dtype}")
    torch._check(x_seq.dim() >= 2, lambda: f"x_seq must be [T, ..., C], got shape {tuple(x_seq.shape)}")
    return x_seq.new_empty((*x_seq.shape[:-1], (x_seq.shape[-1] + 63) // 64), dtype=torch.int64)


@torch.library.register_fake("tna::spike_ternary_conv2d_lif")
def _spike_ternary_conv2d_lif_fake(spike_bits, packed_w, scale, bias, C, stride, padding, dilation, version,
                                   T, tau, decay_input, v_threshold, v_reset, soft_reset, kmajor=None):
    _check_version(version)
    oh, ow = _conv_out(spike_bits.shape[1], spike_bits.shape[2], packed_w.shape[1:3], stride, padding,
                       dilation)
    return spike_bits.new_empty((spike_bits.shape[0], oh, ow, (packed_w.shape[0] + 63) // 64))


def _lif_pack_composed(x_seq, tau, decay_input, v_threshold, v_reset, soft_reset):
    spikes, _, _ = torch.ops.tna.lif_fwd(x_seq, None, tau, decay_input, v_threshold, v_reset, soft_reset,
                                         False, "atan", 2.0, False)
    return torch.ops.tna.pack_spikes(spikes, -1)


def _spike_ternary_conv2d_lif_composed(spike_bits, packed_w, scale, bias, C, stride, padding, dilation,
                                       version, T, tau, decay_input, v_threshold, v_reset, soft_reset,
                                       kmajor=None):
    y = torch.ops.tna.spike_ternary_conv2d(spike_bits, packed_w, scale, bias, C, stride, padding, dilation,
                                           version, kmajor)
    y = y.permute(0, 2, 3, 1)  # channels last
    return _lif_pack_composed(y.unflatten(0, (T, y.shape[0] // T)), tau, decay_input, v_threshold,
                              v_reset, soft_reset).flatten(0, 1)


if HAS_TRITON:
    # CUDA tensors: the Triton conv, LIF and packing kernels in sequence (not fused yet on GPU).
    torch.library.register_kernel("tna::lif_pack", "cuda", _lif_pack_composed)
    torch.library.register_kernel("tna::spike_ternary_conv2d_lif", "cuda", _spike_ternary_conv2d_lif_composed)
    CUDA_BACKENDS["lif_pack"] = CUDA_BACKENDS["spike_ternary_conv2d_lif"] = "triton (unfused)"
