"""LIF forward+backward on a CIFAR spiking-VGG activation [T, 32, 128, 32, 32] (4.2 M neurons per
step), float32, against the reference torch loop, snnTorch Leaky and SpikingJelly LIFNode(m).

Bytes the fused kernels must move per neuron-step: forward reads x, writes s and h (12 B),
backward reads grad_s and h, writes grad_x (12 B): 24 B in all. `copy` times a same-size
tensor copy (8 B per element: read + write) in the same run, as the bandwidth roofline."""

import pytest
import torch

from tna_kernels import functional as F
from tna_kernels import reference

from ._harness import run

SHAPES = {4: (4, 32, 128, 32, 32), 16: (16, 32, 128, 32, 32)}
PROVIDERS = ["tna", "reference", "snntorch", "spikingjelly", "copy"]


def _fwd_bwd(fn, x, grad):
    def step():
        x.grad = None
        out = fn(x)
        out.backward(grad)

    return step


def _make(provider, shape):
    n = 1
    for d in shape:
        n *= d
    x = (torch.randn(shape) * 1.5 + 0.6).requires_grad_()
    grad = torch.randn(shape)
    if provider == "tna":
        return _fwd_bwd(lambda x: F.lif(x, tau=2.0), x, grad), 24 * n
    if provider == "reference":
        v0 = torch.zeros(shape[1:])
        return _fwd_bwd(lambda x: reference.lif(x, v0, tau=2.0)[0], x, grad), None
    if provider == "snntorch":
        snn = pytest.importorskip("snntorch")
        from snntorch import surrogate

        leaky = snn.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero",
                          spike_grad=surrogate.atan(alpha=2.0))

        def snn_loop(x):
            mem = leaky.init_leaky()
            spikes = []
            for t in range(x.shape[0]):
                spk, mem = leaky(x[t], mem)
                spikes.append(spk)
            return torch.stack(spikes)

        return _fwd_bwd(snn_loop, x, grad), None
    if provider == "spikingjelly":
        pytest.importorskip("spikingjelly")
        from spikingjelly.activation_based import functional as sjf
        from spikingjelly.activation_based import neuron, surrogate

        node = neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(alpha=2.0),
                              step_mode="m", backend="torch")

        def sj(x):
            sjf.reset_net(node)
            return node(x)

        return _fwd_bwd(sj, x, grad), None
    if provider == "copy":
        src, dst = torch.randn(shape), torch.empty(shape)
        return (lambda: dst.copy_(src)), 8 * n
    raise ValueError(provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("T", [4, 16])
def test_lif_fwd_bwd(benchmark, T, provider):
    benchmark.group = f"lif fwd+bwd T={T} [T,32,128,32,32] fp32"
    fn, nbytes = _make(provider, SHAPES[T])
    slow = provider in ("reference", "snntorch", "spikingjelly")
    run(benchmark, fn, provider=provider, nbytes=nbytes, rounds=3 if slow else 10,
        shape=list(SHAPES[T]))
