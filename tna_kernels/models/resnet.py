"""Spiking ResNet for CIFAR (ResNet-19 and ResNet-20 layouts): residual added to the membrane
current before the block's output neuron."""

from torch import Tensor, nn

from ..nn.lif import LIF
from ..nn.spiking import SeqToANN, TernaryLIFConv2d
from .common import check_input, readout

LAYOUTS = {  # (stem width, ((width, blocks, stride), ...))
    "resnet19": (128, ((128, 3, 1), (256, 3, 2), (512, 2, 2))),
    "resnet20": (16, ((16, 3, 1), (32, 3, 2), (64, 3, 2))),
    "resnet_tiny": (16, ((16, 1, 1), (32, 1, 2))),
}


class BasicBlock(nn.Module):
    """spikes → conv-BN-LIF → conv-BN (+ shortcut conv-BN or identity) → LIF → spikes."""

    def __init__(self, c_in: int, c_out: int, stride: int, ternary: bool, method: str, neuron: dict,
                 bn: bool = True):
        super().__init__()
        opts = dict(bias=not bn, bn=bn, ternary=ternary, method=method, spike_input=True)
        self.conv1 = TernaryLIFConv2d(c_in, c_out, 3, stride, 1, **opts, **neuron)
        self.conv2 = TernaryLIFConv2d(c_out, c_out, 3, 1, 1, lif=False, **opts)
        self.shortcut = (TernaryLIFConv2d(c_in, c_out, 1, stride, 0, lif=False, **opts)
                         if stride != 1 or c_in != c_out else None)
        self.neuron = LIF(**neuron)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return self.neuron(y + (x if self.shortcut is None else self.shortcut(x)))


class SpikingResNet(nn.Module):
    """ResNet-19 / ResNet-20 style spiking network; arguments as :class:`SpikingVGG`."""

    def __init__(self, arch: str = "resnet19", in_channels: int = 3, num_classes: int = 10,
                 input_size: int = 32, T: int = 4, ternary: bool = True, first_layer_fp: bool = True,
                 last_layer_fp: bool = False, width_mult: float = 1.0, method: str = "twn",
                 neuron: dict | None = None, bn: bool = True):
        super().__init__()
        if arch not in LAYOUTS:
            raise ValueError(f"arch must be one of {sorted(LAYOUTS)}, got {arch!r}")
        self.config = dict(name="resnet", arch=arch, in_channels=in_channels, num_classes=num_classes,
                           input_size=input_size, T=T, ternary=ternary, first_layer_fp=first_layer_fp,
                           last_layer_fp=last_layer_fp, width_mult=width_mult, method=method,
                           neuron=dict(neuron or {}), bn=bn)
        self.T, self.in_channels = T, in_channels
        neuron = dict(neuron or {})
        stem, stages = LAYOUTS[arch]
        width = lambda c: max(1, int(round(c * width_mult)))  # noqa: E731
        c = width(stem)
        self.stem = TernaryLIFConv2d(in_channels, c, 3, 1, 1, bias=not bn, bn=bn,
                                     ternary=ternary and not first_layer_fp, method=method, T=T, **neuron)
        blocks = []
        for w, n, stride in stages:
            for i in range(n):
                blocks.append(BasicBlock(c, width(w), stride if i == 0 else 1, ternary, method, neuron, bn))
                c = width(w)
        self.blocks = nn.Sequential(*blocks)
        self.pool = SeqToANN(nn.AdaptiveAvgPool2d(1))
        self.classifier = readout(c, num_classes, ternary and not last_layer_fp, method)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_channels, "SpikingResNet")
        y = self.pool(self.blocks(self.stem(x)))
        return self.classifier(y.flatten(2).mean(0))

    def pack(self):
        """Frozen inference network passing bit-packed spikes between blocks; its predictions
        equal this model's in eval mode."""
        from .packed import PackedSpikingResNet

        return PackedSpikingResNet(self)
