"""The ternary family: the packed format's ops (pack/unpack of codes and spikes, the ternariser),
float x ternary and spike x ternary linear / conv2d (+ the conv with a fused LIF epilogue), the
K-major cache and the ISA query. Each op's schema, public function and argument checker, CPU
kernel on the native core, fake kernel, autograd and Triton registration live here.

The packed format is specified in docs/FORMAT.md; its constants and ``PackedTernary`` are in
``tna_kernels.formats`` (re-exported here)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import HAS_TRITON, check, is_channels_last
from .._utils import check_device as _check_device
from ..formats import FORMAT_VERSION, TERNARY_METHODS, PackedTernary, words_for
from . import register_cuda
from ._native import LIB, C, dtype_code, dtype_str, empty_output, ptr, shape_str, threads

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


def _check_version(version):
    check(version == FORMAT_VERSION,
                 lambda: f"version: this build reads packed ternary format v{FORMAT_VERSION} only, "
                         f"got v{version}")


@torch.library.register_fake("tna::pack_ternary")
def _pack_ternary_fake(codes):
    check(codes.dtype == torch.int8, lambda: f"codes must be int8, got {codes.dtype}")
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


def _kmajor_rows(K: int, taps: int) -> int:
    """Rows of ternary_kmajor's copy: the bits of a gathered row, where a conv with K <= 32 input
    channels packs several taps per word (csrc/cpu/ternary.h, conv_row_words)."""
    return C.conv_row_words(K, taps) * 64


@torch.library.register_fake("tna::ternary_kmajor")
def _ternary_kmajor_fake(packed_w, K, version):
    _check_version(version)
    taps = packed_w.shape[1] * packed_w.shape[2] if packed_w.dim() == 5 else 1
    ld = (packed_w.shape[0] + 127) // 128 * 128
    return packed_w.new_empty((_kmajor_rows(K, taps), ld), dtype=torch.int8)


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


# ---- CPU kernels: checks and allocation here, the loops in the native core ----------------------
# (csrc/cpu/ternary*.cpp). Each checks its tensors with the messages of the former libtorch
# kernels, passes contiguous data to tna_kernels._C, and allocates the outputs; the float x ternary
# GEMM / conv run torch's own kernels on codes the native core decodes, in the arithmetic order of
# the former C++ (bit-identical results).

# The C++ must agree with what Python owns (no silent re-declaration): the format version, and the
# ternariser method names whose index C.ternarize takes.
if C.TERNARY_FORMAT_VERSION != FORMAT_VERSION:
    raise ImportError(f"tna_kernels._C reads packed ternary format v{C.TERNARY_FORMAT_VERSION} but this "
                      f"Python code writes v{FORMAT_VERSION}: rebuild the native core")
if tuple(C.TERNARY_METHODS) != tuple(TERNARY_METHODS):
    raise ImportError(f"tna_kernels._C ternarises with methods {tuple(C.TERNARY_METHODS)} but this Python "
                      f"code names {tuple(TERNARY_METHODS)}: rebuild the native core")

_OPMATH = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
# c10 names, as the former C++ messages printed dtypes
_F32, _I64, _I8 = torch.float32, torch.int64, torch.int8


def _fail(*parts):
    raise RuntimeError("".join(str(p) for p in parts))


def _op_version(version):
    if version != FORMAT_VERSION:
        _fail("version: this build reads packed ternary format v", FORMAT_VERSION, " only, got v", version,
              " (re-pack the weights with tna_kernels.functional.pack_ternary)")


def _op_cpu(t, name):
    if not t.is_cpu:
        _fail(name, " must be a CPU tensor, got ", t.device)


def _op_floating(t, name):
    if not t.dtype.is_floating_point:
        _fail(name, " must be a floating-point tensor, got ", dtype_str(t.dtype))


def _op_words(packed_w, name):
    """A packed weight tensor [N, ..., 2, KW] (check_packed of the former C++)."""
    if not packed_w.is_cpu:
        _fail(name, " must be a CPU tensor, got ", packed_w.device)
    if packed_w.dtype != _I64:
        _fail(name, " must be int64 packed ternary words (format v1), got ", dtype_str(packed_w.dtype))
    if packed_w.dim() < 3 or packed_w.shape[-2] != 2:
        _fail(name, " must have shape [N, ..., 2, KW] (P and N bit-planes), got ", shape_str(packed_w.shape))


def _op_scale_bias(scale, bias, n):
    # fast path first: this runs on every call of the small GEMV ops, where microseconds count
    if (scale.is_cpu and scale.dtype == _F32 and scale.dim() == 1 and scale.shape[0] == n
            and (bias is None or (bias.is_cpu and bias.dtype == _F32 and bias.dim() == 1 and bias.shape[0] == n))):
        return
    if not scale.is_cpu:
        _fail("scale must be a CPU tensor, got ", scale.device)
    if scale.dtype != _F32:
        _fail("scale must be float32 (one per output channel), got ", dtype_str(scale.dtype))
    if scale.dim() != 1 or scale.shape[0] != n:
        _fail("scale must have shape [", n, "] (one per output channel), got ", shape_str(scale.shape))
    if bias is not None:
        if not bias.is_cpu:
            _fail("bias must be a CPU tensor, got ", bias.device)
        if bias.dtype != _F32:
            _fail("bias must be float32, got ", dtype_str(bias.dtype))
        if bias.dim() != 1 or bias.shape[0] != n:
            _fail("bias must have shape [", n, "], got ", shape_str(bias.shape))


def _op_linear_weight(packed_w, K, scale, bias, version) -> int:
    shape = packed_w.shape
    if not (version == FORMAT_VERSION and packed_w.is_cpu and packed_w.dtype == _I64 and len(shape) == 3
            and shape[1] == 2 and K >= 1 and shape[2] == (K + 63) // 64):
        _op_version(version)
        _op_words(packed_w, "packed_w")
        if len(shape) != 3:
            _fail("packed_w must have shape [N, 2, KW] for a linear layer, got ", shape_str(shape))
        if K < 1:
            _fail("K must be >= 1, got ", K)
        _fail("packed_w has ", shape[2], " words per plane but K = ", K, " needs ceil(K/64) = ", words_for(K))
    _op_scale_bias(scale, bias, shape[0])
    return shape[0]


def _op_conv_weight(packed_w, C_in, scale, bias, stride, padding, dilation, version):
    """Checked conv geometry (N, kh, kw, CW) of packed_w [N, kh, kw, 2, CW] for C_in input channels."""
    _op_version(version)
    _op_words(packed_w, "packed_w")
    if packed_w.dim() != 5:
        _fail("packed_w must have shape [N, kh, kw, 2, CW] for conv2d (codes [N, kh, kw, C] packed along C), "
              "got ", shape_str(packed_w.shape))
    if C_in < 1:
        _fail("the input must have at least one channel, got C = ", C_in)
    if packed_w.shape[4] != words_for(C_in):
        _fail("packed_w has ", packed_w.shape[4], " words per plane but the input has C = ", C_in,
              " channels (needs ceil(C/64) = ", words_for(C_in), ")")
    if packed_w.shape[1] < 1 or packed_w.shape[2] < 1:
        _fail("packed_w kernel size must be >= 1, got ", shape_str(packed_w.shape))
    if len(stride) != 2 or stride[0] < 1 or stride[1] < 1:
        _fail("stride must be two integers >= 1, got ", shape_str(stride))
    if len(padding) != 2 or padding[0] < 0 or padding[1] < 0:
        _fail("padding must be two integers >= 0, got ", shape_str(padding))
    if len(dilation) != 2 or dilation[0] < 1 or dilation[1] < 1:
        _fail("dilation must be two integers >= 1, got ", shape_str(dilation))
    _op_scale_bias(scale, bias, packed_w.shape[0])
    return packed_w.shape[0], packed_w.shape[1], packed_w.shape[2], packed_w.shape[4]


def _op_kmajor(kmajor, KW, n):
    ld = (n + 127) // 128 * 128
    if not (kmajor.is_cpu and kmajor.dtype == _I8 and kmajor.dim() == 2
            and kmajor.shape[0] == KW * 64 and kmajor.shape[1] == ld and kmajor.is_contiguous()):
        _fail("kmajor must be the contiguous int8 [", KW * 64, ", ", ld, "] tensor returned by "
              "tna::ternary_kmajor for these weights, got ", dtype_str(kmajor.dtype), " ", shape_str(kmajor.shape))


def _decode(words: Tensor, rows: int, K: int, dtype: torch.dtype) -> Tensor:
    """Dense codes [rows, K] of contiguous packed words, in dtype (float32, float64 or int8)."""
    out = torch.empty((rows, K), dtype=dtype)
    C.ternary_decode(ptr(words), rows, K, dtype_code(dtype), ptr(out), threads())
    return out


def _decode_conv(words: Tensor, n, kh, kw, c_in, dtype) -> Tensor:
    """Decoded codes as a torch conv weight [N, C, kh, kw] in dtype."""
    d = torch.empty((n, kh, kw, c_in), dtype=dtype)
    C.ternary_decode(ptr(words), n * kh * kw, c_in, dtype_code(dtype), ptr(d), threads())
    return d.permute(0, 3, 1, 2).contiguous()


def _pack_ternary_cpu(codes):
    _op_cpu(codes, "codes")
    if codes.dtype != _I8:
        _fail("codes must be int8 ternary codes in {-1, 0, +1}, got dtype ", dtype_str(codes.dtype))
    if codes.dim() < 1 or codes.shape[-1] < 1:
        _fail("codes must have shape [..., K] with K >= 1 (packing runs along the last axis), got ",
              shape_str(codes.shape))
    c = codes.contiguous()
    K = c.shape[-1]
    out = torch.empty((*c.shape[:-1], 2, words_for(K)), dtype=_I64)
    C.pack_ternary(ptr(c), c.numel() // K, K, ptr(out), threads())
    return out


def _unpack_ternary_cpu(packed, K, version):
    _op_version(version)
    _op_words(packed, "packed")
    if K < 1:
        _fail("K must be >= 1, got ", K)
    if packed.shape[-1] != words_for(K):
        _fail("packed must have ", words_for(K), " words per plane for K = ", K, " (ceil(K/64)), got shape ",
              shape_str(packed.shape))
    pk = packed.contiguous()
    out = torch.empty((*pk.shape[:-2], K), dtype=_I8)
    C.unpack_ternary(ptr(pk), pk.numel() // (2 * words_for(K)), K, ptr(out), threads())
    return out


def _pack_spikes_cpu(spikes, dim=-1):
    _op_cpu(spikes, "spikes")
    nd = spikes.dim()
    if nd < 1:
        _fail("spikes must have at least one dimension")
    if not -nd <= dim < nd:
        _fail("dim must be in [", -nd, ", ", nd - 1, "], got ", dim)
    dim %= nd
    shape = spikes.shape
    if shape[dim] < 1:
        _fail("spikes must have a non-empty packing axis (dim ", dim, "), got shape ", shape_str(shape))
    try:
        code = dtype_code(spikes)
    except TypeError:
        code = None
    if spikes.is_complex() or code is None:
        _fail("spikes must be a real or bool tensor of 0/1 values, got ", dtype_str(spikes.dtype))
    K = shape[dim]
    out = torch.empty((*shape[:dim], *shape[dim + 1:], words_for(K)), dtype=_I64)
    if dim == 1 and is_channels_last(spikes):
        # channels-last [B, C, H, W]: the channels are already the last memory axis (no copy)
        s, outer, inner = spikes.permute(0, 2, 3, 1), shape[0] * shape[2] * shape[3], 1
    else:
        s, outer, inner = spikes.contiguous(), math.prod(shape[:dim]), math.prod(shape[dim + 1:])
    C.pack_spikes(ptr(s), code, outer, K, inner, ptr(out), threads())
    return out


def _unpack_spikes_cpu(bits, K):
    _op_cpu(bits, "bits")
    if bits.dtype != _I64:
        _fail("bits must be int64 packed spike words, got ", dtype_str(bits.dtype))
    if K < 1:
        _fail("K must be >= 1, got ", K)
    if bits.dim() < 1 or bits.shape[-1] != words_for(K):
        _fail("bits must have shape [..., ", words_for(K), "] for K = ", K, " (ceil(K/64) words), got ",
              shape_str(bits.shape))
    b = bits.contiguous()
    out = torch.empty((*b.shape[:-1], K), dtype=torch.uint8)
    C.unpack_spikes(ptr(b), b.numel() // words_for(K), K, ptr(out), threads())
    return out


def _ternarize_cpu(w, method, per_channel, pack):
    _op_cpu(w, "w")
    _op_floating(w, "w")
    if w.dim() < 2 or w.numel() == 0:
        _fail("w must have shape [out_channels, ...] with at least 2 dims and no empty dim, got ", shape_str(w.shape))
    if method not in TERNARY_METHODS:
        _fail("method must be 'twn' or 'absmean', got '", method, "'")
    x = w.contiguous()
    n, k_last = x.shape[0], x.shape[-1]
    codes = torch.empty(x.shape, dtype=_I8)
    scale = torch.empty((n,), dtype=_F32)
    packed = torch.empty((*x.shape[:-1], 2, words_for(k_last)) if pack else (0,), dtype=_I64)
    C.ternarize(ptr(x), dtype_code(x), n, x.numel() // n, TERNARY_METHODS.index(method), per_channel, k_last,
                ptr(codes), ptr(scale), ptr(packed) if pack else 0, threads())
    return codes, scale, packed


def _spike_ternary_linear_cpu(spike_bits, packed_w, scale, bias, K, version, kmajor=None):
    n = _op_linear_weight(packed_w, K, scale, bias, version)
    kw = (K + 63) // 64
    shape = spike_bits.shape
    if not (spike_bits.is_cpu and spike_bits.dtype == _I64 and len(shape) >= 1 and shape[-1] == kw):
        _op_cpu(spike_bits, "spike_bits")
        if spike_bits.dtype != _I64:
            _fail("spike_bits must be int64 packed spike words (pack_spikes), got ", dtype_str(spike_bits.dtype))
        _fail("spike_bits must have shape [..., ", kw, "] for K = ", K, ", got ", shape_str(shape))
    if kmajor is not None:
        _op_kmajor(kmajor, kw, n)
    s = spike_bits.contiguous()
    w = packed_w.contiguous()
    sc = scale.contiguous()
    b = None if bias is None else bias.contiguous()
    y = empty_output((*shape[:-1], n), _F32)
    C.spike_ternary_linear(s.data_ptr(), s.numel() // kw, w.data_ptr(), n, K, sc.data_ptr(), ptr(b), ptr(kmajor),
                           y.data_ptr(), threads())
    return y


def _scale_bias_(y: Tensor, scale: Tensor, bias: Tensor | None) -> None:
    """In place y = y * scale + bias along dim 1 of y [M, N] (two roundings, as the reference): one
    native pass for contiguous float32, torch ops otherwise."""
    if y.dtype != _F32 or not y.is_contiguous():
        y.mul_(scale.to(y.dtype))
        if bias is not None:
            y.add_(bias.to(y.dtype))
        return
    sc = scale.contiguous()
    b = None if bias is None else bias.contiguous()
    C.ternary_scale_bias_f32(ptr(y), y.shape[0], y.shape[1], 1, ptr(sc), ptr(b), threads())


def _mm_codes_f32(x2: Tensor, w: Tensor, n: int, K: int) -> Tensor:
    """float32 x2 @ codes^T: the codes decoded in K-blocks that stay in cache, accumulated with
    addmm (few blocks: each is a parallel region); whole (one GEMM) on the scalar ISA."""
    kb = C.ternary_gemm_block_cols(n, K)
    if kb == 0:
        return torch.mm(x2, _decode(w, n, K, _F32).t())
    buf = torch.empty((n, kb), dtype=_F32)
    y = None
    for k0 in range(0, K, kb):
        k1 = min(K, k0 + kb)
        C.ternary_decode_block_f32(ptr(w), n, K, k0, k1, ptr(buf), kb, threads())
        wb = buf.narrow(1, 0, k1 - k0).t()
        xb = x2.narrow(1, k0, k1 - k0)
        if k0 == 0:
            y = torch.mm(xb, wb)
        else:
            y.addmm_(xb, wb)
    return y


def _ternary_linear_cpu(x, packed_w, scale, bias, version):
    if not (x.is_cpu and x.dtype.is_floating_point):
        _op_cpu(x, "x")
        _op_floating(x, "x")
    if x.dim() < 1:
        _fail("x must have shape [..., K], got ", shape_str(x.shape))
    K = x.shape[-1]
    n = _op_linear_weight(packed_w, K, scale, bias, version)
    w = packed_w.contiguous()
    acc = _OPMATH.get(x.dtype, x.dtype)
    m = x.numel() // K
    if acc == _F32 and 0 < m <= _DIRECT_MAX_M:
        # small M: the direct kernel with the scale/bias epilogue fused, straight into the output
        x2 = x if x.dtype == _F32 and x.is_contiguous() else x.reshape(-1, K).to(_F32).contiguous()
        sc = scale.contiguous()
        b = None if bias is None else bias.contiguous()
        y = torch.empty((*x.shape[:-1], n), dtype=_F32)
        C.ternary_linear_direct(x2.data_ptr(), m, K, w.data_ptr(), n, sc.data_ptr(), ptr(b), y.data_ptr(),
                                threads())  # checks the words first
        return y if x.dtype == _F32 else y.to(x.dtype)
    C.ternary_check_packed_rows(ptr(w), n, K, "packed_w", threads())
    x2 = x.reshape(-1, K).to(acc).contiguous()
    y = _mm_codes_f32(x2, w, n, K) if acc == _F32 else torch.mm(x2, _decode(w, n, K, acc).t())
    _scale_bias_(y, scale, bias)
    return y.to(x.dtype).reshape((*x.shape[:-1], n))


def _ternary_linear_grad_input_cpu(grad_y, packed_w, scale, K, version):
    _op_cpu(grad_y, "grad_y")
    _op_floating(grad_y, "grad_y")
    n = _op_linear_weight(packed_w, K, scale, None, version)
    if grad_y.dim() < 1 or grad_y.shape[-1] != n:
        _fail("grad_y must have shape [..., ", n, "], got ", shape_str(grad_y.shape))
    w = packed_w.contiguous()
    acc = _OPMATH.get(grad_y.dtype, grad_y.dtype)
    g = grad_y.reshape(-1, n).to(acc) * scale.to(acc)
    gx = torch.mm(g, _decode(w, n, K, acc))
    return gx.to(grad_y.dtype).reshape((*grad_y.shape[:-1], K))


def _ternary_conv2d_cpu(x, packed_w, scale, bias, stride, padding, dilation, version):
    _op_cpu(x, "x")
    _op_floating(x, "x")
    if x.dim() != 4:
        _fail("x must have shape [B, C, H, W], got ", shape_str(x.shape))
    c_in = x.shape[1]
    n, kh, kw, _ = _op_conv_weight(packed_w, c_in, scale, bias, stride, padding, dilation, version)
    w = packed_w.contiguous()
    C.ternary_check_packed_rows(ptr(w), n * kh * kw, c_in, "packed_w", threads())
    acc = _OPMATH.get(x.dtype, x.dtype)
    # The per-channel scale is folded into the decoded weight (code * scale is exact) and the bias
    # goes to the convolution, so oneDNN runs exactly torch's conv2d with no extra output pass.
    wd = _decode_conv(w, n, kh, kw, c_in, acc) * scale.to(acc).view(-1, 1, 1, 1)
    b = None if bias is None else bias.to(acc)
    return torch.conv2d(x.to(acc), wd, b, stride, padding, dilation).to(x.dtype)


def _ternary_conv2d_grad_input_cpu(grad_y, packed_w, scale, input_size, stride, padding, dilation, version):
    _op_cpu(grad_y, "grad_y")
    _op_floating(grad_y, "grad_y")
    if len(input_size) != 4:
        _fail("input_size must be [B, C, H, W], got ", shape_str(input_size))
    n, kh, kw, _ = _op_conv_weight(packed_w, input_size[1], scale, None, stride, padding, dilation, version)
    oh, ow = _conv_out(input_size[2], input_size[3], (kh, kw), stride, padding, dilation)
    if grad_y.dim() != 4 or tuple(grad_y.shape) != (input_size[0], n, oh, ow):
        _fail("grad_y must have shape [", input_size[0], ", ", n, ", ", oh, ", ", ow, "], got ",
              shape_str(grad_y.shape))
    acc = _OPMATH.get(grad_y.dtype, grad_y.dtype)
    gs = grad_y.to(acc) * scale.to(acc).view(1, -1, 1, 1)
    # Rows/cols of the input that no output reads are recovered with output_padding.
    op_h = input_size[2] - ((oh - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + 1)
    op_w = input_size[3] - ((ow - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + 1)
    wd = _decode_conv(packed_w.contiguous(), n, kh, kw, input_size[1], acc)
    gx = torch.conv_transpose2d(gs, wd, None, stride, padding, (op_h, op_w), 1, dilation)
    return gx.to(grad_y.dtype)


def _op_spike_conv(spike_bits, packed_w, scale, bias, c_in, stride, padding, dilation, version, kmajor):
    """Checks of both spike conv ops; returns the native call's leading arguments, (OH, OW) and the
    contiguous tensors that must outlive the call."""
    n, kh, kw, cw = _op_conv_weight(packed_w, c_in, scale, bias, stride, padding, dilation, version)
    _op_cpu(spike_bits, "spike_bits")
    if spike_bits.dtype != _I64:
        _fail("spike_bits must be int64 packed spike words (pack_spikes along channels), got ",
              dtype_str(spike_bits.dtype))
    if spike_bits.dim() != 4 or spike_bits.shape[3] != cw:
        _fail("spike_bits must have shape [B, H, W, ", cw, "] (channels packed last, C = ", c_in, "), got ",
              shape_str(spike_bits.shape))
    bsz, h, wd = spike_bits.shape[:3]
    oh, ow = _conv_out(h, wd, (kh, kw), stride, padding, dilation)
    if oh < 1 or ow < 1:
        _fail("the input ", h, "x", wd, " is too small for kernel ", kh, "x", kw,
              " with this padding/dilation (output would be ", oh, "x", ow, ")")
    if kmajor is not None:
        _op_kmajor(kmajor, _kmajor_rows(c_in, kh * kw) // 64, n)
    keep = (spike_bits.contiguous(), packed_w.contiguous(), scale.contiguous(),
            None if bias is None else bias.contiguous())
    s, w, sc, b = keep
    args = (ptr(s), bsz, h, wd, c_in, ptr(w), n, kh, kw, stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1], ptr(sc), ptr(b))
    return args, (oh, ow), keep


def _spike_ternary_conv2d_cpu(spike_bits, packed_w, scale, bias, C_in, stride, padding, dilation, version,
                              kmajor=None):
    args, (oh, ow), _keep = _op_spike_conv(spike_bits, packed_w, scale, bias, C_in, stride, padding, dilation,
                                           version, kmajor)
    y = empty_output((spike_bits.shape[0], packed_w.shape[0], oh, ow), _F32, memory_format=torch.channels_last)
    C.spike_ternary_conv2d(*args, ptr(kmajor), ptr(y), threads())
    return y


def _spike_ternary_conv2d_lif_cpu(spike_bits, packed_w, scale, bias, C_in, stride, padding, dilation, version,
                                  T, tau, decay_input, v_threshold, v_reset, soft_reset, kmajor=None):
    args, (oh, ow), _keep = _op_spike_conv(spike_bits, packed_w, scale, bias, C_in, stride, padding, dilation,
                                           version, kmajor)
    bsz = spike_bits.shape[0]
    if T < 1 or bsz % T:
        _fail("T must be >= 1 and divide the leading dimension of spike_bits (", bsz,
              " = T * batch, time-major), got T = ", T)
    out = empty_output((bsz, oh, ow, words_for(packed_w.shape[0])), _I64)
    C.spike_ternary_conv2d_lif(*args, T, tau, decay_input, v_threshold, v_reset, soft_reset, ptr(kmajor),
                               ptr(out), threads())
    return out


def _ternary_kmajor_cpu(packed_w, K, version):
    _op_version(version)
    _op_words(packed_w, "packed_w")
    if packed_w.dim() not in (3, 5):
        _fail("packed_w must be [N, 2, KW] (linear) or [N, kh, kw, 2, CW] (conv2d), got ", shape_str(packed_w.shape))
    if K < 1 or packed_w.shape[-1] != words_for(K):
        _fail("packed_w has ", packed_w.shape[-1], " words per plane but K = ", K, " needs ceil(K/64) = ",
              words_for(K))
    w = packed_w.contiguous()
    n = w.shape[0]
    taps = w.shape[1] * w.shape[2] if w.dim() == 5 else 1
    out = torch.empty((_kmajor_rows(K, taps), (n + 127) // 128 * 128), dtype=_I8)
    C.ternary_kmajor(ptr(w), n, taps, K, ptr(out), threads())
    return out


def _ternary_cpu_isa():
    return C.ternary_cpu_isa()


_DIRECT_MAX_M = C.TERNARY_DIRECT_MAX_M

for _name, _fn in (("pack_ternary", _pack_ternary_cpu), ("unpack_ternary", _unpack_ternary_cpu),
                   ("pack_spikes", _pack_spikes_cpu), ("unpack_spikes", _unpack_spikes_cpu),
                   ("ternarize", _ternarize_cpu), ("ternary_linear", _ternary_linear_cpu),
                   ("ternary_linear_grad_input", _ternary_linear_grad_input_cpu),
                   ("spike_ternary_linear", _spike_ternary_linear_cpu),
                   ("ternary_conv2d", _ternary_conv2d_cpu),
                   ("ternary_conv2d_grad_input", _ternary_conv2d_grad_input_cpu),
                   ("spike_ternary_conv2d", _spike_ternary_conv2d_cpu),
                   ("spike_ternary_conv2d_lif", _spike_ternary_conv2d_lif_cpu),
                   ("ternary_kmajor", _ternary_kmajor_cpu)):
    LIB.impl(_name, _fn, "CPU")
# No tensor argument, so no backend to dispatch on: the kernel serves every dispatch key (it
# reports the CPU kernels' instruction set whatever the device).
LIB.impl("ternary_cpu_isa", _ternary_cpu_isa, "CompositeImplicitAutograd")


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
    _WITH_TORCH = ("ternary_conv2d", "ternary_conv2d_grad_input", "ternary_linear_grad_input")
    for _name in _triton_ternary.CUDA_OPS:
        register_cuda(_name, getattr(_triton_ternary, _name), "triton+torch" if _name in _WITH_TORCH else "triton")


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
    if T < 1 or spike_bits.dim() < 1 or spike_bits.shape[0] % T:
        _fail("T must be >= 1 and divide the leading dimension of spike_bits (", shape_str(spike_bits.shape[:1]),
              " = T * batch, time-major), got T = ", T)
    y = torch.ops.tna.spike_ternary_conv2d(spike_bits, packed_w, scale, bias, C, stride, padding, dilation,
                                           version, kmajor)
    y = y.permute(0, 2, 3, 1)  # channels last
    return torch.ops.tna.lif_pack(y.unflatten(0, (T, y.shape[0] // T)), tau, decay_input, v_threshold,
                                  v_reset, soft_reset).flatten(0, 1)


if HAS_TRITON:
    # CUDA tensors: the Triton conv, LIF and packing kernels in sequence (not fused yet on GPU).
    register_cuda("spike_ternary_conv2d_lif", _spike_ternary_conv2d_lif_composed, "triton (unfused)")


# ---- Public functions (re-exported by tna_kernels.functional) -----------------------------------
# Each validates its arguments in one checker (errors name the argument), never modifies the
# caller's tensors, and calls a tna:: op: the native core on CPU tensors, Triton on CUDA tensors.

# The overloads themselves: calling them skips the overload-packet lookup (~1 us per call, which
# matters for the small GEMV calls of packed inference).
_TERNARY_LINEAR = torch.ops.tna.ternary_linear.default
_SPIKE_LINEAR = torch.ops.tna.spike_ternary_linear.default
_SPIKE_CONV2D = torch.ops.tna.spike_ternary_conv2d.default


def _check_quantizer(w: Tensor, method: str, per_channel: bool) -> None:
    """Arguments of the ternarisers (ternarize, ternary_ste, quantize_pack)."""
    if not isinstance(w, Tensor) or not w.dtype.is_floating_point:
        raise TypeError(f"w must be a floating-point torch.Tensor, got {getattr(w, 'dtype', type(w))}")
    if w.dim() < 2 or w.numel() == 0:
        raise ValueError(f"w must have shape [out_channels, ...] with >= 2 non-empty dims, got {tuple(w.shape)}")
    if method not in TERNARY_METHODS:
        raise ValueError(f"method must be one of {TERNARY_METHODS}, got {method!r}")
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be a bool, got {type(per_channel).__name__}")


def ternarize(w: Tensor, *, method: str = "twn", per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Ternary codes and scales of a weight (dim 0 = output channel).

    Args:
        w: float weight ``[N, ...]`` (``nn.Linear`` ``[N, K]`` or ``nn.Conv2d`` ``[N, C, kh, kw]``).
        method: ``"twn"`` (threshold 0.7 mean|w|, scale = mean |w| above it) or ``"absmean"``
            (BitNet: round(w / (mean|w| + 1e-5)) clipped to [-1, 1], scale = mean|w|).
        per_channel: one scale per output channel (default) or one for the tensor (repeated N times).

    Returns:
        ``(codes, scale)``: int8 codes shaped like ``w`` and float32 ``scale`` ``[N]``; the weight
        is ``codes * scale[:, None, ...]``. Formulas: :func:`tna_kernels.reference.ternarize`.
    """
    _check_quantizer(w, method, per_channel)
    codes, scale, _ = torch.ops.tna.ternarize(w.detach(), method, per_channel, False)
    return codes, scale


class _TernarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, method, per_channel, clip):
        codes, scale, _ = torch.ops.tna.ternarize(w.detach(), method, per_channel, False)
        ctx.clip = clip
        if clip is not None:
            ctx.save_for_backward(w)
        return codes.to(w.dtype) * scale.to(w.dtype).reshape((-1,) + (1,) * (w.dim() - 1))

    @staticmethod
    def backward(ctx, grad):
        if ctx.clip is not None:
            (w,) = ctx.saved_tensors
            grad = grad * (w.abs() <= ctx.clip).to(grad.dtype)
        return grad, None, None, None


def _check_ste(w: Tensor, method: str, per_channel: bool, clip) -> float | None:
    _check_quantizer(w, method, per_channel)
    if clip is not None and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be None or a finite number > 0, got {clip!r}")
    return None if clip is None else float(clip)


def ternary_ste(w: Tensor, *, method: str = "twn", per_channel: bool = True,
                clip: float | None = None) -> Tensor:
    """Ternarised weight ``codes * scale`` (dtype and shape of ``w``) for training the latent float
    weights with the straight-through estimator: ``grad_w = grad_out`` (identity), or
    ``grad_out * 1[|w| <= clip]`` with ``clip`` (e.g. 1.0). The scale is a constant in backward.
    ``method``/``per_channel`` as in :func:`ternarize`."""
    clip = _check_ste(w, method, per_channel, clip)
    return _TernarySTE.apply(w, method, per_channel, clip)


def _to_pack_layout(t: Tensor, name: str) -> Tensor:
    """Linear [N, K] stays; conv [N, C, kh, kw] -> [N, kh, kw, C] (packing runs over channels)."""
    if t.dim() == 4:
        return t.permute(0, 2, 3, 1)
    if t.dim() == 2:
        return t
    raise ValueError(f"{name} must be a linear weight [N, K] or a conv2d weight [N, C, kh, kw], "
                     f"got shape {tuple(t.shape)}")


def _vector(t: Tensor | None, n: int, name: str) -> Tensor | None:
    if t is None:
        return None
    if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D tensor of {n} values (one per output channel), "
                         f"got {tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    return t.detach().to(torch.float32).contiguous()


def quantize_pack(w: Tensor, *, method: str = "twn", per_channel: bool = True,
                  bias: Tensor | None = None) -> PackedTernary:
    """Ternarise and pack in one fused kernel call: float weight (``[N, K]`` or ``[N, C, kh, kw]``)
    -> :class:`PackedTernary` (format v1). ``bias`` (optional, ``[N]``) is stored as float32."""
    _check_quantizer(w, method, per_channel)
    wl = _to_pack_layout(w.detach(), "w")
    _, scale, words = torch.ops.tna.ternarize(wl, method, per_channel, True)
    return PackedTernary(words, scale, wl.shape[-1], _vector(bias, w.shape[0], "bias"))


def _check_codes(codes: Tensor) -> Tensor:
    """The int8 codes of pack_ternary, in packing layout."""
    if not isinstance(codes, Tensor) or codes.dtype != torch.int8:
        got = getattr(codes, "dtype", type(codes))
        raise TypeError(f"codes must be an int8 tensor of -1/0/+1, got {got}")
    return _to_pack_layout(codes, "codes")


def pack_ternary(codes: Tensor, scale: Tensor | None = None, bias: Tensor | None = None) -> PackedTernary:
    """Pack int8 codes in {-1, 0, +1} (linear ``[N, K]`` or conv ``[N, C, kh, kw]``) into format v1.

    ``scale`` (``[N]``, default ones) and ``bias`` (``[N]`` or None) are stored as float32. Raises
    on any other code value. The input is never modified."""
    cl = _check_codes(codes)
    n = codes.shape[0]
    scale = torch.ones(n, device=codes.device) if scale is None else _vector(scale, n, "scale")
    return PackedTernary(torch.ops.tna.pack_ternary(cl), scale, cl.shape[-1], _vector(bias, n, "bias"))


def unpack_ternary(packed: PackedTernary) -> Tensor:
    """int8 codes of a :class:`PackedTernary`, in torch layout (``[N, K]`` or ``[N, C, kh, kw]``)."""
    if not isinstance(packed, PackedTernary):
        raise TypeError(f"packed must be a PackedTernary, got {type(packed).__name__}")
    return packed.codes()


def pack_spikes(spikes: Tensor, dim: int = -1) -> Tensor:
    """Bit-pack 0/1 spikes along ``dim`` (moved last): ``[..., K] -> int64 [..., ceil(K/64)]``.

    For conv inputs ``[B, C, H, W]`` use ``dim=1``: the result is ``[B, H, W, CW]``, what
    :func:`spike_ternary_conv2d` takes. Any real or bool dtype; raises on values other than 0 and 1."""
    if not isinstance(spikes, Tensor):
        raise TypeError(f"spikes must be a torch.Tensor, got {type(spikes).__name__}")
    if spikes.dim() == 0:
        raise ValueError("spikes must have at least one dimension")
    return torch.ops.tna.pack_spikes(spikes, dim)


def unpack_spikes(bits: Tensor, K: int, dim: int = -1, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`pack_spikes`: ``[..., KW] -> [..., K]`` in ``dtype``, the unpacked axis
    moved to ``dim``."""
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be an int >= 1, got {K!r}")
    return torch.ops.tna.unpack_spikes(bits, K).to(dtype).movedim(-1, dim)


def _check_packed(weight, conv: bool) -> None:
    if not isinstance(weight, PackedTernary):
        raise TypeError(f"weight must be a PackedTernary (functional.pack_ternary / quantize_pack), "
                        f"got {type(weight).__name__}")
    if weight.is_conv != conv:
        kind = "a conv2d weight [N, kh, kw, 2, CW]" if conv else "a linear weight [N, 2, KW]"
        raise ValueError(f"weight must be {kind}, got words of shape {tuple(weight.words.shape)}")
    if weight.scale.requires_grad or (weight.bias is not None and weight.bias.requires_grad):
        raise ValueError("weight.scale must not require grad: the packed ops differentiate w.r.t. the "
                         "input (and bias) only; train latent weights with ternary_ste")


def _check_linear(x: Tensor, weight: PackedTernary) -> None:
    """Arguments of ternary_linear."""
    _check_packed(weight, conv=False)
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 1 or x.shape[-1] != weight.K:
        raise ValueError(f"x must have shape [..., {weight.K}] (in_features), got {tuple(x.shape)}")
    _check_device(x)


def _check_spike_input(spike_bits: Tensor, weight: PackedTernary, conv: bool, hint: str, T=None) -> None:
    """Arguments of the spike ops: packed spikes, a packed weight of the right kind, and for the
    fused LIF conv the number of time steps T folded into spike_bits' leading dimension."""
    _check_packed(weight, conv=conv)
    if not isinstance(spike_bits, Tensor) or spike_bits.dtype != torch.int64:
        raise TypeError(f"spike_bits must be int64 packed spikes ({hint}), got "
                        f"{getattr(spike_bits, 'dtype', type(spike_bits))}")
    if T is not None and (isinstance(T, bool) or not isinstance(T, int) or T < 1 or spike_bits.dim() < 1
                          or spike_bits.shape[0] % T):
        raise ValueError(f"T must be an int >= 1 that divides spike_bits.shape[0] (T·B, time-major), got T={T!r} "
                         f"for shape {tuple(spike_bits.shape)}")
    _check_device(spike_bits)


def _use_dequantized(x: Tensor, weight: PackedTernary) -> bool:
    """float32 on CPU, eager: torch's GEMM / conv on the weight's cached float copy
    (:meth:`PackedTernary.float_codes` / :meth:`PackedTernary.dequantized`), the same maths as the
    tna op, which decodes on every call. Weights only used with spike inputs never build it."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.words.device.type == "cpu"
            and not torch.compiler.is_compiling())


def ternary_linear(x: Tensor, weight: PackedTernary) -> Tensor:
    """Float activations ``x [..., K]`` times a packed ternary weight: ``(x @ codes.T) * scale + bias``.

    Differentiable w.r.t. ``x`` (``grad_x = (grad_y * scale) @ codes``); returns x's dtype. float32
    on CPU with more than 12 rows runs torch's GEMM on ``weight.float_codes()`` (cached on the
    weight, 4 bytes per weight); otherwise the ``tna::ternary_linear`` op."""
    _check_linear(x, weight)
    if _use_dequantized(x, weight) and x.numel() > _DIRECT_MAX_M * weight.K:
        # the op's arithmetic (exact sums on 0/1 inputs, then * scale + bias: two roundings) on
        # torch's GEMM; up to _DIRECT_MAX_M rows the op's own GEMV kernel is faster
        y = torch.matmul(x, weight.float_codes().T) * weight.scale
        return y if weight.bias is None else y + weight.bias
    return _TERNARY_LINEAR(x, weight.words, weight.scale, weight.bias, weight.version)


def spike_ternary_linear(spike_bits: Tensor, weight: PackedTernary) -> Tensor:
    """Bit-packed spikes (``pack_spikes``, ``[..., KW]``) times a packed ternary weight, exactly:
    ``float32(popcount(S & P) - popcount(S & N)) * scale + bias``; returns float32 ``[..., N]``.

    On CPU the kernel picks popcount or the event-driven (sparse) loop by spike density; the
    latter's K-major weight copy is cached on ``weight`` (:meth:`PackedTernary.kmajor`)."""
    _check_spike_input(spike_bits, weight, False, "pack_spikes")
    return _SPIKE_LINEAR(spike_bits, weight.words, weight.scale, weight.bias,
                         weight.K, weight.version, weight.kmajor())


def _check_conv(x: Tensor, weight: PackedTernary, stride, padding, dilation):
    """Arguments of ternary_conv2d; returns the normalised (stride, padding, dilation)."""
    _check_packed(weight, conv=True)
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.dim() != 4:
        raise TypeError(f"x must be a floating-point [B, C, H, W] tensor, got "
                        f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
    if x.shape[1] != weight.K:
        raise ValueError(f"x has {x.shape[1]} channels but the weight expects {weight.K}")
    _check_device(x)
    return conv_geometry(stride, padding, dilation)


def ternary_conv2d(x: Tensor, weight: PackedTernary, stride=1, padding=0, dilation=1) -> Tensor:
    """conv2d (groups = 1) of float ``x [B, C, H, W]`` with a packed ternary weight, times scale,
    plus bias. Differentiable w.r.t. ``x``; returns x's dtype ``[B, N, OH, OW]``. float32 on CPU
    runs torch's conv on ``weight.dequantized()`` (cached on the weight); otherwise the
    ``tna::ternary_conv2d`` op."""
    s, p, d = _check_conv(x, weight, stride, padding, dilation)
    if _use_dequantized(x, weight):
        return torch.nn.functional.conv2d(x, weight.dequantized(), weight.bias, s, p, d)
    return torch.ops.tna.ternary_conv2d(x, weight.words, weight.scale, weight.bias, s, p, d, weight.version)


def _check_spike_conv(spike_bits: Tensor, weight: PackedTernary, stride, padding, dilation, T=None):
    """Arguments of spike_ternary_conv2d (and of spike_ternary_conv2d_lif, with its T; the neuron's
    arguments are ops.lif_pack._lif_pack_args'); returns the normalised (stride, padding, dilation)."""
    _check_spike_input(spike_bits, weight, True, "pack_spikes(s, dim=1)", T)
    return conv_geometry(stride, padding, dilation)


def spike_ternary_conv2d(spike_bits: Tensor, weight: PackedTernary, stride=1, padding=0,
                         dilation=1) -> Tensor:
    """conv2d (groups = 1) of bit-packed spikes ``[B, H, W, CW]`` (``pack_spikes(s, dim=1)``; fold
    T into B) with a packed ternary weight, exact integer accumulation, float32 epilogue.
    Returns float32 ``[B, N, OH, OW]`` (channels-last memory)."""
    s, p, d = _check_spike_conv(spike_bits, weight, stride, padding, dilation)
    return _SPIKE_CONV2D(spike_bits, weight.words, weight.scale, weight.bias,
                         weight.K, s, p, d, weight.version, weight.kmajor())


def spike_ternary_conv2d_lif(spike_bits: Tensor, weight: PackedTernary, T: int, stride=1, padding=0,
                             dilation=1, *, tau: float | None = None, decay_input: bool | None = None,
                             v_threshold: float = 1.0, v_reset: float | None = 0.0,
                             detach_reset: bool = False, surrogate: str = "atan", alpha: float = 2.0,
                             beta: float | None = None) -> Tensor:
    """:func:`spike_ternary_conv2d` followed by :func:`~tna_kernels.functional.lif_pack` in one kernel
    (the LIF runs in the GEMM's epilogue, tile by tile): packed spikes ``[T·B, H, W, CW]``
    (time-major) → packed spikes ``[T·B, OH, OW, ceil(N/64)]``. Bit-identical to the two-step
    composition. No autograd."""
    from .lif_pack import _lif_pack_args  # the neuron arguments, as lif_pack takes them

    s, p, d = _check_spike_conv(spike_bits, weight, stride, padding, dilation, T)
    return torch.ops.tna.spike_ternary_conv2d_lif(
        spike_bits, weight.words, weight.scale, weight.bias, weight.K, s, p, d, weight.version, T,
        *_lif_pack_args(tau, decay_input, v_threshold, v_reset, surrogate, alpha, beta), weight.kmajor())
