"""Spiking VGG for 32×32 images (CIFAR), 8×8 digits and DVS frames."""

from torch import Tensor, nn

from ..nn.spiking import SeqToANN, SpikeMaxPool2d, TernaryLIFConv2d
from .common import check_input, readout

# Channel lists; "M" = 2×2 max-pool (keeps spikes binary, so the next layer's input stays 0/1).
VGG_CONFIGS = {
    "digits": [16, "M", 32, "M"],
    "tiny": [16, "M", 32, "M", 64, "M"],
    "small": [32, "M", 64, "M", 128, 128, "M"],
    "medium": [64, "M", 128, "M", 256, 256, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}


class SpikingVGG(nn.Module):
    """Conv3×3 (+BN +LIF) stacks with max-pooling and a time-averaged linear readout.

    Args:
        arch: a key of ``VGG_CONFIGS`` or an explicit list of channels / "M".
        in_channels, num_classes, input_size: 3/10/32 for CIFAR-10; 1/10/8 for digits; 2/10/48 for
            CIFAR10-DVS frames.
        T: time steps for static images (direct encoding: the first conv runs once, its output
            feeds every step). Frame inputs ``[T, B, C, H, W]`` bring their own T.
        ternary: ternary weights (STE) in the hidden layers; False = full precision.
        first_layer_fp / last_layer_fp: keep the first conv / the readout in full precision.
        width_mult: multiplies every channel count (twin width ablations).
        method: ternariser ("twn" or "absmean").
        neuron: LIF options (tau, v_threshold, v_reset, surrogate, alpha, detach_reset, ...).
        bn: batch norm after every conv (statistics over T·B); False uses conv biases instead.
    """

    def __init__(self, arch="small", in_channels: int = 3, num_classes: int = 10,
                 input_size: int = 32, T: int = 4, ternary: bool = True,
                 first_layer_fp: bool = True, last_layer_fp: bool = False,
                 width_mult: float = 1.0, method: str = "twn", neuron: dict | None = None,
                 bn: bool = True):
        super().__init__()
        cfg = VGG_CONFIGS[arch] if isinstance(arch, str) else list(arch)
        self.config = dict(name="vgg", arch=arch, in_channels=in_channels, num_classes=num_classes,
                           input_size=input_size, T=T, ternary=ternary, first_layer_fp=first_layer_fp,
                           last_layer_fp=last_layer_fp, width_mult=width_mult, method=method,
                           neuron=dict(neuron or {}), bn=bn)
        self.T, self.in_channels = T, in_channels
        layers, c, size = [], in_channels, input_size
        for v in cfg:
            if v == "M":
                layers.append(SeqToANN(SpikeMaxPool2d(2)))
                size //= 2
                continue
            out = max(1, int(round(v * width_mult)))
            first = not any(isinstance(m, TernaryLIFConv2d) for m in layers)
            layers.append(TernaryLIFConv2d(c, out, 3, padding=1, bias=not bn, bn=bn,
                                           ternary=ternary and not (first and first_layer_fp),
                                           method=method, T=T if first else None, spike_input=not first,
                                           **(neuron or {})))
            c = out
        if size < 1:
            raise ValueError(f"input_size {input_size} is too small for {len(cfg)} layers of {arch!r}")
        self.features = nn.Sequential(*layers)
        self.classifier = readout(c * size * size, num_classes, ternary and not last_layer_fp, method)

    def forward(self, x: Tensor) -> Tensor:
        """x: static ``[B, C, H, W]`` or frames ``[T, B, C, H, W]`` → logits ``[B, classes]``."""
        check_input(x, self.in_channels, "SpikingVGG")
        spikes = self.features(x)
        return self.classifier(spikes.flatten(2).mean(0))

    def pack(self):
        """Frozen inference network passing bit-packed spikes between its ternary layers; its
        predictions equal this model's in eval mode."""
        from .packed import PackedSpikingVGG

        return PackedSpikingVGG(self)
