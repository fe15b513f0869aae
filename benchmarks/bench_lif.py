"""LIF forward+backward on a CIFAR spiking-VGG activation [T, 32, 128, 32, 32] (4.2 M neurons per
step), float32, against the reference torch loop, snnTorch Leaky and SpikingJelly LIFNode(m).

Bytes the fused kernels must move per neuron-step: on the CPU the forward reads x and writes s
(8 B) and the backward reads x and grad_s and writes grad_x (12 B; the membrane is recomputed in
cache): 20 B. On CUDA the forward also writes h and the backward reads it instead of x: 24 B.
`copy` times a same-size tensor copy (8 B per element: read + write) in the same run, as the
bandwidth roofline."""

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


def _make(provider, shape, device):
    n = 1
    for d in shape:
        n *= d
    x = (torch.randn(shape, device=device) * 1.5 + 0.6).requires_grad_()
    grad = torch.randn(shape, device=device)
    if provider == "tna":
        return _fwd_bwd(lambda x: F.lif(x, tau=2.0), x, grad), (20 if device == "cpu" else 24) * n
    if provider == "reference":
        v0 = torch.zeros(shape[1:], device=device)
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
                              step_mode="m")  # SpikingJelly 2.0 on CPU: its torch path

        def sj(x):
            sjf.reset_net(node)
            return node(x)

        return _fwd_bwd(sj, x, grad), None
    if provider == "copy":
        src, dst = torch.randn(shape, device=device), torch.empty(shape, device=device)
        return (lambda: dst.copy_(src)), 8 * n
    raise ValueError(provider)


def _synced(fn):
    def step():
        fn()
        torch.cuda.synchronize()

    return step


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("T", [4, 16])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_lif_fwd_bwd(benchmark, device, T, provider):
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        if provider in ("snntorch", "spikingjelly"):
            pytest.skip("peers are compared on the CPU")
    benchmark.group = f"lif fwd+bwd {device} T={T} [T,32,128,32,32] fp32"
    fn, nbytes = _make(provider, SHAPES[T], device)
    if device == "cuda":
        fn = _synced(fn)
    slow = provider in ("reference", "snntorch", "spikingjelly")
    run(benchmark, fn, provider=provider, nbytes=nbytes, rounds=3 if slow else 10,
        shape=list(SHAPES[T]), device=device)


@pytest.mark.parametrize("surrogate", ["atan", "sigmoid", "fast_sigmoid", "triangle", "rectangle"])
def test_lif_surrogates_cpu(benchmark, surrogate):
    """Ours only, T = 4: what each surrogate's backward arithmetic costs on top of the memory traffic."""
    shape = SHAPES[4]
    benchmark.group = f"lif fwd+bwd cpu T=4 by surrogate {list(shape)} fp32"
    x = (torch.randn(shape) * 1.5 + 0.6).requires_grad_()
    fn = _fwd_bwd(lambda x: F.lif(x, tau=2.0, surrogate=surrogate), x, torch.randn(shape))
    run(benchmark, fn, provider=surrogate, rounds=10, shape=list(shape), device="cpu")
