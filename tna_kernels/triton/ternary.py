"""Ternary weights in Triton (GPU; tested on CPU under TRITON_INTERPRET=1). Same contracts and the
same packed format v1 as the C++ kernels (tna_kernels/ops/ternary.py).

Spike x ternary (implicit GEMM, linear = 1x1 conv on a 1x1 image): one program per BM x BN output
tile; the K loop walks (tap, channel word). Each step loads one 64-bit word per spike row and per
weight row, expands them in registers to an int8 {0,1} tile [BM, 64] and an int8 {-1,0,1} tile
[64, BN] (bit k of the word -> element k), and accumulates ``tl.dot`` int8 x int8 -> int32, which is
exact. Epilogue ``float32(acc) * scale + bias`` with FP fusion disabled (two roundings, as in the
reference). Float x ternary decodes the codes tile to the input dtype for float16 / bfloat16 x
(tensor-core ``tl.dot``, float32 accumulation: the products x * code are exact) and to float32 with
IEEE fp32 inputs (no TF32) otherwise. Packing and the fused quantise-and-pack kernel work one
64-element word per lane.
Float conv and the input gradients decode the codes with Triton and call torch (cuDNN / cuBLAS) in
float32, TF32 only for half inputs where it is exact (see "precision of the float paths" below).

Launch path (see _launch.py): every kernel is launched directly (``kernel[grid](...)``) on a
one-dimensional grid, so no grid dimension is bounded by 65,535 whatever K, M or N is: the GEMMs
fold their (M, N) tiles into dimension 0, and the word kernels (pack, unpack, decode, quantise-and-
pack) walk the flattened (row, word) index, ``WORDS`` words per program. The GEMMs autotune on
power-of-two buckets of M, N and K. Offsets that can pass 2^31 are formed in int64.
Host synchronisation: only ``pack_ternary`` (one ``.item()`` to raise a clear error on codes outside
{-1, 0, +1}; it packs weights once at conversion time, never per training step). ``pack_spikes``
(on the training path) does not synchronise: bad spikes are reported by ``torch._assert_async``,
which on CUDA is a device-side assert (documented in docs/GPU.md).
"""

import contextlib

import torch
import triton
import triton.language as tl

from .._utils import triton_interpreting
from ..formats import FORMAT_VERSION as TERNARY_FORMAT_VERSION
from ._launch import WORDS, bucket, check_grid, tile_grid, word_grid

CUDA_OPS = ("pack_ternary", "unpack_ternary", "pack_spikes", "unpack_spikes", "ternarize",
            "ternary_linear", "ternary_linear_grad_input", "spike_ternary_linear", "ternary_conv2d",
            "ternary_conv2d_grad_input", "spike_ternary_conv2d")

_NOFUSE = {} if triton_interpreting() else {"enable_fp_fusion": False}


def _gemm_configs():
    if triton_interpreting():
        return [triton.Config({"BM": 16, "BN": 16}, num_warps=1)]
    return [triton.Config({"BM": bm, "BN": bn}, num_warps=w, num_stages=s)
            for bm in (64, 128) for bn in (64, 128) for w in (4, 8) for s in (3,)]


@triton.jit
def _bits_to_rows(words, BITS: tl.constexpr):
    """words [R] int64 -> [R, 64] int32 of bits (bit j of word r at column j)."""
    j = tl.arange(0, BITS)
    return ((words[:, None] >> j[None, :].to(tl.int64)) & 1).to(tl.int32)


@triton.autotune(configs=_gemm_configs(), key=["M_BUCKET", "N_BUCKET", "K_BUCKET"])
@triton.jit
def _spike_conv_kernel(s_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, H, W, OH, OW, CW, KWT,
                       M_BUCKET, N_BUCKET, K_BUCKET,
                       KHW: tl.constexpr, KW_: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                       PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                       HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)  # (M tile, N tile) folded into grid dimension 0, N tiles fastest
    n_tiles = tl.cdiv(N, BN)
    pid_m = (pid // n_tiles).to(tl.int64)
    pid_n = pid % n_tiles
    rm = pid_m * BM + tl.arange(0, BM)  # int64: M = B * OH * OW may pass 2^31
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    ow = rm % OW
    oh = (rm // OW) % OH
    b = rm // (OW * OH)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for t in range(KHW):
        i = t // KW_
        j = t % KW_
        ih = oh * SH - PH + i * DH
        iw = ow * SW - PW + j * DW
        inb = mmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        srow = ((b.to(tl.int64) * H + ih) * W + iw) * CW
        for c in range(CW):
            sw = tl.load(s_ptr + srow + c, mask=inb, other=0)
            pw = tl.load(w_ptr + ((rn.to(tl.int64) * KHW + t) * 2 + 0) * CW + c, mask=nmask, other=0)
            nw = tl.load(w_ptr + ((rn.to(tl.int64) * KHW + t) * 2 + 1) * CW + c, mask=nmask, other=0)
            a = _bits_to_rows(sw, 64).to(tl.int8)                                     # [BM, 64]
            cb = (_bits_to_rows(pw, 64) - _bits_to_rows(nw, 64)).to(tl.int8)         # [BN, 64]
            acc = tl.dot(a, tl.trans(cb), acc, out_dtype=tl.int32)
    scale = tl.load(scale_ptr + rn, mask=nmask, other=0.0)
    y = acc.to(tl.float32) * scale[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=nmask, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], y, mask=mmask[:, None] & nmask[None, :])


@triton.autotune(configs=_gemm_configs(), key=["M_BUCKET", "N_BUCKET", "K_BUCKET"])
@triton.jit
def _float_linear_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K, KWD, M_BUCKET, N_BUCKET, K_BUCKET,
                         HAS_BIAS: tl.constexpr, HALF_DOT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    # HALF_DOT (float16 / bfloat16 x): x stays in its dtype and the codes tile is converted to it;
    # every product x * code (code in {-1, 0, +1}) is exact in that dtype, and tl.dot (tensor cores)
    # accumulates in float32, so the sum is the float32 path's sum of exact products up to the order.
    # Otherwise (float32; float64 is read as float32): IEEE float32 inputs, no TF32.
    pid = tl.program_id(0)  # (M tile, N tile) folded into grid dimension 0, N tiles fastest
    n_tiles = tl.cdiv(N, BN)
    pid_m = (pid // n_tiles).to(tl.int64)
    pid_n = pid % n_tiles
    rm = pid_m * BM + tl.arange(0, BM)  # int64
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    kk = tl.arange(0, 64)
    for c in range(KWD):
        k = c * 64 + kk
        x = tl.load(x_ptr + rm[:, None] * K + k[None, :], mask=mmask[:, None] & (k[None, :] < K), other=0.0)
        pw = tl.load(w_ptr + (rn.to(tl.int64) * 2 + 0) * KWD + c, mask=nmask, other=0)
        nw = tl.load(w_ptr + (rn.to(tl.int64) * 2 + 1) * KWD + c, mask=nmask, other=0)
        cb = _bits_to_rows(pw, 64) - _bits_to_rows(nw, 64)                             # [BN, 64]
        if HALF_DOT:  # via float32: the interpreter casts int32 -> bfloat16 as raw uint16 storage
            acc = tl.dot(x, tl.trans(cb.to(tl.float32).to(x_ptr.dtype.element_ty)), acc)
        else:
            acc = tl.dot(x.to(tl.float32), tl.trans(cb.to(tl.float32)), acc, input_precision="ieee")
    scale = tl.load(scale_ptr + rn, mask=nmask, other=0.0)
    y = acc * scale[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=nmask, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _word_index(TOTAL, KWD, WORDS: tl.constexpr):
    """This program's WORDS words of the flattened [rows, KWD] word index: (g, row, word, mask)."""
    g = tl.program_id(0).to(tl.int64) * WORDS + tl.arange(0, WORDS)
    r = g // KWD
    return g, r, g - r * KWD, g < TOTAL


@triton.jit
def _decode_kernel(w_ptr, out_ptr, K, KWD, TOTAL, BITS: tl.constexpr, WORDS: tl.constexpr):
    """Packed [R, 2, KWD] -> out [R, K] (-1/0/1 in out's dtype); TOTAL = R * KWD words."""
    g, r, c, gmask = _word_index(TOTAL, KWD, WORDS)
    sh = tl.arange(0, BITS).to(tl.int64)[None, :]
    pw = tl.load(w_ptr + (r * 2 + 0) * KWD + c, mask=gmask, other=0)
    nw = tl.load(w_ptr + (r * 2 + 1) * KWD + c, mask=gmask, other=0)
    v = ((pw[:, None] >> sh) & 1) - ((nw[:, None] >> sh) & 1)
    k = c[:, None] * 64 + sh
    tl.store(out_ptr + r[:, None] * K + k, v.to(out_ptr.dtype.element_ty), mask=gmask[:, None] & (k < K))


@triton.jit
def _unpack_spikes_kernel(bits_ptr, out_ptr, K, KWD, TOTAL, BITS: tl.constexpr, WORDS: tl.constexpr):
    """Words [R, KWD] -> uint8 0/1 [R, K] (bit j of word c -> element 64 c + j)."""
    g, r, c, gmask = _word_index(TOTAL, KWD, WORDS)
    sh = tl.arange(0, BITS).to(tl.int64)[None, :]
    w = tl.load(bits_ptr + g, mask=gmask, other=0)
    k = c[:, None] * 64 + sh
    tl.store(out_ptr + r[:, None] * K + k, ((w[:, None] >> sh) & 1).to(tl.uint8),
             mask=gmask[:, None] & (k < K))


@triton.jit
def _pack_kernel(src_ptr, out_ptr, bad_ptr, K, KWD, TOTAL, TERNARY: tl.constexpr, BITS: tl.constexpr,
                 WORDS: tl.constexpr):
    """[R, K] -> one word per 64 values (spikes, [R, KWD]) or a P and an N word (ternary codes,
    [R, 2, KWD]). Values outside the alphabet are counted into bad_ptr by one atomic, issued only
    by a program that found one (nothing is added on valid input)."""
    g, r, c, gmask = _word_index(TOTAL, KWD, WORDS)
    sh = tl.arange(0, BITS).to(tl.int64)[None, :]
    k = c[:, None] * 64 + sh
    v = tl.load(src_ptr + r[:, None] * K + k, mask=gmask[:, None] & (k < K), other=0)
    if TERNARY:
        ok = (v == 0) | (v == 1) | (v == -1)
        p = tl.sum((v == 1).to(tl.int64) << sh, axis=1)
        n = tl.sum((v == -1).to(tl.int64) << sh, axis=1)
        tl.store(out_ptr + (r * 2 + 0) * KWD + c, p, mask=gmask)
        tl.store(out_ptr + (r * 2 + 1) * KWD + c, n, mask=gmask)
    else:
        ok = (v == 0) | (v == 1)
        tl.store(out_ptr + g, tl.sum((v == 1).to(tl.int64) << sh, axis=1), mask=gmask)
    nbad = tl.sum(tl.sum((~ok).to(tl.int32), axis=1), axis=0)
    tl.atomic_add(bad_ptr, nbad, mask=nbad > 0)


@triton.jit
def _row_stats_kernel(w_ptr, thr_ptr, abs_ptr, above_ptr, cnt_ptr, R, TWN_PASS: tl.constexpr,
                      BLOCK: tl.constexpr):
    """Per row (float64): sum |w|, or (TWN_PASS) the sum and count of |w| > thr[row]."""
    r = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    s = tl.zeros((BLOCK,), dtype=tl.float64)
    cnt = tl.zeros((BLOCK,), dtype=tl.float64)
    if TWN_PASS:
        thr = tl.load(thr_ptr + r)
    for start in range(0, R, BLOCK):
        k = start + offs
        a = tl.abs(tl.load(w_ptr + r * R + k, mask=k < R, other=0.0).to(tl.float64))
        if TWN_PASS:
            keep = a > thr
            s += tl.where(keep, a, 0.0)
            cnt += keep.to(tl.float64)
        else:
            s += a
    if TWN_PASS:
        tl.store(above_ptr + r, tl.sum(s, axis=0))
        tl.store(cnt_ptr + r, tl.sum(cnt, axis=0))
    else:
        tl.store(abs_ptr + r, tl.sum(s, axis=0))


@triton.jit
def _channel_stats_kernel(w_ptr, thr_ptr, scale_ptr, R, TWN: tl.constexpr, BLOCK: tl.constexpr):
    """Per-channel ternarize in one launch: per row of R weights (one program each), the threshold
    (float64) and the scale (float32) the quantiser needs, with _row_stats_kernel's sums and the
    float64 arithmetic of the layer-wise path (mean = sum|w| / R; TWN: thr = 0.7 mean, scale = the
    mean of |w| > thr, 0 when none; absmean: thr = mean + 1e-5, scale = mean). The constants are
    float64 (tl.full): a bare 0.7 literal would be rounded to float32 first."""
    r = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    s = tl.zeros((BLOCK,), dtype=tl.float64)
    for start in range(0, R, BLOCK):
        k = start + offs
        s += tl.abs(tl.load(w_ptr + r * R + k, mask=k < R, other=0.0).to(tl.float64))
    mean = tl.sum(s, axis=0) / R
    if TWN:
        thr = tl.full((), 0.7, tl.float64) * mean
        above = tl.zeros((BLOCK,), dtype=tl.float64)
        cnt = tl.zeros((BLOCK,), dtype=tl.float64)
        for start in range(0, R, BLOCK):
            k = start + offs
            a = tl.abs(tl.load(w_ptr + r * R + k, mask=k < R, other=0.0).to(tl.float64))
            keep = a > thr
            above += tl.where(keep, a, 0.0)
            cnt += keep.to(tl.float64)
        above_sum = tl.sum(above, axis=0)
        cnt_sum = tl.sum(cnt, axis=0)
        scale = tl.where(cnt_sum > 0, above_sum / tl.maximum(cnt_sum, 1.0), 0.0)
    else:
        thr = mean + tl.full((), 1e-5, tl.float64)
        scale = mean
    tl.store(thr_ptr + r, thr)
    tl.store(scale_ptr + r, scale.to(tl.float32))


@triton.jit
def _quantize_pack_kernel(w_ptr, thr_ptr, codes_ptr, out_ptr, K, KWD, TOTAL, ROWS_PER_THR, PACK: tl.constexpr,
                          TWN: tl.constexpr, BITS: tl.constexpr, WORDS: tl.constexpr):
    """Fused: codes of WORDS 64-element words of the rows (the last axis; rows of K elements in
    dim-0 order; thr per output channel, i.e. per ROWS_PER_THR consecutive rows), written as int8
    and packed into the P/N words in the same pass."""
    g, r, c, gmask = _word_index(TOTAL, KWD, WORDS)
    sh = tl.arange(0, BITS).to(tl.int64)[None, :]
    k = c[:, None] * 64 + sh
    m = gmask[:, None] & (k < K)
    thr = tl.load(thr_ptr + r // ROWS_PER_THR, mask=gmask, other=1.0)[:, None]
    v = tl.load(w_ptr + r[:, None] * K + k, mask=m, other=0.0).to(tl.float64)
    if TWN:
        code = tl.where(tl.abs(v) > thr, tl.where(v > 0, 1, -1), 0)
    else:
        q = v / thr  # thr = mean|w| + eps; round half to even, clip to [-1, 1]
        code = tl.where(q > 0.5, 1, tl.where(q < -0.5, -1, 0))  # = clamp(round_half_even(q), -1, 1)
    tl.store(codes_ptr + r[:, None] * K + k, code.to(tl.int8), mask=m)
    if PACK:
        tl.store(out_ptr + (r * 2 + 0) * KWD + c, tl.sum((code == 1).to(tl.int64) << sh, axis=1), mask=gmask)
        tl.store(out_ptr + (r * 2 + 1) * KWD + c, tl.sum((code == -1).to(tl.int64) << sh, axis=1), mask=gmask)


# ---- precision of the float paths on half / bfloat16 inputs ---------------------------------------
# The decoded codes are exactly -1, 0 and +1, so a float16 / bfloat16 value times a code is exact.
# ternary_linear runs tl.dot on the input dtype (HALF_DOT). The conv and the two input gradients run
# cuDNN / cuBLAS on float32 tensors with TF32 allowed for half inputs only: a float16 (11-bit
# significand, max 65504, subnormals down to 2^-24 = normal numbers in float32's exponent range) or
# bfloat16 value (8-bit significand, float32's exponent) is exactly a TF32 value (11-bit
# significand, float32's exponent), so the tensor cores form the same exact products as IEEE float32
# and accumulate in float32; the result gets one rounding to the input dtype, after the float32
# epilogue, as in the reference. Not chosen: cuDNN / cuBLAS in bfloat16 / float16, whose output is
# rounded to that dtype before the float32 scale (a second rounding: up to one ulp instead of half),
# and float16 would overflow where sum(x * code) passes 65504 but sum * scale does not.
# The input gradients sum grad_y[n] * scale[n] * code[n, k] over n: a scale (any float32) is not a
# TF32 value, so it is split, s = s_hi + s_lo (_split_tf32), and the GEMM / transposed conv runs once
# on the weights [codes * s_hi | codes * s_lo] (twice the columns / channels): grad_y * s_hi is exact,
# and TF32 rounds s_lo by at most 2^-10 |s_lo| <= 2^-20 |s|, below float32's own summation error.
# Float32 inputs keep IEEE float32 (TF32 off, whatever torch's defaults: cuDNN allows TF32 by default).

def _is_half(dtype):
    return dtype in (torch.float16, torch.bfloat16)


def _half_dot(dtype):
    """HALF_DOT for _float_linear_kernel. Under the interpreter bfloat16 takes the float32 branch
    (the same exact sums): Triton's interpreter multiplies bfloat16 tiles as their uint16 storage."""
    return dtype == torch.float16 or (dtype == torch.bfloat16 and not triton_interpreting())


def _split_tf32(t):
    """float32 t = hi + lo exactly: hi keeps the top 10 mantissa bits (a TF32 value), lo the rest."""
    hi = (t.contiguous().view(torch.int32) & -8192).view(torch.float32)  # -8192: low 13 bits clear
    return hi, t - hi


@contextlib.contextmanager
def _tf32(allow, cuda):
    """TF32 allowed (or not) in cuDNN convolutions and cuBLAS matmuls for the calls inside, the
    previous settings restored after; nothing to set when the tensors are not on CUDA."""
    if not cuda:
        yield
        return
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: the fp32_precision API
        objs, attr, val = (torch.backends.cudnn.conv, torch.backends.cuda.matmul), "fp32_precision", \
            "tf32" if allow else "ieee"
    else:
        objs, attr, val = (torch.backends.cudnn, torch.backends.cuda.matmul), "allow_tf32", allow
    saved = [getattr(o, attr) for o in objs]
    try:
        for o in objs:
            setattr(o, attr, val)
        yield
    finally:
        for o, v in zip(objs, saved):
            setattr(o, attr, v)


# ---- launchers (same contracts as the C++ ops) ---------------------------------------------------
# Every launcher checks its arguments on the host first, as the CPU op does (the errors name the
# argument): a size the kernels trust (words per row, scale and bias lengths, conv geometry) is
# never left to an out-of-bounds access on the device.

def _words(k):
    return (k + 63) // 64


def _shape(t):
    return list(t.shape)


def _check_floating(t, name):
    if not t.dtype.is_floating_point:
        raise RuntimeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_scale_bias(scale, bias, n, device):
    """float32 [n] on the input's device (one per output channel); bias may be None."""
    for name, t in (("scale", scale), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != torch.float32 or t.dim() != 1 or t.shape[0] != n:
            raise RuntimeError(f"{name} must be float32 of shape [{n}] (one per output channel), got {t.dtype} "
                               f"{_shape(t)}")
        if t.device != device:
            raise RuntimeError(f"{name} must be on {device} like the input, got {t.device}")


def _check_geometry(stride, padding, dilation):
    for name, v, lo in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(v) != 2 or v[0] < lo or v[1] < lo:
            raise RuntimeError(f"{name} must be two integers >= {lo}, got {list(v)}")


def _conv_out(h, w, packed_w, stride, padding, dilation):
    """(OH, OW) of a conv with packed_w [N, kh, kw, 2, CW] on an h x w input; at least 1 x 1."""
    kh, kw = packed_w.shape[1:3]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise RuntimeError(f"the input {h}x{w} is too small for kernel {kh}x{kw} with this padding/dilation "
                           f"(output would be {oh}x{ow})")
    return oh, ow


def _check_version(version):
    if version != TERNARY_FORMAT_VERSION:
        raise RuntimeError(f"version: this build reads packed ternary format v{TERNARY_FORMAT_VERSION} "
                           f"only, got v{version}")


def _check_packed(packed_w, K, rank, name="packed_w"):
    """Packed words [N, 2, KW] (rank 3), [N, kh, kw, 2, CW] (rank 5) or, rank None, [N, ..., 2, KW]."""
    rank_ok = packed_w.dim() >= 3 if rank is None else packed_w.dim() == rank
    if packed_w.dtype != torch.int64 or not rank_ok or packed_w.shape[-2] != 2:
        what = f"of rank {rank}" if rank else "[N, ..., 2, KW]"
        raise RuntimeError(f"{name} must be int64 packed ternary words {what}, got "
                           f"{packed_w.dtype} {tuple(packed_w.shape)}")
    if K < 1:
        raise RuntimeError(f"K must be >= 1 (inputs per output; channels for conv2d), got {K}")
    if packed_w.shape[-1] != _words(K):
        raise RuntimeError(f"{name} has {packed_w.shape[-1]} words per plane but K = {K} needs "
                           f"ceil(K/64) = {_words(K)}")


def _pack(src, ternary):
    K = src.shape[-1]
    rows = src.numel() // K if K else 0
    kw = _words(K)
    shape = (*src.shape[:-1], 2, kw) if ternary else (*src.shape[:-1], kw)
    out = torch.empty(shape, dtype=torch.int64, device=src.device)
    bad = torch.zeros(1, dtype=torch.int32, device=src.device)
    if rows and kw:
        src = src.contiguous()
        if src.dtype == torch.bool:
            src = src.view(torch.uint8)
        _pack_kernel[word_grid(rows * kw, "pack")](src, out, bad, K, kw, rows * kw, TERNARY=ternary, BITS=64,
                                                   WORDS=WORDS)
    if ternary:
        # Weights are packed once (conversion time), so one host sync buys a clear error instead
        # of a device-side assert that would leave the CUDA context unusable.
        if bad.item():
            raise RuntimeError("codes must contain only -1, 0 and +1 (ternary)")
    else:
        # On the training path: no host sync. On CUDA this is a device-side assert (docs/GPU.md).
        torch._assert_async(bad[0] == 0, "spikes must contain only 0 and 1")
    return out


def pack_ternary(codes):
    if codes.dtype != torch.int8:
        raise RuntimeError(f"codes must be int8 ternary codes in {{-1, 0, +1}}, got dtype {codes.dtype}")
    if codes.dim() < 1 or codes.shape[-1] < 1:
        raise RuntimeError("codes must have shape [..., K] with K >= 1 (packing runs along the last axis), got "
                           f"{_shape(codes)}")
    return _pack(codes, True)


def pack_spikes(spikes, dim=-1):
    nd = spikes.dim()
    if nd < 1:
        raise RuntimeError("spikes must have at least one dimension")
    if not -nd <= dim < nd:
        raise RuntimeError(f"dim must be in [{-nd}, {nd - 1}], got {dim}")
    if spikes.shape[dim] < 1:
        raise RuntimeError(f"spikes must have a non-empty packing axis (dim {dim % nd}), got shape {_shape(spikes)}")
    if spikes.is_complex():
        raise RuntimeError(f"spikes must be a real or bool tensor of 0/1 values, got {spikes.dtype}")
    return _pack(spikes.movedim(dim, -1), False)


def _decode(packed_w, rows, K, dtype=torch.float32):
    """Packed [rows, 2, KW] -> [rows, K] codes (-1/0/1) written directly in ``dtype``."""
    out = torch.empty((rows, K), dtype=dtype, device=packed_w.device)
    kw = _words(K)
    if rows and kw:
        _decode_kernel[word_grid(rows * kw, "decode")](packed_w.contiguous(), out, K, kw, rows * kw, BITS=64,
                                                       WORDS=WORDS)
    return out


def unpack_ternary(packed, K, version):
    _check_version(version)
    _check_packed(packed, K, None, "packed")
    kw = _words(K)
    rows = packed.numel() // (2 * kw) if kw else 0
    return _decode(packed, rows, K, torch.int8).reshape(*packed.shape[:-2], K)


def unpack_spikes(bits, K):
    """Words [..., KW] -> uint8 0/1 [..., K] (the CPU op's dtype), one byte per spike."""
    if K < 1:
        raise RuntimeError(f"K must be >= 1, got {K}")
    if bits.dtype != torch.int64 or bits.dim() < 1 or bits.shape[-1] != _words(K):
        raise RuntimeError(f"bits must be int64 packed spikes [..., {_words(K)}] for K = {K}, got "
                           f"{bits.dtype} {tuple(bits.shape)}")
    out = torch.empty((*bits.shape[:-1], K), dtype=torch.uint8, device=bits.device)
    kw = _words(K)
    rows = bits.numel() // kw if kw else 0
    if rows:
        _unpack_spikes_kernel[word_grid(rows * kw, "unpack_spikes")](bits.contiguous(), out, K, kw, rows * kw,
                                                                     BITS=64, WORDS=WORDS)
    return out


def ternarize(w, method, per_channel, pack):
    _check_floating(w, "w")
    if w.dim() < 2 or w.numel() == 0:
        raise RuntimeError("w must have shape [out_channels, ...] with at least 2 dims and no empty dim, got "
                           f"{_shape(w)}")
    if method not in ("twn", "absmean"):
        raise RuntimeError(f"method must be 'twn' or 'absmean', got '{method}'")
    x = w.contiguous()
    n = x.shape[0]
    R = x.numel() // n
    K = x.shape[-1]
    grid_rows = x.numel() // K
    dev = x.device
    if per_channel:  # threshold and scale in one launch, no torch ops between the kernels
        thr = torch.empty(n, dtype=torch.float64, device=dev)
        scale = torch.empty(n, dtype=torch.float32, device=dev)
        _channel_stats_kernel[check_grid((n,), "ternarize")](x, thr, scale, R, TWN=method == "twn", BLOCK=256)
    else:
        abs_sum = torch.empty(n, dtype=torch.float64, device=dev)
        stats = _row_stats_kernel[check_grid((n,), "ternarize")]
        stats(x, abs_sum, abs_sum, abs_sum, abs_sum, R, TWN_PASS=False, BLOCK=256)
        mean = (abs_sum.sum() / (R * n)).expand(n).contiguous()
        if method == "twn":
            thr = (0.7 * mean).contiguous()
            above = torch.empty(n, dtype=torch.float64, device=dev)
            cnt = torch.empty(n, dtype=torch.float64, device=dev)
            stats(x, thr, above, above, cnt, R, TWN_PASS=True, BLOCK=256)
            above, cnt = above.sum().expand(n), cnt.sum().expand(n)
            scale = torch.where(cnt > 0, above / cnt.clamp(min=1), torch.zeros_like(above))
        else:
            thr = (mean + 1e-5).contiguous()
            scale = mean
        scale = scale.to(torch.float32)
    codes = torch.empty(x.shape, dtype=torch.int8, device=dev)
    kw = _words(K)
    packed = torch.empty((*x.shape[:-1], 2, kw) if pack else (0,), dtype=torch.int64, device=dev)
    if grid_rows and kw:
        _quantize_pack_kernel[word_grid(grid_rows * kw, "ternarize")](
            x, thr, codes, packed if pack else codes, K, kw, grid_rows * kw, R // K, PACK=pack,
            TWN=method == "twn", BITS=64, WORDS=WORDS)
    return codes, scale, packed


def spike_ternary_conv2d(spike_bits, packed_w, scale, bias, C, stride, padding, dilation, version,
                         kmajor=None):
    # kmajor (the CPU event-driven layout) is not used on the GPU.
    _check_version(version)
    _check_packed(packed_w, C, 5)
    if spike_bits.dtype != torch.int64:
        raise RuntimeError(f"spike_bits must be int64 packed spike words (pack_spikes along channels), got "
                           f"{spike_bits.dtype}")
    if spike_bits.dim() != 4 or spike_bits.shape[3] != _words(C):
        raise RuntimeError(f"spike_bits must have shape [B, H, W, {_words(C)}] (channels packed last, C = {C}), "
                           f"got {_shape(spike_bits)}")
    _check_scale_bias(scale, bias, packed_w.shape[0], spike_bits.device)
    _check_geometry(stride, padding, dilation)
    Bn, H, W, CW = spike_bits.shape
    N, kh, kw = packed_w.shape[:3]
    oh, ow = _conv_out(H, W, packed_w, stride, padding, dilation)
    y = torch.empty((Bn, N, oh, ow), dtype=torch.float32, device=spike_bits.device,
                    memory_format=torch.channels_last)
    M = Bn * oh * ow
    if M and N:
        grid = lambda meta: tile_grid(M, N, meta["BM"], meta["BN"], "spike_ternary_conv2d")  # noqa: E731
        _spike_conv_kernel[grid](
            spike_bits.contiguous(), packed_w.contiguous(), scale.contiguous(),
            scale if bias is None else bias.contiguous(), y, M, N, H, W, oh, ow, CW, kh * kw * CW,
            bucket(M), bucket(N), bucket(kh * kw * CW),
            KHW=kh * kw, KW_=kw, SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1],
            DH=dilation[0], DW=dilation[1], HAS_BIAS=bias is not None, **_NOFUSE)
    return y


def spike_ternary_linear(spike_bits, packed_w, scale, bias, K, version, kmajor=None):
    _check_version(version)
    _check_packed(packed_w, K, 3)
    if spike_bits.dtype != torch.int64:
        raise RuntimeError(f"spike_bits must be int64 packed spike words (pack_spikes), got {spike_bits.dtype}")
    if spike_bits.dim() < 1 or spike_bits.shape[-1] != _words(K):
        raise RuntimeError(f"spike_bits must have shape [..., {_words(K)}] for K = {K}, got "
                           f"{tuple(spike_bits.shape)}")
    lead = spike_bits.shape[:-1]
    s = spike_bits.reshape(-1, 1, 1, _words(K))
    y = spike_ternary_conv2d(s, packed_w.unsqueeze(1).unsqueeze(1), scale, bias, K, [1, 1], [0, 0],
                             [1, 1], version)
    return y.reshape(*lead, packed_w.shape[0])


def ternary_linear(x, packed_w, scale, bias, version):
    _check_version(version)
    _check_floating(x, "x")
    if x.dim() < 1:
        raise RuntimeError(f"x must have shape [..., K], got {_shape(x)}")
    K = x.shape[-1]
    _check_packed(packed_w, K, 3)
    N = packed_w.shape[0]
    _check_scale_bias(scale, bias, N, x.device)
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M and N:
        grid = lambda meta: tile_grid(M, N, meta["BM"], meta["BN"], "ternary_linear")  # noqa: E731
        _float_linear_kernel[grid](
            x2, packed_w.contiguous(), scale.contiguous(), scale if bias is None else bias.contiguous(),
            y, M, N, K, _words(K), bucket(M), bucket(N), bucket(K), HAS_BIAS=bias is not None,
            HALF_DOT=_half_dot(x.dtype), **_NOFUSE)
    return y.reshape(*x.shape[:-1], N)


def ternary_linear_grad_input(grad_y, packed_w, scale, K, version):
    _check_version(version)
    _check_floating(grad_y, "grad_y")
    _check_packed(packed_w, K, 3)
    N = packed_w.shape[0]
    if grad_y.dim() < 1 or grad_y.shape[-1] != N:
        raise RuntimeError(f"grad_y must have shape [..., {N}], got {_shape(grad_y)}")
    _check_scale_bias(scale, None, N, grad_y.device)
    half = _is_half(grad_y.dtype)
    acc = torch.float32 if half else grad_y.dtype
    codes = _decode(packed_w, N, K, acc)
    g = grad_y.reshape(-1, N).to(acc)
    with _tf32(half, grad_y.is_cuda):
        if half:  # one GEMM on [codes * s_hi | codes * s_lo]: see _split_tf32
            s_hi, s_lo = _split_tf32(scale)
            gx = g @ torch.cat((codes * s_hi[:, None], codes * s_lo[:, None]), dim=1)
            gx = gx[:, :K] + gx[:, K:]
        else:
            gx = g @ (codes * scale.to(acc)[:, None])
    return gx.to(grad_y.dtype).reshape(*grad_y.shape[:-1], K)


def _decode_conv(packed_w, C, dtype):
    N, kh, kw = packed_w.shape[:3]
    codes = _decode(packed_w, N * kh * kw, C, dtype).reshape(N, kh, kw, C)
    return codes.permute(0, 3, 1, 2).contiguous()


def ternary_conv2d(x, packed_w, scale, bias, stride, padding, dilation, version):
    _check_version(version)
    _check_floating(x, "x")
    if x.dim() != 4:
        raise RuntimeError(f"x must have shape [B, C, H, W], got {_shape(x)}")
    _check_packed(packed_w, x.shape[1], 5)
    _check_scale_bias(scale, bias, packed_w.shape[0], x.device)
    _check_geometry(stride, padding, dilation)
    _conv_out(x.shape[2], x.shape[3], packed_w, stride, padding, dilation)
    half = _is_half(x.dtype)
    acc = torch.float32 if half else x.dtype
    with _tf32(half, x.is_cuda):  # half: exact TF32 operands (see "precision of the float paths")
        y = torch.nn.functional.conv2d(x.to(acc), _decode_conv(packed_w, x.shape[1], acc), None, stride,
                                       padding, dilation)
    y.mul_(scale.to(acc).view(1, -1, 1, 1))  # float32 epilogue, then the one rounding to x's dtype
    if bias is not None:
        y.add_(bias.to(acc).view(1, -1, 1, 1))
    return y.to(x.dtype)


def ternary_conv2d_grad_input(grad_y, packed_w, scale, input_size, stride, padding, dilation, version):
    _check_version(version)
    _check_floating(grad_y, "grad_y")
    if len(input_size) != 4:
        raise RuntimeError(f"input_size must be [B, C, H, W], got {list(input_size)}")
    _check_packed(packed_w, input_size[1], 5)
    _check_scale_bias(scale, None, packed_w.shape[0], grad_y.device)
    _check_geometry(stride, padding, dilation)
    out = [input_size[0], packed_w.shape[0], *_conv_out(*input_size[2:], packed_w, stride, padding, dilation)]
    if _shape(grad_y) != out:
        raise RuntimeError(f"grad_y must have shape {out}, got {_shape(grad_y)}")
    half = _is_half(grad_y.dtype)
    acc = torch.float32 if half else grad_y.dtype
    codes = _decode_conv(packed_w, input_size[1], acc)  # [N, C, kh, kw]
    g = grad_y.to(acc)
    with _tf32(half, grad_y.is_cuda):
        if half:  # one transposed conv on [codes * s_hi | codes * s_lo] along C: see _split_tf32
            s_hi, s_lo = _split_tf32(scale.view(-1, 1, 1, 1))
            w = torch.cat((codes * s_hi, codes * s_lo), dim=1)
            size = [input_size[0], 2 * input_size[1], *input_size[2:]]
            gx = torch.nn.grad.conv2d_input(size, w, g, stride, padding, dilation)
            gx = gx[:, :input_size[1]] + gx[:, input_size[1]:]
        else:
            gx = torch.nn.grad.conv2d_input(list(input_size), codes * scale.to(acc).view(-1, 1, 1, 1), g, stride,
                                            padding, dilation)
    return gx.to(grad_y.dtype)
