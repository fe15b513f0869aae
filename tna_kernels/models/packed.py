"""``model.pack()`` for the VGG family: a frozen inference network whose hidden ternary layers pass
bit-packed spikes (see :mod:`tna_kernels.nn.packed`)."""

from __future__ import annotations

import copy

from torch import Tensor, nn

from .. import functional as F
from ..nn.packed import PackedConv2d, PackedLIFConv2d, lif_pack, or_pool2d
from ..nn.spiking import SeqToANN, TernaryLIFConv2d
from .common import check_input


class PackedSpikingVGG(nn.Module):
    """Inference form of a :class:`SpikingVGG` (build it with ``model.pack()``). The first layer
    (float image input, direct encoding) is computed once and reused for every step; every
    following ternary conv runs on packed spikes; the readout is the model's own."""

    def __init__(self, model) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()
        self.config, self.T, self.in_channels = model.config, model.T, model.in_channels
        layers = list(model.features)
        if not isinstance(layers[0], TernaryLIFConv2d):
            raise ValueError("a SpikingVGG starts with a conv layer")
        self.first = layers[0]
        ops, channels = [], self.first.out_channels
        for layer in layers[1:]:
            if isinstance(layer, SeqToANN) and isinstance(layer.body, nn.MaxPool2d):
                k = layer.body.kernel_size
                if layer.body.stride not in (k, None) or layer.body.padding != 0:
                    raise ValueError("only non-overlapping max-pooling maps onto packed spikes")
                ops.append(("pool", k))
            elif isinstance(layer, TernaryLIFConv2d) and layer.ternary:
                ops.append(("conv", PackedLIFConv2d(layer)))
                channels = layer.out_channels
            else:
                ops.append(("float", layer))  # full-precision hidden layer: unpack, run, repack
                channels = layer.out_channels
        self.ops = ops
        self.modules_ = nn.ModuleList(m for kind, m in ops if kind != "pool")
        self.channels = channels
        # A ternary readout is frozen in packed form too (same arithmetic as its eval path).
        self.classifier = model.classifier.pack() if hasattr(model.classifier, "pack") else model.classifier

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_channels, "PackedSpikingVGG")
        spikes = self.first(x)
        T, c = spikes.shape[0], self.first.out_channels
        bits = F.pack_spikes(spikes.flatten(0, 1), dim=1)
        for kind, op in self.ops:
            if kind == "pool":
                bits = or_pool2d(bits, op if isinstance(op, int) else op[0])
            elif kind == "conv":
                bits, c = op(bits, T), op.out_channels
            else:
                s = F.unpack_spikes(bits, c, dim=1).unflatten(0, (T, -1))
                out = op(s)
                c = out.shape[2]
                bits = F.pack_spikes(out.flatten(0, 1), dim=1)
        spikes = F.unpack_spikes(bits, c, dim=1).unflatten(0, (T, -1))  # [T, B, C, H, W]
        return self.classifier(spikes.flatten(2).mean(0))


class PackedSpikingResNet(nn.Module):
    """Inference form of a :class:`SpikingResNet` (``model.pack()``): bit-packed spikes between
    blocks; inside a block the second conv and the shortcut give float currents (channels last)
    that are added before the block's neuron, as in the unpacked model."""

    def __init__(self, model) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()
        self.config, self.T, self.in_channels = model.config, model.T, model.in_channels
        self.stem = model.stem
        blocks = []
        for block in model.blocks:
            if not (block.conv1.ternary and block.conv2.ternary):
                raise ValueError("pack() needs ternary residual blocks (model built with ternary=True)")
            shortcut = None if block.shortcut is None else PackedConv2d(block.shortcut)
            blocks.append(nn.ModuleDict({"conv1": PackedLIFConv2d(block.conv1), "conv2": PackedConv2d(block.conv2),
                                         **({"shortcut": shortcut} if shortcut is not None else {})}))
            blocks[-1].neuron_kwargs = dict(block.neuron.kwargs)
            blocks[-1].channels = block.conv2.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.classifier = model.classifier.pack() if hasattr(model.classifier, "pack") else model.classifier

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_channels, "PackedSpikingResNet")
        spikes = self.stem(x)
        T, c = spikes.shape[0], self.stem.out_channels
        bits = F.pack_spikes(spikes.flatten(0, 1), dim=1)
        for block in self.blocks:
            y = block["conv2"].current(block["conv1"](bits, T))
            skip = block["shortcut"].current(bits) if "shortcut" in block else F.unpack_spikes(bits, c)
            bits, c = lif_pack(y + skip, T, block.neuron_kwargs), block.channels
        s = F.unpack_spikes(bits, c)  # [T·B, H, W, C]
        pooled = s.mean((1, 2)).unflatten(0, (T, -1))  # adaptive average pool to 1×1: [T, B, C]
        return self.classifier(pooled.mean(0))
