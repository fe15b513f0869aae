"""Training a spike-input ternary conv: the spike path (popcount forward, event-driven weight
gradient) against dense QAT (torch's conv on ``codes * scale``), at the spiking VGG's layers
(benchmarks/bench_train_step.py: T = 4 and B = 32 folded into 128 samples), by spike density.

Groups:
  weight gradient   ``tna::spike_conv2d_grad_weight`` on the bit-packed input (``tna``) vs
                    ``nn.grad.conv2d_weight`` on the float 0/1 input (``torch_fp32``) and on the
                    input unpacked from the bits first (``torch_fp32_unpack``, dense QAT's backward
                    as this library saves its input)
  layer fwd+bwd     one training forward + backward of the layer (quantisation, forward,
                    grad_input, grad_weight): ``spike_ternary_conv2d_ste`` with path ``spike``
                    (``tna``) vs path ``dense`` (``dense_qat``)
Fresh gradients each call come from a pool made outside the timed region.
Run: python -m pytest benchmarks/bench_spike_train.py --benchmark-only   (TNA_BENCH_THREADS=1: one thread)
"""


import pytest
import torch

from tna_kernels import functional as F

pytestmark = pytest.mark.usefixtures("bench_threads")

N_SAMPLES = 128  # T = 4 x batch 32
LAYERS = {"64->128 3x3 @16x16": (64, 128, 16), "128->256 3x3 @8x8": (128, 256, 8),
          "256->256 3x3 @8x8": (256, 256, 8)}
DENSITIES = (0.05, 0.15, 0.3)


def _inputs(C, N, H, density, pool=3):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(N_SAMPLES, C, H, H, generator=g) < density).float()
    grads = [torch.randn(N_SAMPLES, N, H, H, generator=g) for _ in range(pool)]
    return x, grads


def _cycle(items):
    state = {"i": 0}

    def nxt():
        state["i"] += 1
        return items[state["i"] % len(items)]
    return nxt


def _info(benchmark, provider, C, N, H, density):
    flops = 2 * N_SAMPLES * H * H * C * 9 * N
    benchmark.extra_info.update(provider=provider, flops=flops, density=density, threads=torch.get_num_threads(),
                                isa=torch.ops.tna.ternary_cpu_isa())


@pytest.mark.parametrize("provider", ["tna", "torch_fp32", "torch_fp32_unpack"])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_grad_weight(benchmark, layer, density, provider):
    C, N, H = LAYERS[layer]
    benchmark.group = f"weight gradient {layer}, density {density:.0%}"
    x, grads = _inputs(C, N, H, density)
    bits = F.pack_spikes(x, dim=1)
    grad = _cycle(grads)
    if provider == "tna":
        def fn():
            torch.ops.tna.spike_conv2d_grad_weight(grad(), bits, C, [3, 3], [1, 1], [1, 1], [1, 1])
    elif provider == "torch_fp32":
        def fn():
            torch.nn.grad.conv2d_weight(x, (N, C, 3, 3), grad(), 1, 1, 1)
    else:
        def fn():
            torch.nn.grad.conv2d_weight(F.unpack_spikes(bits, C, dim=1), (N, C, 3, 3), grad(), 1, 1, 1)
    _info(benchmark, provider, C, N, H, density)
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("provider", ["tna", "dense_qat"])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_forward_backward(benchmark, layer, density, provider):
    C, N, H = LAYERS[layer]
    benchmark.group = f"layer fwd+bwd {layer}, density {density:.0%}"
    x, grads = _inputs(C, N, H, density)
    x.requires_grad_()
    w = (torch.randn(N, C, 3, 3) * 0.05).requires_grad_()
    grad = _cycle(grads)
    path = "spike" if provider == "tna" else "dense"

    def fn():
        y = F.spike_ternary_conv2d_ste(x, w, None, 1, 1, 1, path=path)
        torch.autograd.grad(y, [x, w], grad())
    _info(benchmark, provider, C, N, H, density)
    benchmark.extra_info["flops"] *= 3
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=2)
