"""The contracts every backend, module and checkpoint shares, each written once.

* The 2-bit packed ternary format: ``FORMAT_VERSION``, ``words_for`` and ``PackedTernary`` (the
  layout itself is described in docs/FORMAT.md, the only prose description of it).
* The names the ops take as strings or indices: ``SURROGATES`` (LIF surrogate gradients),
  ``TERNARY_METHODS`` (ternarisers), ``MSE_REDUCTIONS`` (the twin loss's MSE term).

The native core exports its own view of these (``tna_kernels._C``); ``check_native`` compares the
two when the package loads, so C++ and Python can never disagree silently."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

FORMAT_VERSION = 1
SURROGATES = ("atan", "sigmoid", "fast_sigmoid", "triangle", "rectangle")
TERNARY_METHODS = ("twn", "absmean")
MSE_REDUCTIONS = ("mean", "sum_over_batch")


def words_for(k: int) -> int:
    """64-bit words per packed row of ``k`` elements: ``ceil(k / 64)``."""
    return (k + 63) // 64


def _native():
    from . import _C  # loaded by the package before any PackedTernary exists
    return _C


@dataclass(frozen=True)
class PackedTernary:
    """A ternary weight in packed format v1 (docs/FORMAT.md).

    Attributes:
        words: int64 ``[N, 2, KW]`` (linear) or ``[N, kh, kw, 2, CW]`` (conv2d).
        scale: float32 ``[N]``; the weight is ``code * scale[n]``.
        K: length of the packed axis (in_features, or in_channels for conv2d).
        bias: float32 ``[N]`` or None.
        version: packed-format version; only ``FORMAT_VERSION`` (1) is accepted.
    """

    words: Tensor
    scale: Tensor
    K: int
    bias: Tensor | None = None
    version: int = FORMAT_VERSION
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.version != FORMAT_VERSION:
            raise ValueError(f"version: this build reads packed ternary format v{FORMAT_VERSION} only, "
                             f"got v{self.version}; re-pack the weights with pack_ternary")
        w = self.words
        if not isinstance(w, Tensor) or w.dtype != torch.int64:
            raise TypeError(f"words must be an int64 tensor, got {getattr(w, 'dtype', type(w))}")
        if w.dim() not in (3, 5) or w.shape[-2] != 2:
            raise ValueError("words must have shape [N, 2, KW] (linear) or [N, kh, kw, 2, CW] (conv2d), "
                             f"got {tuple(w.shape)}")
        if not isinstance(self.K, int) or self.K < 1 or w.shape[-1] != words_for(self.K):
            raise ValueError(f"K = {self.K!r} does not match words with {w.shape[-1]} words per plane "
                             f"(needs ceil(K/64) = KW)")
        n = w.shape[0]
        if self.scale.dtype != torch.float32 or tuple(self.scale.shape) != (n,):
            raise ValueError(f"scale must be float32 of shape ({n},), got {self.scale.dtype} "
                             f"{tuple(self.scale.shape)}")
        if self.bias is not None and (self.bias.dtype != torch.float32 or tuple(self.bias.shape) != (n,)):
            raise ValueError(f"bias must be float32 of shape ({n},) or None, got {self.bias.dtype} "
                             f"{tuple(self.bias.shape)}")

    @property
    def out_features(self) -> int:
        return self.words.shape[0]

    @property
    def is_conv(self) -> bool:
        return self.words.dim() == 5

    @property
    def kernel_size(self) -> tuple[int, int]:
        if not self.is_conv:
            raise AttributeError("kernel_size: this is a linear weight")
        return tuple(self.words.shape[1:3])

    def codes(self) -> Tensor:
        """int8 codes in torch layout: [N, K] (linear) or [N, C, kh, kw] (conv2d)."""
        c = torch.ops.tna.unpack_ternary(self.words, self.K, self.version)
        return c.permute(0, 3, 1, 2).contiguous() if self.is_conv else c

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``code * scale`` in torch layout (the weight an nn.Linear / nn.Conv2d would hold)."""
        c = self.codes().to(dtype)
        return c * self.scale.to(dtype).reshape((-1,) + (1,) * (c.dim() - 1))

    def float_codes(self) -> Tensor:
        """The codes as float32 in torch layout, built once and cached on this object; never
        serialised (4 bytes per weight). The float × ternary CPU path runs torch's GEMM / conv on it
        (``functional.ternary_linear`` / ``ternary_conv2d``): a persistent weight tensor saves the
        per-call decode, and lets oneDNN reuse its weight layout between calls (a fresh conv weight
        per call cost ~12 % on the first CIFAR conv)."""
        if "float_codes" not in self._cache:
            self._cache["float_codes"] = self.codes().to(torch.float32)
        return self._cache["float_codes"]

    def dequantized(self) -> Tensor:
        """:meth:`dequantize` (float32), cached like :meth:`float_codes`."""
        if "dequantized" not in self._cache:
            self._cache["dequantized"] = self.dequantize()
        return self._cache["dequantized"]

    def kmajor(self) -> Tensor | None:
        """Backend-private K-major int8 copy of the codes for the CPU event-driven spike kernels
        (``tna::ternary_kmajor``), built once and cached on this object; never serialised. It holds
        ``K_padded x ceil(N/128)*128`` bytes (about 4x the packed words). None where it would not be
        used (non-CPU tensors, the scalar kernels, more than 32767 inputs, or AVX-512 with a copy
        over 1 MiB, where popcount wins)."""
        taps = self.words.shape[1] * self.words.shape[2] if self.is_conv else 1
        k_pad = self.words.shape[-1] * 64 * taps
        if not self.words.is_cpu or k_pad > 32767:
            return None
        # tna::ternary_cpu_isa; eager calls skip the dispatcher, torch.compile traces the op.
        isa = torch.ops.tna.ternary_cpu_isa() if torch.compiler.is_compiling() else _native().ternary_cpu_isa()
        # Same rule as select_algo in csrc/cpu/ternary_gemm.cpp: AVX2 uses a cached copy of any
        # size; the AVX-512 popcount kernel beats the event loop once the copy exceeds 1 MiB.
        if isa == "scalar" or (isa == "avx512" and k_pad * self.out_features > (1 << 20)):
            return None
        if "kmajor" not in self._cache:
            self._cache["kmajor"] = torch.ops.tna.ternary_kmajor(self.words, self.K, self.version)
        return self._cache["kmajor"]

    def to(self, device) -> PackedTernary:
        return PackedTernary(self.words.to(device), self.scale.to(device), self.K,
                             None if self.bias is None else self.bias.to(device), self.version)

    def state_dict(self) -> dict:
        """Serialisable form (canonical layout + version); load with :meth:`from_state_dict`."""
        d = {"words": self.words, "scale": self.scale, "K": self.K, "version": self.version}
        if self.bias is not None:
            d["bias"] = self.bias
        return d

    @classmethod
    def from_state_dict(cls, d: dict) -> PackedTernary:
        if "version" not in d:
            raise ValueError("version: the packed ternary record has no format version")
        return cls(d["words"], d["scale"], int(d["K"]), d.get("bias"), int(d["version"]))


# ---- fake kernels -------------------------------------------------------------------------------
