"""Twin loss, forward + backward (both logit gradients), float32, against the unfused torch
composition ``F.cross_entropy(a) + F.cross_entropy(b) + λ·F.mse_loss(a, b, reduction="sum") / B``.

Providers:
  unfused  the composition above through torch autograd (what a training script writes)
  tna      ``tna_kernels.functional.twin_loss`` (fused forward writing both gradients; the backward
           scales them by grad_output)
Both are timed as ``torch.autograd.grad(loss, (a, b))``, so no ``.grad`` accumulation is timed.

Bytes the fused path must move (4-byte floats, N = B·C): forward reads a and b and writes both
gradients (16 N), backward reads the two saved gradients and writes the scaled ones (16 N), plus
the target (8 B): ``32 N + 8 B`` in all. Run:
    .venv/bin/python -m pytest benchmarks/bench_twin_loss.py --benchmark-only
"""

import pytest
import torch
import torch.nn.functional as tF

from tna_kernels import functional as F

LAMBDA = 0.005
SHAPES = [(128, 10), (128, 100), (128, 1000), (1024, 10), (1024, 100), (1024, 1000)]


def _make(provider, B, C):
    a = torch.randn(B, C, requires_grad=True)
    b = torch.randn(B, C, requires_grad=True)
    y = torch.randint(0, C, (B,))
    if provider == "unfused":
        def step():
            loss = (tF.cross_entropy(a, y) + tF.cross_entropy(b, y)
                    + LAMBDA * tF.mse_loss(a, b, reduction="sum") / B)
            return torch.autograd.grad(loss, (a, b))
    elif provider == "tna":
        def step():
            loss = F.twin_loss(a, b, y, mse_weight=LAMBDA, mse_reduction="sum_over_batch")
            return torch.autograd.grad(loss, (a, b))
    else:
        raise ValueError(provider)
    return step


@pytest.mark.parametrize("provider", ["unfused", "tna"])
@pytest.mark.parametrize("B,C", [
    pytest.param(B, C, marks=pytest.mark.benchmark(group=f"twin_loss B={B} C={C}"), id=f"B{B}-C{C}")
    for B, C in SHAPES])
def test_twin_loss_fwd_bwd(benchmark, provider, B, C):
    step = _make(provider, B, C)
    for _ in range(3):  # warm up (allocator, OpenMP pool)
        step()
    benchmark.extra_info.update(provider=provider, bytes=32 * B * C + 8 * B,
                                threads=torch.get_num_threads(), dtype="float32")
    benchmark(step)
