"""Packed inference: spiking layers that pass **bit-packed spikes** between them.

A ternary spiking conv runs as one spike × ternary GEMM over all T·B samples (exact integer
accumulation via popcount, eval-mode batch norm folded into the per-channel scale and bias) with
the LIF in its epilogue: each tile of output pixels goes through time and leaves as spikes
bit-packed along channels for the next layer (``functional.spike_ternary_conv2d_lif``).
Between layers there is 1 bit per spike instead of 4 bytes; the float current stays in the tile.
Max-pooling binary spikes is a bitwise OR of the packed words. The arithmetic equals
:class:`TernaryLIFConv2d` in eval mode, so a packed network reproduces the unpacked network's
spikes exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import functional as F
from ..ops.ternary import FORMAT_VERSION, PackedTernary


def or_pool2d(bits: Tensor, kernel: int = 2) -> Tensor:
    """Max-pool (kernel = stride) of bit-packed binary spikes ``[N, H, W, CW]``: a bitwise OR."""
    n, h, w, cw = bits.shape
    if h % kernel or w % kernel:
        bits = bits[:, : h - h % kernel, : w - w % kernel]  # floor, like nn.MaxPool2d
        h, w = bits.shape[1:3]
    v = bits.reshape(n, h // kernel, kernel, w // kernel, kernel, cw)
    out = v[:, :, 0, :, 0]
    for i in range(kernel):
        for j in range(kernel):
            if i or j:
                out = out | v[:, :, i, :, j]
    return out


class PackedConv2d(nn.Module):
    """Frozen packed form of a ternary :class:`TernaryLIFConv2d` without its neuron (BN folded):
    ``current(bits)`` maps packed spikes ``[N, H, W, ceil(C/64)]`` to the float32 pre-neuron
    current ``[N, H', W', C']`` (channels last), exactly as the layer computes it in eval mode.
    Buffers ``words``, ``scale``, ``bias``, ``format_version``."""

    def __init__(self, layer) -> None:
        super().__init__()
        if not layer.ternary:
            raise ValueError("packed layers need a ternary TernaryLIFConv2d (ternary=True)")
        p = layer.folded_packed()
        self.K, self.out_channels = p.K, p.words.shape[0]
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        self.register_buffer("words", p.words.detach().clone())
        self.register_buffer("scale", p.scale.detach().clone())
        self.register_buffer("bias", p.bias.detach().clone() if p.bias is not None else None)
        self.register_buffer("format_version", torch.tensor(FORMAT_VERSION))
        self._packed: PackedTernary | None = None

    @property
    def packed(self) -> PackedTernary:
        """The weight as a :class:`PackedTernary`, built once (it caches backend tile layouts)
        and rebuilt when the buffers are replaced (``.to()``, ``load_state_dict``)."""
        p = self._packed
        if p is None or p.words is not self.words or p.scale is not self.scale or p.bias is not self.bias:
            p = self._packed = PackedTernary(self.words, self.scale, self.K, self.bias, int(self.format_version))
        return p

    def current(self, bits: Tensor) -> Tensor:
        y = F.spike_ternary_conv2d(bits, self.packed, self.stride, self.padding, self.dilation)
        return y.permute(0, 2, 3, 1)  # channels-last memory: a free view [N, H', W', C']

    def forward(self, bits: Tensor) -> Tensor:
        return self.current(bits)

    def extra_repr(self) -> str:
        return (f"{self.K}, {self.out_channels}, stride={self.stride}, padding={self.padding}, "
                f"packed format v{int(self.format_version)}")


class PackedLIFConv2d(PackedConv2d):
    """:class:`PackedConv2d` + the layer's LIF: bits in, bits out.

    ``forward(bits, T)``: ``bits`` int64 ``[T·B, H, W, ceil(C/64)]`` → ``[T·B, H', W', ceil(C'/64)]``."""

    def __init__(self, layer) -> None:
        if layer.neuron is None:
            raise ValueError("PackedLIFConv2d needs a ternary TernaryLIFConv2d with a neuron")
        super().__init__(layer)
        self.neuron_kwargs = dict(layer.neuron.kwargs)

    def forward(self, bits: Tensor, T: int) -> Tensor:
        return F.spike_ternary_conv2d_lif(bits, self.packed, T, self.stride, self.padding, self.dilation,
                                          **self.neuron_kwargs)


def lif_pack(current: Tensor, T: int, neuron_kwargs: dict) -> Tensor:
    """LIF over a channels-last current ``[T·B, H, W, C]``, spikes bit-packed along channels
    (``functional.lif_pack``: no float spike tensor)."""
    return F.lif_pack(current.unflatten(0, (T, current.shape[0] // T)), **neuron_kwargs).flatten(0, 1)


def pack(model: nn.Module) -> nn.Module:
    """``model.pack()``: the packed inference form of a tna_kernels model (VGG family for now)."""
    if not hasattr(model, "pack"):
        raise TypeError(f"{type(model).__name__} has no packed inference form (.pack())")
    return model.pack()
