"""Batch norm with batch statistics (training), float32, on the BN inputs of the training
benchmark's spiking VGG (the static first layer [B, 64, 32, 32], then T·B = 128 samples).

Providers:
  tna       ``tna::batch_norm_forward``: torch's arithmetic and bits (tna_kernels/ops/batch_norm.py)
  torch     ``torch.native_batch_norm`` in training mode (what nn.BatchNorm2d runs)
and for the fused BN + LIF layer's backward, which needs the forward's output again:
  tna       ``tna::batch_norm_apply`` from the saved mean and invstd
  torch     ``torch.native_batch_norm`` run again on the saved input (the layer before)
and batch norm + LIF over a channels-last input (the spike conv's output; T = 4), both ways:
  tna          ``tna::batch_norm_lif_forward`` / ``_backward``: fused, the BN output never stored
  tna_unfused  ``tna::batch_norm_forward`` + ``tna::lif_fwd``; backward ``tna::batch_norm_apply`` +
               ``tna::lif_bwd_recompute`` + ``tna::batch_norm_backward_channels_last``
Both update the running statistics. Bytes the forward must move: read x, write y (8 bytes per
element; the statistics' second pass over a block of channels is served from cache). Run:
    .venv/bin/python -m pytest benchmarks/bench_batch_norm.py --benchmark-only
"""

import pytest
import torch

from tna_kernels.ops.lif import _lif_hyper

from ._harness import run

SHAPES = [(32, 64, 32, 32), (128, 128, 16, 16), (128, 256, 8, 8)]


def _inputs(shape):
    c = shape[1]
    return torch.randn(shape) * 2 + 0.5, torch.rand(c) + 0.5, torch.randn(c), torch.zeros(c), torch.ones(c)


@pytest.mark.parametrize("provider", ["tna", "torch"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_forward(benchmark, shape, provider):
    benchmark.group = f"batch norm forward (training) {list(shape)} fp32"
    x, w, b, rm, rv = _inputs(shape)
    if provider == "tna":
        def step():
            return torch.ops.tna.batch_norm_forward(x, w, b, rm, rv, 0.1, 1e-5)
    else:
        def step():
            return torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    run(benchmark, step, provider=provider, nbytes=8 * x.numel(), rounds=20, shape=list(shape), device="cpu")


@pytest.mark.parametrize("provider", ["tna", "torch"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_recompute(benchmark, shape, provider):
    benchmark.group = f"batch norm output again in backward {list(shape)} fp32"
    x, w, b, _, _ = _inputs(shape)
    _, mean, invstd = torch.ops.tna.batch_norm_forward(x, w, b, None, None, 0.1, 1e-5)
    if provider == "tna":
        def step():
            return torch.ops.tna.batch_norm_apply(x, mean, invstd, w, b)
    else:
        def step():
            return torch.native_batch_norm(x, w, b, None, None, True, 0.0, 1e-5)
    run(benchmark, step, provider=provider, nbytes=8 * x.numel(), rounds=20, shape=list(shape), device="cpu")


T = 4
CL_SHAPES = [(128, 128, 16, 16), (128, 256, 8, 8), (256, 32, 16, 16)]  # [T*B, C, H, W]: medium and tiny VGG
HYPER = _lif_hyper(tau=2.0)


def _cl_inputs(shape):
    x, w, b, rm, rv = _inputs(shape)
    return x.contiguous(memory_format=torch.channels_last), w, b, rm, rv


def _time_major(t):
    return t.permute(0, 2, 3, 1).reshape(T, -1)


@pytest.mark.parametrize("provider", ["tna", "tna_unfused"])
@pytest.mark.parametrize("shape", CL_SHAPES, ids=str)
def test_batch_norm_lif_forward(benchmark, shape, provider):
    benchmark.group = f"batch norm + LIF forward (training) {list(shape)} channels-last fp32, T={T}"
    x, w, b, rm, rv = _cl_inputs(shape)
    if provider == "tna":
        def step():
            return torch.ops.tna.batch_norm_lif_forward(x, w, b, rm, rv, 0.1, 1e-5, T, *HYPER)
    else:
        def step():
            y = torch.ops.tna.batch_norm_forward(x, w, b, rm, rv, 0.1, 1e-5)[0]
            return torch.ops.tna.lif_fwd(_time_major(y), None, *HYPER, False)
    # the fused op's floor: read x twice (statistics, then normalise + LIF), write spikes
    run(benchmark, step, provider=provider, nbytes=12 * x.numel(), rounds=20, shape=list(shape), device="cpu")


@pytest.mark.parametrize("provider", ["tna", "tna_unfused"])
@pytest.mark.parametrize("shape", CL_SHAPES, ids=str)
def test_batch_norm_lif_backward(benchmark, shape, provider):
    benchmark.group = f"batch norm + LIF backward {list(shape)} channels-last fp32, T={T}"
    x, w, b, _, _ = _cl_inputs(shape)
    _, mean, invstd = torch.ops.tna.batch_norm_lif_forward(x, w, b, None, None, 0.1, 1e-5, T, *HYPER)
    gs = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    mask = [True, True, True]
    if provider == "tna":
        def step():
            return torch.ops.tna.batch_norm_lif_backward(gs, x, mean, invstd, w, b, T, *HYPER, mask)
    else:
        def step():
            y = torch.ops.tna.batch_norm_apply(x, mean, invstd, w, b)
            g = torch.ops.tna.lif_bwd_recompute(_time_major(gs), None, _time_major(y), None, *HYPER)[0]
            gy = g.view(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2)
            return torch.ops.tna.batch_norm_backward_channels_last(gy, x, mean, invstd, w, mask)
    # the fused op's floor: read grad_spikes and x, write grad_x; then read it and x, write grad_x
    run(benchmark, step, provider=provider, nbytes=20 * x.numel(), rounds=20, shape=list(shape), device="cpu")
