"""Batch norm with batch statistics (training), float32, on the BN inputs of the training
benchmark's spiking VGG (the static first layer [B, 64, 32, 32], then T·B = 128 samples).

Providers:
  tna       ``tna::batch_norm_forward``: torch's arithmetic and bits (tna_kernels/ops/batch_norm.py)
  torch     ``torch.native_batch_norm`` in training mode (what nn.BatchNorm2d runs)
and for the fused BN + LIF layer's backward, which needs the forward's output again:
  tna       ``tna::batch_norm_apply`` from the saved mean and invstd
  torch     ``torch.native_batch_norm`` run again on the saved input (the layer before)
Both update the running statistics. Bytes the forward must move: read x, write y (8 bytes per
element; the statistics' second pass over a block of channels is served from cache). Run:
    .venv/bin/python -m pytest benchmarks/bench_batch_norm.py --benchmark-only
"""

import pytest
import torch

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
