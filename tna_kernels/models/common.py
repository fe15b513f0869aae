"""Pieces shared by the model builders."""

from torch import Tensor, nn

from ..nn.ternary import TernaryLinear


def check_input(x: Tensor, in_channels: int, name: str) -> None:
    if x.dim() not in (4, 5):
        raise ValueError(f"{name} expects a static image [B, C, H, W] or frames [T, B, C, H, W], "
                         f"got shape {tuple(x.shape)}")
    if x.shape[-3] != in_channels:
        raise ValueError(f"{name} expects {in_channels} input channels, got {x.shape[-3]} "
                         f"(shape {tuple(x.shape)}; frames must be [T, B, C, H, W], time first)")


def readout(features: int, num_classes: int, ternary: bool, method: str) -> nn.Module:
    """Classifier over the time-averaged spikes: ``mean_t(W s_t + b) = W mean_t(s_t) + b``, so it
    runs on the mean (T times fewer operations)."""
    if ternary:
        return TernaryLinear(features, num_classes, method=method)
    return nn.Linear(features, num_classes)
