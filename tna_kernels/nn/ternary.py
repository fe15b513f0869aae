"""Ternary-weight layers: drop-in ``nn.Linear`` / ``nn.Conv2d`` subclasses trained with the
straight-through estimator, and their frozen packed inference forms (format v1).

Training: the module keeps the latent float ``weight`` (same name, shape and state_dict keys as the
torch module it subclasses); forward uses ``ternary_ste(weight)`` so gradients reach the latent
weights. Evaluation without autograd (``eval()`` + ``torch.no_grad()``, or a weight that does not
require grad) quantises and packs in one fused call and runs the packed kernel, which is exactly
what ``.pack()`` freezes, so ``.pack()(x)`` equals the module's eval output bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import functional as F
from ..ops.ternary import FORMAT_VERSION, PackedTernary, conv_geometry


def _use_packed_path(module: nn.Module) -> bool:
    return not module.training and not (torch.is_grad_enabled() and module.weight.requires_grad)


class _TernaryMixin:
    def _init_ternary(self, method: str, per_channel: bool, clip: float | None) -> None:
        if method not in ("twn", "absmean"):
            raise ValueError(f"method must be 'twn' or 'absmean', got {method!r}")
        self.method, self.per_channel, self.clip = method, bool(per_channel), clip

    def ternary_weight(self) -> Tensor:
        """The dequantised ternary weight ``codes * scale`` (differentiable by the STE)."""
        return F.ternary_ste(self.weight, method=self.method, per_channel=self.per_channel, clip=self.clip)

    def packed_weight(self) -> PackedTernary:
        """The weight (and bias) as a :class:`PackedTernary`, via the fused quantise-and-pack kernel."""
        return F.quantize_pack(self.weight, method=self.method, per_channel=self.per_channel,
                               bias=self.bias)

    def _ternary_repr(self) -> str:
        clip = "" if self.clip is None else f", clip={self.clip}"
        return f", method={self.method!r}, per_channel={self.per_channel}{clip}"


class TernaryLinear(_TernaryMixin, nn.Linear):
    """``nn.Linear`` with ternary weights (TWN or absmean ternariser, STE training).

    Extra arguments: ``method`` ("twn" | "absmean"), ``per_channel`` scales, ``clip`` (STE passes
    gradient only where ``|w| <= clip``; None = identity). State dict keys: ``weight``, ``bias``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 *, method: str = "twn", per_channel: bool = True, clip: float | None = None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_ternary(method, per_channel, clip)

    def forward(self, x: Tensor) -> Tensor:
        if _use_packed_path(self) and x.dtype.is_floating_point:
            return F.ternary_linear(x, self.packed_weight())
        return nn.functional.linear(x, self.ternary_weight(), self.bias)

    def pack(self) -> PackedTernaryLinear:
        """Frozen packed inference module (format v1) with this module's eval-mode outputs."""
        return PackedTernaryLinear(self.packed_weight())

    def extra_repr(self) -> str:
        return super().extra_repr() + self._ternary_repr()


class TernaryConv2d(_TernaryMixin, nn.Conv2d):
    """``nn.Conv2d`` with ternary weights (groups = 1, zero padding), STE training.

    Same constructor and state_dict keys as ``nn.Conv2d`` plus ``method``, ``per_channel``, ``clip``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 *, method: str = "twn", per_channel: bool = True, clip: float | None = None):
        if groups != 1:
            raise ValueError(f"groups must be 1 for TernaryConv2d (the packed kernels are dense), "
                             f"got {groups}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' for TernaryConv2d, got {padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f"padding must be an int or a pair of ints for TernaryConv2d, got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_ternary(method, per_channel, clip)

    def forward(self, x: Tensor) -> Tensor:
        if _use_packed_path(self) and x.dtype.is_floating_point:
            return F.ternary_conv2d(x, self.packed_weight(), self.stride, self.padding, self.dilation)
        return nn.functional.conv2d(x, self.ternary_weight(), self.bias, self.stride, self.padding,
                                    self.dilation)

    def pack(self) -> PackedTernaryConv2d:
        return PackedTernaryConv2d(self.packed_weight(), self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._ternary_repr()


class _PackedBase(nn.Module):
    """Buffers ``words``, ``scale``, optional ``bias`` and ``format_version`` (so the version
    travels with every checkpoint and a mismatching one is refused at load)."""

    def __init__(self, packed: PackedTernary):
        super().__init__()
        if not isinstance(packed, PackedTernary):
            raise TypeError(f"packed must be a PackedTernary, got {type(packed).__name__}")
        self.K = packed.K
        self.register_buffer("words", packed.words.detach().clone())
        self.register_buffer("scale", packed.scale.detach().clone())
        self.register_buffer("bias", None if packed.bias is None else packed.bias.detach().clone())
        self.register_buffer("format_version", torch.tensor(packed.version, dtype=torch.int64))

    @property
    def packed(self) -> PackedTernary:
        # One PackedTernary per module state, so backend caches (PackedTernary.kmajor) persist
        # across calls; dropped whenever the buffers move or are reloaded.
        p = self.__dict__.get("_packed_obj")
        if p is None or p.words is not self.words or p.scale is not self.scale or p.bias is not self.bias:
            p = PackedTernary(self.words, self.scale, self.K, self.bias, int(self.format_version))
            self.__dict__["_packed_obj"] = p
        return p

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        v = state_dict.get(prefix + "format_version")
        if v is not None and int(v) != FORMAT_VERSION:
            error_msgs.append(f"{prefix}format_version: this build reads packed ternary format "
                              f"v{FORMAT_VERSION} only, got v{int(v)}")
            return
        self.__dict__.pop("_packed_obj", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class PackedTernaryLinear(_PackedBase):
    """Frozen ternary linear layer in packed format v1 (from :meth:`TernaryLinear.pack`).

    ``forward(x)`` takes float ``[..., K]``; ``forward_spikes(bits)`` takes spikes bit-packed with
    :func:`tna_kernels.functional.pack_spikes` and returns float32 (exact integer accumulation)."""

    def __init__(self, packed: PackedTernary):
        if packed.is_conv:
            raise ValueError("packed must be a linear weight [N, 2, KW]")
        super().__init__(packed)

    def forward(self, x: Tensor) -> Tensor:
        return F.ternary_linear(x, self.packed)

    def forward_spikes(self, spike_bits: Tensor) -> Tensor:
        return F.spike_ternary_linear(spike_bits, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.K}, out_features={self.words.shape[0]}, bias={self.bias is not None}"


class PackedTernaryConv2d(_PackedBase):
    """Frozen ternary conv2d in packed format v1 (from :meth:`TernaryConv2d.pack`).

    ``forward(x)`` takes float ``[B, C, H, W]``; ``forward_spikes(bits)`` takes spikes packed
    along channels (``pack_spikes(s, dim=1)`` -> ``[B, H, W, CW]``; fold T into B)."""

    def __init__(self, packed: PackedTernary, stride=1, padding=0, dilation=1):
        if not packed.is_conv:
            raise ValueError("packed must be a conv2d weight [N, kh, kw, 2, CW]")
        super().__init__(packed)
        self.stride, self.padding, self.dilation = conv_geometry(stride, padding, dilation)

    def forward(self, x: Tensor) -> Tensor:
        return F.ternary_conv2d(x, self.packed, self.stride, self.padding, self.dilation)

    def forward_spikes(self, spike_bits: Tensor) -> Tensor:
        return F.spike_ternary_conv2d(spike_bits, self.packed, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        kh, kw = self.words.shape[1:3]
        return (f"{self.K}, {self.words.shape[0]}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, "
                f"padding={tuple(self.padding)}, dilation={tuple(self.dilation)}, "
                f"bias={self.bias is not None}")
