"""Ternary weights: the packed format, fake kernels, autograd, and the Triton backend on CUDA.

Packed ternary format, version 1 (the contract; docs/FORMAT.md repeats it with a worked example)
---------------------------------------------------------------------------------------------------
* Codes ``c`` in {-1, 0, +1} of shape ``[..., K]`` pack along the **last** axis into an int64 tensor
  ``words`` of shape ``[..., 2, KW]``, ``KW = ceil(K / 64)``. ``words[..., 0, :]`` is the plane
  ``P`` (bit set <=> c = +1), ``words[..., 1, :]`` the plane ``N`` (bit set <=> c = -1).
* Element ``k`` is bit ``k % 64`` (bit 0 = least significant) of word ``k // 64``; the int64 holds
  the uint64 bit pattern (two's complement), so it is little-endian in memory too. Bits ``k >= K``
  are zero in both planes, and no bit is set in both planes.
* Exactly 2 bits per weight. A linear weight ``[N, K]`` packs to ``[N, 2, KW]``. A conv weight in
  torch layout ``[N, C, kh, kw]`` is first permuted to ``[N, kh, kw, C]`` and packs to
  ``[N, kh, kw, 2, CW]`` (channels packed per tap, so spikes packed along channels line up).
* Alongside the words: ``scale`` float32 ``[N]`` (per output channel; the weight is
  ``code * scale``), optional ``bias`` float32 ``[N]``, ``K`` (the packed axis length: in_features,
  or in_channels for conv) and ``version`` (= 1). Every op that reads words takes the version and
  rejects any other.
* Spikes ``s`` in {0, 1} of shape ``[..., K]`` pack the same way into ``[..., KW]`` (one plane);
  then ``sum_k s[k] c[k] = popcount(S & P) - popcount(S & N)`` summed over words, exactly.

:class:`PackedTernary` carries words, scale, bias, K and version together; it is what
:func:`tna_kernels.functional.pack_ternary` returns and what the packed modules store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._utils import HAS_TRITON
from ..reference import TERNARY_FORMAT_VERSION
from . import CUDA_BACKENDS
from ._native import LIB

# The tna:: schemas of this family (the only place they are written).
# Ternary weights. Packed format v1 (csrc/cpu/ternary.h, docs/FORMAT.md): codes [..., K] int8 in
# {-1, 0, +1} -> int64 words [..., 2, KW], KW = ceil(K/64), planes P (+1) and N (-1) along K,
# little-endian bits, zero padding; spikes {0, 1} [..., K] -> [..., KW]. Every op that reads
# packed words takes the format `version` and rejects any other. scale: float32 [N]; bias:
# float32 [N] or None. Spike ops return float32; float ops return x's dtype.
LIB.define("pack_ternary(Tensor codes) -> Tensor")
LIB.define("unpack_ternary(Tensor packed, int K, int version) -> Tensor")
LIB.define("pack_spikes(Tensor spikes, int dim=-1) -> Tensor")
LIB.define("unpack_spikes(Tensor bits, int K) -> Tensor")
# Ternariser ("twn" | "absmean"), dim 0 = output channel: (codes int8 like w, scale float32 [N],
# packed words of the codes along w's last axis, or an empty tensor when pack is false).
LIB.define("ternarize(Tensor w, str method, bool per_channel, bool pack) -> (Tensor, Tensor, Tensor)")
# x [..., K] floating, packed_w [N, 2, KW] -> [..., N]; grad_input: grad_y [..., N] -> [..., K].
LIB.define("ternary_linear(Tensor x, Tensor packed_w, Tensor scale, Tensor? bias, int version) -> Tensor")
LIB.define("ternary_linear_grad_input(Tensor grad_y, Tensor packed_w, Tensor scale, int K, int version) -> Tensor")
# spike_bits [..., KW] int64 -> [..., N] float32, exact integer accumulation. kmajor: optional
# cached ternary_kmajor(packed_w) for the event-driven (sparse) kernel; built per call if absent.
LIB.define(
    "spike_ternary_linear(Tensor spike_bits, Tensor packed_w, Tensor scale, Tensor? bias, int K, int "
    "version, Tensor? kmajor=None) -> Tensor")
# Conv2d, groups = 1: packed_w [N, kh, kw, 2, CW] (codes [N, kh, kw, C] packed along C);
# x [B, C, H, W]; spike_bits [B, H, W, CW] (spikes packed along channels) -> [B, N, OH, OW].
LIB.define(
    "ternary_conv2d(Tensor x, Tensor packed_w, Tensor scale, Tensor? bias, int[2] stride, int[2] padding,"
    " int[2] dilation, int version) -> Tensor")
LIB.define(
    "ternary_conv2d_grad_input(Tensor grad_y, Tensor packed_w, Tensor scale, int[4] input_size, int[2] "
    "stride, int[2] padding, int[2] dilation, int version) -> Tensor")
LIB.define(
    "spike_ternary_conv2d(Tensor spike_bits, Tensor packed_w, Tensor scale, Tensor? bias, int C, int[2] "
    "stride, int[2] padding, int[2] dilation, int version, Tensor? kmajor=None) -> Tensor")
# spike_ternary_conv2d with the LIF of lif_pack in its epilogue: spike_bits [T*B, H, W, CW]
# (time-major) -> packed spikes [T*B, OH, OW, ceil(N/64)]; the float current exists only per tile.
LIB.define(
    "spike_ternary_conv2d_lif(Tensor spike_bits, Tensor packed_w, Tensor scale, Tensor? bias, int C, "
    "int[2] stride, int[2] padding, int[2] dilation, int version, int T, float tau, bool decay_input, "
    "float v_threshold, float v_reset, bool soft_reset, Tensor? kmajor=None) -> Tensor")
# Backend-private K-major int8 copy of packed weights [K_padded, ceil(N/128)*128] (never serialised).
LIB.define("ternary_kmajor(Tensor packed_w, int K, int version) -> Tensor")
# Popcount kernel instruction set the CPU ops use now: "avx512" | "avx2" | "scalar" (the best
# supported, or TNA_TERNARY_ISA when set).
LIB.define("ternary_cpu_isa() -> str")


FORMAT_VERSION = TERNARY_FORMAT_VERSION


def words_for(k: int) -> int:
    return (k + 63) // 64


@dataclass(frozen=True)
class PackedTernary:
    """A ternary weight in packed format v1 (see the module docstring).

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
        if self.words.device.type != "cpu" or k_pad > 32767:
            return None
        isa = torch.ops.tna.ternary_cpu_isa()
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

def _check_version(version):
    torch._check(version == FORMAT_VERSION,
                 lambda: f"version: this build reads packed ternary format v{FORMAT_VERSION} only, "
                         f"got v{version}")


@torch.library.register_fake("tna::pack_ternary")
def _pack_ternary_fake(codes):
    torch._check(codes.dtype == torch.int8, lambda: f"codes must be int8, got {codes.dtype}")
    return codes.new_empty((*codes.shape[:-1], 2, words_for(codes.shape[-1])), dtype=torch.int64)


@torch.library.register_fake("tna::unpack_ternary")
def _unpack_ternary_fake(packed, K, version):
    _check_version(version)
    return packed.new_empty((*packed.shape[:-2], K), dtype=torch.int8)


@torch.library.register_fake("tna::pack_spikes")
def _pack_spikes_fake(spikes, dim=-1):
    d = dim % spikes.dim()
    shape = [n for i, n in enumerate(spikes.shape) if i != d]
    return spikes.new_empty((*shape, words_for(spikes.shape[d])), dtype=torch.int64)


@torch.library.register_fake("tna::unpack_spikes")
def _unpack_spikes_fake(bits, K):
    return bits.new_empty((*bits.shape[:-1], K), dtype=torch.uint8)


@torch.library.register_fake("tna::ternarize")
def _ternarize_fake(w, method, per_channel, pack):
    codes = w.new_empty(w.shape, dtype=torch.int8)
    scale = w.new_empty((w.shape[0],), dtype=torch.float32)
    shape = (*w.shape[:-1], 2, words_for(w.shape[-1])) if pack else (0,)
    return codes, scale, w.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("tna::ternary_linear")
def _ternary_linear_fake(x, packed_w, scale, bias, version):
    _check_version(version)
    return x.new_empty((*x.shape[:-1], packed_w.shape[0]))


@torch.library.register_fake("tna::ternary_linear_grad_input")
def _ternary_linear_grad_input_fake(grad_y, packed_w, scale, K, version):
    _check_version(version)
    return grad_y.new_empty((*grad_y.shape[:-1], K))


@torch.library.register_fake("tna::ternary_kmajor")
def _ternary_kmajor_fake(packed_w, K, version):
    _check_version(version)
    taps = packed_w.shape[1] * packed_w.shape[2] if packed_w.dim() == 5 else 1
    ld = (packed_w.shape[0] + 127) // 128 * 128
    return packed_w.new_empty((taps * packed_w.shape[-1] * 64, ld), dtype=torch.int8)


@torch.library.register_fake("tna::spike_ternary_linear")
def _spike_ternary_linear_fake(spike_bits, packed_w, scale, bias, K, version, kmajor=None):
    _check_version(version)
    return spike_bits.new_empty((*spike_bits.shape[:-1], packed_w.shape[0]), dtype=torch.float32)


def _conv_out(h, w, k, stride, padding, dilation):
    return tuple((n + 2 * p - d * (kk - 1) - 1) // s + 1
                 for n, kk, s, p, d in zip((h, w), k, stride, padding, dilation, strict=True))


@torch.library.register_fake("tna::ternary_conv2d")
def _ternary_conv2d_fake(x, packed_w, scale, bias, stride, padding, dilation, version):
    _check_version(version)
    oh, ow = _conv_out(x.shape[2], x.shape[3], packed_w.shape[1:3], stride, padding, dilation)
    return x.new_empty((x.shape[0], packed_w.shape[0], oh, ow))


@torch.library.register_fake("tna::ternary_conv2d_grad_input")
def _ternary_conv2d_grad_input_fake(grad_y, packed_w, scale, input_size, stride, padding, dilation, version):
    _check_version(version)
    return grad_y.new_empty(tuple(input_size))


@torch.library.register_fake("tna::spike_ternary_conv2d")
def _spike_ternary_conv2d_fake(spike_bits, packed_w, scale, bias, C, stride, padding, dilation, version,
                               kmajor=None):
    _check_version(version)
    oh, ow = _conv_out(spike_bits.shape[1], spike_bits.shape[2], packed_w.shape[1:3], stride, padding,
                       dilation)
    return torch.empty((spike_bits.shape[0], packed_w.shape[0], oh, ow), dtype=torch.float32,
                       device=spike_bits.device, memory_format=torch.channels_last)


# ---- autograd: float x ternary, w.r.t. the input and the bias ----------------------------------
# The packed words and the scale are constants here (training differentiates the latent float
# weights through functional.ternary_ste instead); functional.* refuses a scale that requires grad.

def _linear_setup(ctx, inputs, output):
    x, packed_w, scale, bias, version = inputs
    ctx.save_for_backward(packed_w, scale)
    ctx.K, ctx.version, ctx.has_bias = x.shape[-1], version, bias is not None


def _linear_backward(ctx, grad_y):
    packed_w, scale = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.tna.ternary_linear_grad_input(grad_y, packed_w, scale, ctx.K, ctx.version)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0).to(torch.float32)
    return grad_x, None, None, grad_bias, None


def _conv_setup(ctx, inputs, output):
    x, packed_w, scale, bias, stride, padding, dilation, version = inputs
    ctx.save_for_backward(packed_w, scale)
    ctx.geom = (list(x.shape), stride, padding, dilation, version)
    ctx.has_bias = bias is not None


def _conv_backward(ctx, grad_y):
    packed_w, scale = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.tna.ternary_conv2d_grad_input(grad_y, packed_w, scale, *ctx.geom)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad_y.sum((0, 2, 3)).to(torch.float32)
    return grad_x, None, None, grad_bias, None, None, None, None


torch.library.register_autograd("tna::ternary_linear", _linear_backward, setup_context=_linear_setup)
torch.library.register_autograd("tna::ternary_conv2d", _conv_backward, setup_context=_conv_setup)


def conv_geometry(stride, padding, dilation) -> tuple[list[int], list[int], list[int]]:
    """Normalise int-or-pair conv arguments to lists of two ints (errors name the argument)."""
    out = []
    for name, v, lo in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        pair = [v, v] if isinstance(v, int) else list(v)
        if len(pair) != 2 or not all(isinstance(i, int) and i >= lo for i in pair):
            raise ValueError(f"{name} must be an int or a pair of ints >= {lo}, got {v!r}")
        out.append(pair)
    return tuple(out)


if HAS_TRITON:
    from ..triton import ternary as _triton_ternary

    # CUDA tensors: Triton kernels (the spike/float GEMMs, packing, fused quantise-and-pack); float
    # conv and the input gradients decode with Triton and convolve/multiply with torch.
    for _name in _triton_ternary.CUDA_OPS:
        torch.library.register_kernel(f"tna::{_name}", "cuda", getattr(_triton_ternary, _name))
        CUDA_BACKENDS[_name] = "triton"
    for _name in ("ternary_conv2d", "ternary_conv2d_grad_input", "ternary_linear_grad_input",
                  "unpack_spikes"):
        CUDA_BACKENDS[_name] = "triton+torch" if _name != "unpack_spikes" else "torch"


# ---- spike_ternary_conv2d_lif: the conv with tna::lif_pack's LIF as its epilogue ----

@torch.library.register_fake("tna::spike_ternary_conv2d_lif")
def _spike_ternary_conv2d_lif_fake(spike_bits, packed_w, scale, bias, C, stride, padding, dilation, version,
                                   T, tau, decay_input, v_threshold, v_reset, soft_reset, kmajor=None):
    _check_version(version)
    oh, ow = _conv_out(spike_bits.shape[1], spike_bits.shape[2], packed_w.shape[1:3], stride, padding,
                       dilation)
    return spike_bits.new_empty((spike_bits.shape[0], oh, ow, (packed_w.shape[0] + 63) // 64))


def _spike_ternary_conv2d_lif_composed(spike_bits, packed_w, scale, bias, C, stride, padding, dilation,
                                       version, T, tau, decay_input, v_threshold, v_reset, soft_reset,
                                       kmajor=None):
    y = torch.ops.tna.spike_ternary_conv2d(spike_bits, packed_w, scale, bias, C, stride, padding, dilation,
                                           version, kmajor)
    y = y.permute(0, 2, 3, 1)  # channels last
    return torch.ops.tna.lif_pack(y.unflatten(0, (T, y.shape[0] // T)), tau, decay_input, v_threshold,
                                  v_reset, soft_reset).flatten(0, 1)


if HAS_TRITON:
    # CUDA tensors: the Triton conv, LIF and packing kernels in sequence (not fused yet on GPU).
    torch.library.register_kernel("tna::spike_ternary_conv2d_lif", "cuda", _spike_ternary_conv2d_lif_composed)
    CUDA_BACKENDS["spike_ternary_conv2d_lif"] = "triton (unfused)"
