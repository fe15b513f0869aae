"""A full TNA training step (base + twin forward, twin loss, backward, SGD) of the same spiking VGG
(64-128-256-256 channels, ternary STE weights, T = 4, batch 32, 32×32 input), built three ways:
with this library's layers, from SpikingJelly layers (LIF step_mode="m"), and from snnTorch layers
(a per-step loop, as snnTorch networks are written). Reported as images per second.

Peers use the same ternariser (TWN per output channel, straight-through) written in plain torch,
BN over T·B, max-pooling, and a time-averaged linear readout; the loss is CE + CE + λ·MSE."""

import pytest
import torch
from torch import nn

from tna_kernels import functional as F
from tna_kernels.models import SpikingVGG, make_twin
from tna_kernels.nn import set_recompute

from ._harness import run

B, T, ARCH = 32, 4, "medium"
CHANNELS = [64, "M", 128, "M", 256, 256, "M"]


def ternary_ste_torch(w):
    """TWN per output channel with a straight-through gradient, in plain torch (for the peers)."""
    flat = w.detach().flatten(1).abs()
    delta = 0.7 * flat.mean(1, keepdim=True)
    mask = flat > delta
    scale = (flat * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    q = (torch.sign(w.detach().flatten(1)) * mask * scale).view_as(w)
    return w + (q - w).detach()


class TernaryConvSTE(nn.Conv2d):
    def __init__(self, *args, ternary=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.ternary = ternary

    def forward(self, x):
        w = ternary_ste_torch(self.weight) if self.ternary else self.weight
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def spikingjelly_vgg(channels=CHANNELS):
    from spikingjelly.activation_based import layer, neuron, surrogate

    mods, c, first = [], 3, True
    for v in channels:
        if v == "M":
            mods.append(layer.MaxPool2d(2, step_mode="m"))
            continue
        conv = TernaryConvSTE(c, v, 3, padding=1, bias=False, ternary=not first)
        mods += [layer.SeqToANNContainer(conv, nn.BatchNorm2d(v)),
                 neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), step_mode="m")]
        c, first = v, False
    features = nn.Sequential(*mods)
    head = nn.Linear(c * (32 >> channels.count("M")) ** 2, 10)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.head = features, head

        def forward(self, x):
            from spikingjelly.activation_based import functional as sjf

            sjf.reset_net(self)
            s = self.features(x.unsqueeze(0).repeat(T, 1, 1, 1, 1))
            return self.head(s.flatten(2).mean(0))

    return Net()


def snntorch_vgg():
    import snntorch as snn
    from snntorch import surrogate

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            convs, bns, lifs, c, first = [], [], [], 3, True
            for v in CHANNELS:
                if v == "M":
                    continue
                convs.append(TernaryConvSTE(c, v, 3, padding=1, bias=False, ternary=not first))
                bns.append(nn.BatchNorm2d(v))
                lifs.append(snn.Leaky(beta=0.5, reset_mechanism="zero", spike_grad=surrogate.atan()))
                c, first = v, False
            self.convs, self.bns, self.lifs = nn.ModuleList(convs), nn.ModuleList(bns), nn.ModuleList(lifs)
            self.head = nn.Linear(c * 16, 10)

        def forward(self, x):
            mems = [lif.init_leaky() for lif in self.lifs]
            total = 0
            for _ in range(T):
                s, i = x, 0
                for v in CHANNELS:
                    if v == "M":
                        s = nn.functional.max_pool2d(s, 2)
                        continue
                    s, mems[i] = self.lifs[i](self.bns[i](self.convs[i](s)), mems[i])
                    i += 1
                total = total + self.head(s.flatten(1))
            return total / T

    return Net()


def _step_fn(base, twin, fused_loss, batch=B):
    params = list(base.parameters()) + list(twin.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    def step():  # fresh inputs each step, as a training loop's
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        opt.zero_grad(set_to_none=True)
        lb, lt = base(x), twin(x)
        if fused_loss:
            loss = F.twin_loss(lb, lt, y, mse_weight=0.005)
        else:
            loss = (nn.functional.cross_entropy(lb, y) + nn.functional.cross_entropy(lt, y)
                    + 0.005 * ((lb - lt) ** 2).sum() / batch)
        loss.backward()
        opt.step()

    return step


@pytest.mark.parametrize("provider", ["tna", "tna_no_recompute", "spikingjelly", "snntorch"])
def test_tna_train_step(benchmark, provider):
    benchmark.group = f"TNA training step, spiking VGG 64-128-256-256, T={T}, batch {B}"
    torch.manual_seed(0)
    if provider.startswith("tna"):  # tna_no_recompute: set_recompute(False), more memory, no recompute
        base = SpikingVGG(ARCH, T=T)
        twin = make_twin(base, 1)
        for net in (base, twin):
            set_recompute(net, provider == "tna")
        step = _step_fn(base, twin, fused_loss=True)
    elif provider == "spikingjelly":
        pytest.importorskip("spikingjelly")
        step = _step_fn(spikingjelly_vgg(), spikingjelly_vgg(), fused_loss=False)
    else:
        pytest.importorskip("snntorch")
        step = _step_fn(snntorch_vgg(), snntorch_vgg(), fused_loss=False)
    run(benchmark, step, provider=provider, rounds=3, images=B)
