"""Batch norm with batch statistics + LIF as one autograd function, for training.

Unfused, ``nn.BatchNorm`` saves its input and the LIF saves its pre-spike membrane ``h``: two
float tensors per layer, ``h`` T times the BN input for a static first layer. This function saves
only the BN input (and the batch mean and invstd, a few numbers per channel). Its backward
recomputes the BN output from it with the same arithmetic (bit-identical), runs the LIF backward on
it slice by slice (``lif_bwd_recompute``: the membrane is recomputed in cache, never stored), then
torch's batch-norm backward op. Spikes and running statistics are those of ``nn.BatchNorm`` +
:func:`tna_kernels.functional.lif`, gradients too up to float32 rounding. The price is compute:
the batch-norm output and the LIF forward are computed again in backward.

On the CPU (float32 BN inputs with more than one value per channel and sample, NCHW or
channels-last) the batch norm is this library's (:mod:`tna_kernels.ops.batch_norm`): torch's
arithmetic and bits without torch's latency-bound statistics loop; backward recomputes the output
from the saved mean and invstd (no second statistics pass) and, for a channels-last input (the
spike conv's output), takes the batch-norm gradients with the native channels-last backward.
Elsewhere it is ``torch.native_batch_norm``, run again in backward on the saved input (same input,
same op: the same bits).

On the CPU, for a channels-last input (not a static one) the batch norm and the LIF are one op each
way (``tna::batch_norm_lif_forward`` / ``_backward``): the batch-norm output never reaches memory,
which saves two passes over it in the forward and three in the backward (≈ 7 % of the TNA step of
``benchmarks/bench_train_step.py`` on one thread); the same spikes and statistics, and gradients
bit for bit whenever a step's positions are a multiple of 256 (else within float rounding). On
CUDA the same two ops run as Triton kernels for NCHW or channels-last float32 / bfloat16 / float16
inputs (not static ones, not SyncBN): statistics and gradients within float rounding of torch's
batch norm (sums in another order), so a spike can differ where the membrane lies within rounding
of the threshold. They are off by default (:data:`CUDA_FUSED`): unmeasured on a GPU yet.

An ``nn.SyncBatchNorm`` with more than one process takes its statistics over every rank's batch
(T·B per rank) and all-reduces their gradients, as ``nn.SyncBatchNorm`` does
(:mod:`tna_kernels.nn.sync_bn`); its backward recomputes the BN output from the saved input and
the forward's global statistics (a few numbers per channel), not from a second all-gather.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .._utils import chunks, is_channels_last
from ..ops import CUDA_KERNELS
from ..ops import batch_norm as batch_norm_ops
from ..ops.lif import _lif_hyper as lif_hyper
from . import sync_bn

if TYPE_CHECKING:  # lif.py calls this module
    from .lif import LIF


class _BNLIF(torch.autograd.Function):
    """``x [N, C, ...]`` → BN with batch statistics (updating the running ones when given) → LIF
    over ``[T, N/T, C, ...]``, or over ``N`` samples repeated T times when ``static`` (the LIF kernel
    reads that stride-0 sequence in place). Backward runs the LIF on slices of neurons (it is
    elementwise across them), so only a slice of the LIF's gradient exists at a time."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn, momentum, eps, T, static, hyper, group):
        if group is None:
            running = bn.training and bn.track_running_stats
            running_mean, running_var = (bn.running_mean, bn.running_var) if running else (None, None)
            if not static and _fused_batch_norm_lif(x, weight, bias, running_mean, running_var):
                spikes, mean, invstd = torch.ops.tna.batch_norm_lif_forward(
                    x, weight, bias, running_mean, running_var, momentum, eps, T, *hyper)
                ctx.save_for_backward(x, weight, bias, mean, invstd)
                ctx.conf = (eps, T, static, hyper, group)
                ctx.fused = True
                return spikes.unflatten(0, (T, -1))  # [T, B, C, H, W], channels-last per step
            if _native_batch_norm(x, weight, bias, running_mean, running_var):
                y, mean, invstd = torch.ops.tna.batch_norm_forward(x, weight, bias, running_mean, running_var,
                                                                   momentum, eps)
                ctx.save_for_backward(x, weight, bias, mean, invstd)
            else:
                y = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)[0]
                ctx.save_for_backward(x, weight, bias)
        else:
            mean, var, n = sync_bn.global_batch_stats(x, group)
            if bn.training and bn.track_running_stats:
                sync_bn.update_running_stats(bn, mean, var, n, momentum)
            y = sync_bn.normalize(x, weight, bias, mean, var, eps)
            ctx.save_for_backward(x, weight, bias, mean, var, n)
        # static: y_t is y expanded over T (stride 0), which the kernel reads in place
        spikes = torch.ops.tna.lif_fwd(_time_major(y, T, static), None, *hyper, False)[0]
        ctx.conf = (eps, T, static, hyper, group)
        ctx.fused = False
        return _sequence_like(spikes, y, T, static)

    @staticmethod
    def backward(ctx, grad_spikes):
        eps, T, static, hyper, group = ctx.conf
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        if ctx.fused:
            x, weight, bias, mean, invstd = ctx.saved_tensors
            mask[1] = mask[1] and weight is not None
            mask[2] = mask[2] and bias is not None
            grads = torch.ops.tna.batch_norm_lif_backward(grad_spikes.flatten(0, 1), x, mean, invstd, weight, bias,
                                                          T, *hyper, mask)
            return (*(g if m else None for g, m in zip(grads, mask)), None, None, None, None, None, None, None)
        if group is None:
            x, weight, bias, *stats = ctx.saved_tensors
            if stats:  # the native forward's output again from its statistics (no second statistics pass)
                mean, invstd = stats
                y = torch.ops.tna.batch_norm_apply(x, mean, invstd, weight, bias)
            else:  # the forward's op on the same input: the same BN output and batch statistics, bit for bit
                y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        else:
            x, weight, bias, mean, var, n = ctx.saved_tensors
            y = sync_bn.normalize(x, weight, bias, mean, var, eps)  # the forward's op and statistics
        if not is_channels_last(y):
            y = y.contiguous()  # a copy only for other layouts: the slices below write through views
        y_t, g_t = _time_major(y, T, static), _time_major_grad(grad_spikes, y, T)
        # each slice of y is read before its gradient overwrites it: y's buffer becomes grad_y.
        # On a GPU the slices are large (chunk_elems): a VGG-11 step makes 16 calls, not 296.
        slices = chunks(y_t.shape[1], T, y.device)
        for sl in slices:
            # the membrane is recomputed in cache from y: the same bits as the forward's
            g = torch.ops.tna.lif_bwd_recompute(g_t[:, sl], None, y_t[:, sl], None, *hyper)[0]
            if static:  # the static input fed every step: its gradient is the sum over steps
                grad_y = g.sum(0)
            else:
                grad_y = g
            if len(slices) == 1:  # one call covered y (the GPU's case): its result is grad_y, no copy
                y = _shaped_like(grad_y, y)
            elif static:
                _memory_order(y)[sl] = grad_y
            else:
                y_t[:, sl] = grad_y
            del g, grad_y
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
        if group is None and stats and is_channels_last(x):
            grad_x, grad_w, grad_b = torch.ops.tna.batch_norm_backward_channels_last(y, x, mean, invstd, weight, mask)
            grad_w = grad_w if mask[1] else None
            grad_b = grad_b if mask[2] else None
            grad_x = grad_x if mask[0] else None
        elif group is None:
            grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
                y, x, weight, None, None, mean, invstd, True, eps, mask)
        else:
            grad_x, grad_w, grad_b = sync_bn.sync_batch_norm_backward(y, x, weight, mean, var, n, eps, group, mask)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


# Whether bn_lif takes the fused CUDA kernels (Triton) for the inputs they serve. Off by default
# until a GPU has measured it: scripts/gpu_accounting.py's model of a VGG-11 TNA step at B = 256
# predicts ~10 % fewer HBM bytes with them (15.4 against 17.1 GB) but ~0.9 ms more host time (each
# layer launches three Triton kernels each way where the unfused layer launches cuDNN's batch norm
# and one Triton LIF), and that step is bound by launches in the model; scripts/gpu_bench.py's lif
# step times both on a GPU.
# Set TNA_BN_LIF_CUDA_FUSED=1, or this attribute, to take them.
CUDA_FUSED = os.environ.get("TNA_BN_LIF_CUDA_FUSED", "0") == "1"


def _fused_batch_norm_lif(x: Tensor, *params: Tensor | None) -> bool:
    """Whether tna::batch_norm_lif_forward serves this input. CPU: what :func:`_native_batch_norm`
    serves, 4-D and channels-last (the spike convolution's output; its output, spikes, is then
    channels-last as the unfused path's is). CUDA: :func:`_cuda_fused_serves`, when
    :data:`CUDA_FUSED` is set."""
    if x.is_cuda:
        return CUDA_FUSED and _cuda_fused_serves(x, *params)
    return is_channels_last(x) and _native_batch_norm(x, *params)


def _cuda_fused_serves(x: Tensor, *params: Tensor | None) -> bool:
    """Whether the CUDA kernels of the fused pair serve x (on a CUDA device): 4-D, NCHW or
    channels-last, float32 / bfloat16 / float16, float32 parameters on x's device (spikes come
    back in x's layout)."""
    return ("batch_norm_lif_forward" in CUDA_KERNELS and x.dim() == 4
            and x.dtype in batch_norm_ops.GPU_DTYPES and (x.is_contiguous() or is_channels_last(x))
            and x.numel() > x.shape[0] * x.shape[1]
            and all(p is None or (p.dtype == torch.float32 and p.device == x.device) for p in params))


def _native_batch_norm(x: Tensor, *params: Tensor | None) -> bool:
    """Whether tna::batch_norm_forward serves this input: float32 CPU inputs [N, C, S] with S > 1,
    NCHW-contiguous or channels-last (it equals torch's batch norm on the NCHW layout bit for bit:
    tna_kernels/ops/batch_norm.py)."""
    return (x.is_cpu and x.dtype == torch.float32 and x.dim() >= 3
            and (x.is_contiguous() or is_channels_last(x))
            and x.numel() > x.shape[0] * x.shape[1]
            and all(p is None or (p.dtype == torch.float32 and p.is_cpu) for p in params)
            and batch_norm_ops.reproduces_torch())


# The LIF runs on the neurons in y's memory order: a channels-last BN output (from a channels-last
# BN input, the spike conv's output) gives channels-last spikes, and its backward takes the spikes'
# gradient in that order, so no layer converts.

def _memory_order(y: Tensor) -> Tensor:
    """y's elements in memory order: a flat view for a contiguous or channels-last y."""
    return y.permute(0, 2, 3, 1).reshape(-1) if is_channels_last(y) else y.reshape(-1)


def _shaped_like(flat: Tensor, like: Tensor) -> Tensor:
    """Memory-ordered data as a tensor of like's shape and layout (the inverse of _memory_order)."""
    if is_channels_last(like):
        n, c, h, w = like.shape
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(like.shape)


def _time_major(y: Tensor, T: int, static: bool) -> Tensor:
    """The neuron input as ``[T, neurons]`` (a view: a static input is expanded, not copied)."""
    flat = _memory_order(y)
    return flat.expand(T, -1) if static else flat.view(T, -1)


def _sequence_like(spikes: Tensor, y: Tensor, T: int, static: bool) -> Tensor:
    """The LIF's ``[T, neurons]`` output as ``[T, B, C, ...]`` in y's layout."""
    if is_channels_last(y):
        n, c, h, w = y.shape
        return spikes.view(T, n if static else n // T, h, w, c).permute(0, 1, 4, 2, 3)
    return spikes.view(T, -1, *y.shape[1:])


def _time_major_grad(grad_spikes: Tensor, y: Tensor, T: int) -> Tensor:
    """The spikes' gradient ``[T, B, C, ...]`` as ``[T, neurons]`` in y's memory order (a copy only
    when it comes in another layout)."""
    if is_channels_last(y):
        return grad_spikes.permute(0, 1, 3, 4, 2).reshape(T, -1)
    return grad_spikes.reshape(T, -1)


def uses_batch_stats(bn: nn.Module) -> bool:
    """Whether ``bn`` normalises with the batch's statistics (train mode, or no running stats)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def bn_lif(x: Tensor, bn: nn.modules.batchnorm._BatchNorm, neuron: LIF, T: int, static: bool = False) -> Tensor:
    """``neuron(bn(x))`` for a batch norm in batch-statistics mode (:func:`uses_batch_stats`),
    saving only ``x`` for backward.

    Args:
        x: the BN input ``[T·B, C, ...]`` (time folded into the batch), or ``[B, C, ...]`` with
            ``static``: a static input whose BN output feeds the neuron at each of the T steps.
        bn: an ``nn.BatchNorm1d/2d/3d``; its running statistics and ``num_batches_tracked`` are
            updated as its own forward would.
        neuron: the :class:`LIF` (stateless: the membrane starts at the reset value).

    Returns spikes ``[T, B, C, ...]``.
    """
    if not uses_batch_stats(bn):
        raise ValueError("bn must use batch statistics (train mode or track_running_stats=False); "
                         "in eval mode call neuron(bn(x))")
    if neuron.return_v:
        raise ValueError("neuron must not return its membrane (return_v=False)")
    if not static and x.shape[0] % T:
        raise ValueError(f"x has {x.shape[0]} samples, not a multiple of T={T} (x must be [T·B, C, ...])")
    bn._check_input_dim(x)
    momentum = sync_bn.resolve_momentum(bn)
    return _BNLIF.apply(x, bn.weight, bn.bias, bn, momentum, bn.eps, T, static, lif_hyper(**neuron.kwargs),
                        sync_bn.sync_group(bn))
