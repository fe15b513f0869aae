"""Max-pooling of 0/1 spikes in training (``SpikeMaxPool2d``), forward + backward, on the pooled
activations of the training benchmark's spiking VGG (T·B = 128 samples), float32.

Providers:
  tna       ``tna::spike_max_pool2d`` and its backward: pooling + bit-packing, then the gradient
            routed from the bits (what ``SpikeMaxPool2d`` runs on the CPU)
  tna_channels_last  the same on channels-last spikes and gradient (the spike-path layers'
            layout): pooled in place, bits packed along channels, channels-last grad_x
  tna_grad_channels_last  NCHW spikes, channels-last grad_y (a first layer's pool in front of a
            spike-path conv, whose input gradient comes back channels-last): read in place
  unfused   the same result composed of pack_spikes + max_pool2d, then unpack_spikes +
            max_pool2d_with_indices + its backward per slice of samples (``SpikeMaxPool2d`` before,
            and its CUDA path now)
  torch     plain ``nn.MaxPool2d`` through autograd, saving the float input and int64 indices
            (what SpikingJelly and snnTorch networks run)
All timed as ``torch.autograd.grad`` of the pooled output w.r.t. the input. Bytes the fused path
must move (4-byte floats, n inputs, n/4 outputs for 2x2 pools): forward reads x twice (packing,
pooling), writes y and the bits (8n + n + n/8), backward reads grad_y and the bits and writes
grad_x (n + n/8 + 4n): ~14.3 n. Run:
    .venv/bin/python -m pytest benchmarks/bench_spike_pool.py --benchmark-only
"""

import pytest
import torch
from torch import nn

from tna_kernels.nn import SpikeMaxPool2d
from tna_kernels.ops.spike_pool import _spike_max_pool2d_backward_composed, _spike_max_pool2d_composed

from ._harness import run

SHAPES = [(128, 64, 32, 32), (128, 128, 16, 16), (128, 256, 8, 8)]
GEOMETRY = ([2, 2], [2, 2], [0, 0], [1, 1])


class _Unfused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y, bits = _spike_max_pool2d_composed(x, *GEOMETRY, False)
        ctx.save_for_backward(bits)
        ctx.shape = list(x.shape)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return _spike_max_pool2d_backward_composed(grad_y, ctx.saved_tensors[0], ctx.shape, *GEOMETRY, False)


@pytest.mark.parametrize("provider", ["tna", "tna_channels_last", "tna_grad_channels_last", "unfused", "torch"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_spike_max_pool_fwd_bwd(benchmark, shape, provider):
    benchmark.group = f"spike max-pool 2x2 fwd+bwd {list(shape)} fp32"
    layout = torch.channels_last if provider == "tna_channels_last" else torch.contiguous_format
    x = (torch.rand(shape) < 0.2).float().contiguous(memory_format=layout).requires_grad_()
    pool = _Unfused.apply if provider == "unfused" else nn.MaxPool2d(2) if provider == "torch" else SpikeMaxPool2d(2)
    grad_layout = torch.channels_last if provider == "tna_grad_channels_last" else layout
    g = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2).contiguous(memory_format=grad_layout)

    def step():
        return torch.autograd.grad(pool(x), x, g)

    n = x.numel()
    run(benchmark, step, provider=provider, nbytes=(14.3 * n) if provider.startswith("tna") else None,
        rounds=10, shape=list(shape), device="cpu")
