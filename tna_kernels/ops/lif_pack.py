"""tna::lif_pack (LIF with bit-packed spike output): fake kernel and CUDA backend. Inference only:
no autograd (packed models are frozen). The spike x ternary conv with this LIF as its epilogue,
tna::spike_ternary_conv2d_lif, lives with the ternary ops."""

import torch

from .._utils import HAS_TRITON
from . import CUDA_BACKENDS
from ._native import LIB


# The tna:: schemas of this family (the only place they are written).
# Inference LIF with packed output: x_seq [T, ..., C] float32 channels last (membrane from the
# reset value) -> spikes bit-packed along C, int64 [T, ..., ceil(C/64)] (the pack_spikes layout).
LIB.define(
    "lif_pack(Tensor x_seq, float tau, bool decay_input, float v_threshold, float v_reset, bool "
    "soft_reset) -> Tensor")


@torch.library.register_fake("tna::lif_pack")
def _lif_pack_fake(x_seq, tau, decay_input, v_threshold, v_reset, soft_reset):
    torch._check(x_seq.dtype == torch.float32, lambda: f"x_seq must be float32, got {x_seq.dtype}")
    torch._check(x_seq.dim() >= 2, lambda: f"x_seq must be [T, ..., C], got shape {tuple(x_seq.shape)}")
    return x_seq.new_empty((*x_seq.shape[:-1], (x_seq.shape[-1] + 63) // 64), dtype=torch.int64)


def _lif_pack_composed(x_seq, tau, decay_input, v_threshold, v_reset, soft_reset):
    spikes, _, _ = torch.ops.tna.lif_fwd(x_seq, None, tau, decay_input, v_threshold, v_reset, soft_reset,
                                         False, "atan", 2.0, False)
    return torch.ops.tna.pack_spikes(spikes, -1)


if HAS_TRITON:
    # CUDA tensors: the Triton conv, LIF and packing kernels in sequence (not fused yet on GPU).
    torch.library.register_kernel("tna::lif_pack", "cuda", _lif_pack_composed)
    CUDA_BACKENDS["lif_pack"] = "triton (unfused)"
