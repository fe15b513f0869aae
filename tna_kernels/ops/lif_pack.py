"""``functional.lif_pack`` and tna::lif_pack (LIF with bit-packed spike output): C++ kernel on the
CPU, fake kernel and CUDA backend. Inference only: no autograd (packed models are frozen). The
spike x ternary conv with this LIF as its epilogue, tna::spike_ternary_conv2d_lif, lives with the
ternary ops."""

import math

import torch
from torch import Tensor

from .._utils import HAS_TRITON, check
from . import register_cuda
from ._native import LIB, C, empty_output, ptr, threads
from .lif import _check_device, _lif_constants

# The tna:: schemas of this family (the only place they are written).
# Inference LIF with packed output: x_seq [T, ..., C] float32 channels last (membrane from the
# reset value) -> spikes bit-packed along C, int64 [T, ..., ceil(C/64)] (the pack_spikes layout).
LIB.define(
    "lif_pack(Tensor x_seq, float tau, bool decay_input, float v_threshold, float v_reset, bool "
    "soft_reset) -> Tensor")


def _check_lif_pack_op(x_seq, tau, v_threshold, v_reset):
    """The op's arguments (fake and CPU kernels)."""
    check(x_seq.dtype == torch.float32, lambda: f"x_seq must be float32, got {x_seq.dtype}")
    check(x_seq.dim() >= 2 and x_seq.shape[0] >= 1 and x_seq.shape[-1] >= 1,
                 lambda: f"x_seq must be [T, ..., C] (channels last) with T >= 1 and C >= 1, got shape "
                         f"{tuple(x_seq.shape)}")
    check(math.isfinite(tau) and tau > 0, lambda: f"tau must be a finite number > 0, got {tau}")
    check(math.isfinite(v_threshold), lambda: f"v_threshold must be finite, got {v_threshold}")
    check(math.isfinite(v_reset), lambda: f"v_reset must be finite, got {v_reset}")


@torch.library.register_fake("tna::lif_pack")
def _lif_pack_fake(x_seq, tau, decay_input, v_threshold, v_reset, soft_reset):
    _check_lif_pack_op(x_seq, tau, v_threshold, v_reset)
    return x_seq.new_empty((*x_seq.shape[:-1], (x_seq.shape[-1] + 63) // 64), dtype=torch.int64)


def _lif_pack_cpu(x_seq, tau, decay_input, v_threshold, v_reset, soft_reset):
    """The native core's kernel (csrc/cpu/lif_pack.cpp), parallel over rows of channels."""
    _check_lif_pack_op(x_seq, tau, v_threshold, v_reset)
    x = x_seq.contiguous()
    T, N = x.shape[0], x.shape[-1]
    rows = math.prod(x.shape[1:-1])
    out = empty_output((*x.shape[:-1], (N + 63) // 64), torch.int64)
    C.lif_pack(ptr(x), T, rows, N, tau, decay_input, v_threshold, v_reset, soft_reset, ptr(out), threads())
    return out


LIB.impl("lif_pack", _lif_pack_cpu, "CPU")


def _lif_pack_composed(x_seq, tau, decay_input, v_threshold, v_reset, soft_reset):
    _check_lif_pack_op(x_seq, tau, v_threshold, v_reset)
    spikes, _, _ = torch.ops.tna.lif_fwd(x_seq, None, tau, decay_input, v_threshold, v_reset, soft_reset,
                                         False, "atan", 2.0, False)
    return torch.ops.tna.pack_spikes(spikes, -1)


if HAS_TRITON:
    # CUDA tensors: the Triton conv, LIF and packing kernels in sequence (not fused yet on GPU).
    register_cuda("lif_pack", _lif_pack_composed, "triton (unfused)")


# ---- Public API (re-exported by tna_kernels.functional) ---------------------------------------

def _lif_pack_args(tau, decay_input, v_threshold, v_reset, surrogate, alpha, beta) -> tuple:
    tau, decay_input = _lif_constants(tau, decay_input, v_threshold, v_reset, surrogate, alpha, beta)
    return tau, decay_input, float(v_threshold), 0.0 if v_reset is None else float(v_reset), v_reset is None


def _check_lif_pack(x_seq, tau, decay_input, v_threshold, v_reset, surrogate, alpha, beta) -> tuple:
    """Validates the arguments of :func:`lif_pack`; returns the neuron arguments as the op takes them."""
    if not isinstance(x_seq, Tensor) or x_seq.dtype != torch.float32:
        raise TypeError(f"x_seq must be a float32 torch.Tensor, got {getattr(x_seq, 'dtype', type(x_seq))}")
    if x_seq.dim() < 2 or x_seq.shape[0] < 1:
        raise ValueError(f"x_seq must be [T, ..., C] with T >= 1, got shape {tuple(x_seq.shape)}")
    _check_device(x_seq)
    return _lif_pack_args(tau, decay_input, v_threshold, v_reset, surrogate, alpha, beta)


def lif_pack(x_seq: Tensor, *, tau: float | None = None, decay_input: bool | None = None,
             v_threshold: float = 1.0, v_reset: float | None = 0.0, detach_reset: bool = False,
             surrogate: str = "atan", alpha: float = 2.0, beta: float | None = None) -> Tensor:
    """Inference LIF with bit-packed output: ``x_seq`` float32 ``[T, ..., C]`` (channels last) →
    int64 ``[T, ..., ceil(C/64)]``, equal to ``pack_spikes(lif(x_seq, ...), dim=-1)`` without the
    float spike tensor. Neuron arguments as in :func:`lif` (the membrane starts at the reset value);
    ``detach_reset``, ``surrogate`` and ``alpha`` only shape gradients, so they are accepted (a
    layer's ``neuron.kwargs`` can be passed as is) and have no effect here. No autograd."""
    return torch.ops.tna.lif_pack(x_seq, *_check_lif_pack(x_seq, tau, decay_input, v_threshold, v_reset, surrogate,
                                                          alpha, beta))
