"""Batched data augmentation on tensors (no torchvision).

Every function takes a whole batch ``[N, ..., H, W]`` (uint8 or float) and draws its per-sample
randomness from an explicit :class:`torch.Generator`, so a run is reproducible from the generator's
seed alone. The random numbers are drawn on the CPU (the generator lives there) and then moved to
the batch's device, so the same seed gives the same augmentation on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "random_crop",
    "random_hflip",
    "to_float",
    "normalize",
    "Augment",
]


def _check_batch(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(
            f"{name} must be a batch [N, ..., H, W] with at least 3 dims, got shape {tuple(x.shape)}"
        )


def _crop_flip(
    x: torch.Tensor, padding: int, flip: torch.Tensor | None, off: torch.Tensor | None
) -> torch.Tensor:
    """Crop at per-sample offsets ``off`` ([2, N]) from the zero-padded batch and mirror the samples
    where ``flip`` is True, in one gather: the output column x of a mirrored sample reads padded
    column ``off_x + (W - 1 - x)``, so crop-then-flip costs the same as the crop alone."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    dev = x.device
    flat = x.reshape(n, -1, h, w)
    k = flat.shape[1]
    hp, wp = h + 2 * padding, w + 2 * padding
    if padding:
        # Zeros + slice assignment works for every dtype (F.pad lacks integer kernels on some backends).
        src = flat.new_zeros(n, k, hp, wp)
        src[:, :, padding : padding + h, padding : padding + w] = flat
    else:
        src = flat
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    oy = off[0].to(dev) if off is not None else torch.full((n,), padding, device=dev)
    ox = off[1].to(dev) if off is not None else torch.full((n,), padding, device=dev)
    cols = ar_w.expand(n, w)
    if flip is not None:
        cols = torch.where(flip.to(dev)[:, None], (w - 1) - ar_w, ar_w)
    index = (oy[:, None, None] + ar_h[None, :, None]) * wp + (ox[:, None] + cols)[:, None, :]  # [N, H, W]
    out = src.reshape(n, k, hp * wp).gather(2, index.reshape(n, 1, h * w).expand(n, k, h * w))
    return out.reshape(x.shape)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding, one offset per sample (the classic CIFAR ``RandomCrop(32, 4)``).

    ``x`` is ``[N, *, H, W]``: every sample ``n`` is zero-padded by ``padding`` pixels on each side
    and a window of the original ``H x W`` size is cut at an offset drawn uniformly from
    ``[0, 2 * padding]`` in each direction; all leading dims of a sample (channels, time steps)
    share that offset. Vectorised: one gather for the whole batch. Returns a new tensor of
    ``x``'s shape, dtype and device. Draws ``randint(0, 2p + 1, (2, N))`` from ``generator``.
    """
    _check_batch(x)
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    if padding == 0 or x.shape[0] == 0:
        return x.clone()
    off = torch.randint(0, 2 * padding + 1, (2, x.shape[0]), generator=generator)
    return _crop_flip(x, padding, None, off)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Flip each sample of ``x`` (``[N, *, H, W]``) left-right with probability ``p``, independently.

    All leading dims of a sample (channels, time steps) are flipped together. Draws ``rand(N)``
    from ``generator``.
    """
    _check_batch(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def to_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images in [0, 255] -> floats in [0, 1]; floating inputs are only cast to ``dtype``."""
    if x.dtype == torch.uint8:
        return x.to(dtype).div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"to_float expects uint8 or floating images, got {x.dtype}")
    return x.to(dtype)


def normalize(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_dim: int = 1
) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` on a floating batch; ``channel_dim`` indexes the channel axis."""
    if not x.is_floating_point():
        raise TypeError(f"normalize expects a floating tensor (use to_float first), got {x.dtype}")
    c = x.shape[channel_dim]
    if len(mean) != c or len(std) != c:
        raise ValueError(
            f"mean/std need {c} entries (channels of dim {channel_dim}), got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std entries must be positive, got {list(std)}")
    shape = [1] * x.dim()
    shape[channel_dim] = c
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


class Augment:
    """A batch transform: optional random crop with padding and horizontal flip (training only),
    then conversion to float and optional per-channel normalisation.

    ``Augment(padding=4, flip=True, mean=..., std=...)(x, generator)`` maps a uint8 batch
    ``[N, C, H, W]`` (or float frames ``[N, T, C, H, W]`` with ``channel_dim=2``) to a float batch.
    The geometric ops run on the raw dtype first (cheaper on uint8), then the cast.
    """

    def __init__(
        self,
        padding: int = 0,
        flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channel_dim: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        self.padding = padding
        self.flip = bool(flip)
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.channel_dim = channel_dim
        self.dtype = dtype

    @property
    def random(self) -> bool:
        """True when the transform draws random numbers (crop or flip enabled)."""
        return self.padding > 0 or self.flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply the transform to the batch ``x``; randomness comes from ``generator``.

        Same result (and same random draws) as ``random_crop``, then ``random_hflip``, then
        ``to_float`` and ``normalize``, but crop and flip share one gather and the float
        conversion and normalisation are one multiply-add in place.
        """
        _check_batch(x)
        if self.random and x.shape[0]:
            n = x.shape[0]
            off = (
                torch.randint(0, 2 * self.padding + 1, (2, n), generator=generator) if self.padding else None
            )
            flip = (torch.rand(n, generator=generator) < 0.5) if self.flip else None
            x = _crop_flip(x, self.padding, flip, off)
        was_uint8 = x.dtype == torch.uint8
        out = x.to(
            self.dtype, copy=True
        )  # a fresh tensor, so the in-place ops below never touch the caller's
        scale = 1.0 / 255.0 if was_uint8 else 1.0
        if self.mean is None:
            return out.mul_(scale) if was_uint8 else out
        if x.shape[self.channel_dim] != len(self.mean):
            raise ValueError(
                f"mean/std have {len(self.mean)} entries but dim {self.channel_dim} of the batch has "
                f"{x.shape[self.channel_dim]} channels"
            )
        shape = [1] * out.dim()
        shape[self.channel_dim] = len(self.mean)
        a = torch.tensor([scale / s for s in self.std], dtype=self.dtype, device=out.device).view(shape)
        b = torch.tensor(
            [-m / s for m, s in zip(self.mean, self.std, strict=True)], dtype=self.dtype, device=out.device
        ).view(shape)
        return out.mul_(a).add_(b)

    def __repr__(self) -> str:
        return (
            f"Augment(padding={self.padding}, flip={self.flip}, mean={self.mean}, std={self.std}, "
            f"channel_dim={self.channel_dim})"
        )
