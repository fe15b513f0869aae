"""The packed-inference layer step: spike × ternary conv with the LIF in its epilogue writing packed
spikes (``spike_ternary_conv2d_lif``), against the same three steps run separately (conv to a float
current, ``lif`` to float spikes, ``pack_spikes``), and ``lif_pack`` against ``lif`` + ``pack_spikes``.
Spiking-VGG layer shapes, T = 4, batch 32, 15 % input spikes."""

import pytest
import torch

from tna_kernels import functional as F

from ._harness import run

T, B = 4, 32
NEURON = dict(tau=2.0, v_threshold=1.0, v_reset=0.0)
LAYERS = [(32, 64, 16), (64, 128, 8), (128, 128, 8)]  # (C_in, C_out, H = W)


def _layer(C, N, H):
    torch.manual_seed(0)
    codes = torch.randint(-1, 2, (N, C, 3, 3)).to(torch.int8)
    packed = F.pack_ternary(codes, torch.rand(N) * 0.1 + 0.05, torch.randn(N) * 0.1)
    bits = F.pack_spikes((torch.rand(T * B, C, H, H) < 0.15).float(), dim=1)
    return packed, bits


@pytest.mark.parametrize("provider", ["fused", "conv_lif_pack"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda s: f"conv{s[0]}-{s[1]}@{s[2]}")
def test_conv_lif(benchmark, provider, layer):
    benchmark.group = f"spike conv + LIF -> packed spikes, {layer}, T={T}, B={B}"
    packed, bits = _layer(*layer)

    def fused():
        return F.spike_ternary_conv2d_lif(bits, packed, T, 1, 1, **NEURON)

    def separate():
        y = F.spike_ternary_conv2d(bits, packed, 1, 1).permute(0, 2, 3, 1)
        return F.pack_spikes(F.lif(y.unflatten(0, (T, B)), **NEURON).flatten(0, 1), dim=-1)

    fn = fused if provider == "fused" else separate
    run(benchmark, fn, provider=provider, rounds=20)


@pytest.mark.parametrize("provider", ["lif_pack", "lif_then_pack"])
def test_lif_pack(benchmark, provider):
    benchmark.group = f"LIF -> packed spikes, [{T}, {B}, 16, 16, 128] channels last"
    x = torch.randn(T, B, 16, 16, 128) + 0.5
    fn = (lambda: F.lif_pack(x, **NEURON)) if provider == "lif_pack" else \
        (lambda: F.pack_spikes(F.lif(x, **NEURON), dim=-1))
    run(benchmark, fn, provider=provider, rounds=20, nbytes=x.numel() * 4 + x.numel() // 8)
