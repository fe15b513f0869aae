"""Inference (no grad) of the small spiking VGG (32-64-128-128 channels) on 32×32 images, T = 4,
batch 32: the packed model (bit-packed spikes between ternary layers) against the same trained
model unpacked in eval mode, the same architecture as users build it today in float32 torch
(conv + BN, a Python LIF loop over T), and built from SpikingJelly layers where installed.
Reported as images per second; the weight bytes of each form are in extra_info."""

import pytest
import torch
from torch import nn

from tna_kernels.models import SpikingVGG

from ._harness import run

B, T = 32, 4


def _trained_like(model, x):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


class TorchLoopVGG(nn.Module):
    """Float32 conv + BN per step and a Python LIF loop: the unfused way (same weights)."""

    def __init__(self, model: SpikingVGG):
        super().__init__()
        self.model = model

    def forward(self, x):
        from tna_kernels.nn.spiking import SeqToANN, TernaryLIFConv2d

        mems, out = {}, 0
        for _ in range(T):
            s = x
            for i, layer in enumerate(self.model.features):
                if isinstance(layer, SeqToANN):
                    s = layer.body(s)
                    continue
                assert isinstance(layer, TernaryLIFConv2d)
                w = layer.ternary_weight() if layer.ternary else layer.weight
                h_in = layer.bn(nn.functional.conv2d(s, w, layer.bias, layer.stride, layer.padding))
                v = mems.get(i, torch.zeros_like(h_in))
                h = v + (h_in - v) / 2.0
                s = (h >= 1.0).float()
                mems[i] = h * (1 - s)
            out = out + s.flatten(1)
        return self.model.classifier(out / T)


@pytest.mark.parametrize("provider", ["tna_packed", "tna_eval", "torch_fp32_loop", "spikingjelly"])
def test_packed_inference(benchmark, provider):
    benchmark.group = f"inference, spiking VGG 32-64-128-128, T={T}, batch {B}"
    torch.manual_seed(0)
    x = torch.randn(B, 3, 32, 32)
    model = _trained_like(SpikingVGG("small", T=T), x)
    fp32_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if provider == "tna_packed":
        net = model.pack()
        nbytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    elif provider == "tna_eval":
        net, nbytes = model, fp32_bytes
    elif provider == "torch_fp32_loop":
        net, nbytes = TorchLoopVGG(model).eval(), fp32_bytes
    else:
        pytest.importorskip("spikingjelly")
        from .bench_train_step import spikingjelly_vgg

        net, nbytes = spikingjelly_vgg([32, "M", 64, "M", 128, 128, "M"]).eval(), fp32_bytes

    def infer():
        with torch.no_grad():
            net(x)

    run(benchmark, infer, provider=provider, rounds=5, images=B, weight_bytes=nbytes)
