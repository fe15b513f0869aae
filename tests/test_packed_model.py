"""Packed inference (bit-packed spikes between ternary layers) ≡ the unpacked model in eval mode."""

import pytest
import torch
from torch import nn

from tna_kernels import functional as F
from tna_kernels import nn as tnn
from tna_kernels.models import SpikingVGG


def trained_like(model, x, steps=3):
    """Random weights plus the BN running statistics of the data (cumulative averages)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    return model.eval()


def hidden_rates(model, x):
    return [r for name, r in tnn.firing_rates(model, x).items() if name != "features.0"]


@pytest.mark.parametrize("arch,T,input_size,in_channels,frames", [
    ([24, "M", 72, "M", 100, 70, "M"], 4, 32, 3, False),  # channel counts not multiples of 64
    ("tiny", 1, 32, 3, False),
    ([16, "M", 130, 65], 3, 20, 3, False),  # > 2 words of channels, odd sizes
    ("tiny", 5, 48, 2, True),  # DVS-style frames [T, B, 2, H, W]
])
def test_packed_equals_unpacked(arch, T, input_size, in_channels, frames):
    torch.manual_seed(3)
    model = SpikingVGG(arch, in_channels=in_channels, input_size=input_size, T=T)
    shape = (T, 6, in_channels, input_size, input_size) if frames else (6, in_channels, input_size, input_size)
    x = (torch.rand(shape) < 0.3).float() if frames else torch.randn(shape)
    trained_like(model, x)
    rates = hidden_rates(model, x)
    assert all(0.0 < r < 1.0 for r in rates), rates  # the comparison exercises real spikes
    packed = model.pack()
    with torch.no_grad():
        want = model(x)
        got = packed(x)
    assert torch.equal(got, want)
    assert any(isinstance(m, tnn.PackedLIFConv2d) for m in packed.modules())


def test_or_pool_is_max_pool_of_spikes():
    s = (torch.rand(3, 70, 9, 8) < 0.2).float()
    bits = F.pack_spikes(s, dim=1)
    pooled = F.unpack_spikes(tnn.or_pool2d(bits), 70, dim=1)
    assert torch.equal(pooled, nn.functional.max_pool2d(s, 2))


def test_packed_layer_state_dict_carries_format_version():
    layer = tnn.TernaryLIFConv2d(64, 16, 3, padding=1).eval()
    p = tnn.PackedLIFConv2d(layer)
    assert int(p.state_dict()["format_version"]) == 1
    # 2 bits per weight when the packed axis (input channels) fills whole 64-bit words: 16x
    assert p.words.dtype == torch.int64 and p.words.numel() * 8 * 16 == layer.weight.numel() * 4
    with pytest.raises(ValueError, match="ternary"):
        tnn.PackedLIFConv2d(tnn.TernaryLIFConv2d(8, 16, 3, ternary=False))
    with pytest.raises(TypeError, match="packed inference form"):
        tnn.pack(nn.Linear(2, 2))


@pytest.mark.parametrize("arch,width,T", [("resnet_tiny", 1.5, 3), ("resnet20", 1.0, 2)])
def test_packed_resnet_equals_unpacked(arch, width, T):
    from tna_kernels.models import SpikingResNet

    torch.manual_seed(5)
    model = SpikingResNet(arch, T=T, width_mult=width)
    x = torch.randn(4, 3, 32, 32)
    trained_like(model, x)
    packed = model.pack()
    with torch.no_grad():
        want, got = model(x), packed(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # pooling may sum in another order
    assert sum(isinstance(m, tnn.PackedLIFConv2d) for m in packed.modules()) >= 2
