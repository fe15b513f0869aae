"""Ternary weights in Triton (GPU; tested on CPU under TRITON_INTERPRET=1). Same contracts and the
same packed format v1 as the C++ kernels (tna_kernels/ops/ternary.py).

Spike x ternary (implicit GEMM, linear = 1x1 conv on a 1x1 image): one program per BM x BN output
tile; the K loop walks (tap, channel word). Each step loads one 64-bit word per spike row and per
weight row, expands them in registers to an int8 {0,1} tile [BM, 64] and an int8 {-1,0,1} tile
[64, BN] (bit k of the word -> element k), and accumulates ``tl.dot`` int8 x int8 -> int32, which is
exact. Epilogue ``float32(acc) * scale + bias`` with FP fusion disabled (two roundings, as in the
reference). Float x ternary decodes the codes tile to float32 and uses ``tl.dot`` with IEEE fp32
inputs (no TF32). Packing and the fused quantise-and-pack kernel work one 64-element word per lane.
Float conv and the input gradients decode the codes with Triton and call torch (cuDNN / cuBLAS).
"""

import torch
import triton
import triton.language as tl

from .._utils import triton_interpreting
from ..reference import TERNARY_FORMAT_VERSION

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


@triton.autotune(configs=_gemm_configs(), key=["M", "N", "KWT"])
@triton.jit
def _spike_conv_kernel(s_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, H, W, OH, OW, CW, KWT,
                       KHW: tl.constexpr, KW_: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                       PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                       HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
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
    tl.store(y_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :], y, mask=mmask[:, None] & nmask[None, :])


@triton.autotune(configs=_gemm_configs(), key=["M", "N", "K"])
@triton.jit
def _float_linear_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K, KWD,
                         HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    kk = tl.arange(0, 64)
    for c in range(KWD):
        k = c * 64 + kk
        x = tl.load(x_ptr + rm.to(tl.int64)[:, None] * K + k[None, :],
                    mask=mmask[:, None] & (k[None, :] < K), other=0.0).to(tl.float32)
        pw = tl.load(w_ptr + (rn.to(tl.int64) * 2 + 0) * KWD + c, mask=nmask, other=0)
        nw = tl.load(w_ptr + (rn.to(tl.int64) * 2 + 1) * KWD + c, mask=nmask, other=0)
        cb = (_bits_to_rows(pw, 64) - _bits_to_rows(nw, 64)).to(tl.float32)       # [BN, 64]
        acc = tl.dot(x, tl.trans(cb), acc, input_precision="ieee")
    scale = tl.load(scale_ptr + rn, mask=nmask, other=0.0)
    y = acc * scale[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=nmask, other=0.0)[None, :]
    tl.store(y_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _decode_kernel(w_ptr, out_ptr, K, KWD, BITS: tl.constexpr):
    """Row r, word c of packed [R, 2, KWD] -> out[r, 64c : 64c + 64] (float32 -1/0/1)."""
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    j = tl.arange(0, BITS)
    pw = tl.load(w_ptr + (r * 2 + 0) * KWD + c)
    nw = tl.load(w_ptr + (r * 2 + 1) * KWD + c)
    v = (((pw >> j.to(tl.int64)) & 1) - ((nw >> j.to(tl.int64)) & 1)).to(tl.float32)
    k = c * 64 + j
    tl.store(out_ptr + r * K + k, v, mask=k < K)


@triton.jit
def _pack_kernel(src_ptr, out_ptr, bad_ptr, K, KWD, TERNARY: tl.constexpr, BITS: tl.constexpr):
    """Row r, word c: 64 values -> one word (spikes) or a P and an N word (ternary codes)."""
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    j = tl.arange(0, BITS)
    k = c * 64 + j
    v = tl.load(src_ptr + r * K + k, mask=k < K, other=0)
    sh = j.to(tl.int64)
    if TERNARY:
        ok = (v == 0) | (v == 1) | (v == -1)
        p = tl.sum((v == 1).to(tl.int64) << sh, axis=0)
        n = tl.sum((v == -1).to(tl.int64) << sh, axis=0)
        tl.store(out_ptr + (r * 2 + 0) * KWD + c, p)
        tl.store(out_ptr + (r * 2 + 1) * KWD + c, n)
    else:
        ok = (v == 0) | (v == 1)
        tl.store(out_ptr + r * KWD + c, tl.sum((v == 1).to(tl.int64) << sh, axis=0))
    nbad = tl.sum((~ok).to(tl.int32), axis=0)
    tl.atomic_add(bad_ptr, nbad)


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
def _quantize_pack_kernel(w_ptr, thr_ptr, codes_ptr, out_ptr, K, KWD, PACK: tl.constexpr,
                          TWN: tl.constexpr, BITS: tl.constexpr):
    """Fused: codes of one 64-element word of row r (the last axis; rows of R = K elements in
    dim-0 order), written as int8 and packed into the P/N words in the same pass."""
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    j = tl.arange(0, BITS)
    k = c * 64 + j
    thr = tl.load(thr_ptr + r)
    v = tl.load(w_ptr + r * K + k, mask=k < K, other=0.0).to(tl.float64)
    if TWN:
        code = tl.where(tl.abs(v) > thr, tl.where(v > 0, 1, -1), 0)
    else:
        q = v / thr  # thr = mean|w| + eps; round half to even, clip to [-1, 1]
        code = tl.where(q > 0.5, 1, tl.where(q < -0.5, -1, 0))  # = clamp(round_half_even(q), -1, 1)
    tl.store(codes_ptr + r * K + k, code.to(tl.int8), mask=k < K)
    if PACK:
        sh = j.to(tl.int64)
        tl.store(out_ptr + (r * 2 + 0) * KWD + c, tl.sum((code == 1).to(tl.int64) << sh, axis=0))
        tl.store(out_ptr + (r * 2 + 1) * KWD + c, tl.sum((code == -1).to(tl.int64) << sh, axis=0))


# ---- launchers (same contracts as the C++ ops) ---------------------------------------------------

def _words(k):
    return (k + 63) // 64


def _check_version(version):
    if version != TERNARY_FORMAT_VERSION:
        raise RuntimeError(f"version: this build reads packed ternary format v{TERNARY_FORMAT_VERSION} "
                           f"only, got v{version}")


def _check_packed(packed_w, K, rank):
    if packed_w.dtype != torch.int64 or packed_w.dim() != rank or packed_w.shape[-2] != 2:
        raise RuntimeError(f"packed_w must be int64 packed ternary words of rank {rank}, got "
                           f"{packed_w.dtype} {tuple(packed_w.shape)}")
    if packed_w.shape[-1] != _words(K):
        raise RuntimeError(f"packed_w has {packed_w.shape[-1]} words per plane but K = {K} needs "
                           f"ceil(K/64) = {_words(K)}")


def _pack(src, ternary):
    K = src.shape[-1]
    rows = src.numel() // K
    kw = _words(K)
    shape = (*src.shape[:-1], 2, kw) if ternary else (*src.shape[:-1], kw)
    out = torch.empty(shape, dtype=torch.int64, device=src.device)
    bad = torch.zeros(1, dtype=torch.int32, device=src.device)
    if rows:
        src = src.contiguous()
        if src.dtype == torch.bool:
            src = src.to(torch.uint8)
        torch.library.wrap_triton(_pack_kernel)[(rows, kw)](src, out, bad, K, kw, TERNARY=ternary, BITS=64)
    what = "codes must contain only -1, 0 and +1 (ternary)" if ternary else "spikes must contain only 0 and 1"
    torch._assert_async(bad[0] == 0, what)  # no host sync on the GPU
    return out


def pack_ternary(codes):
    if codes.dtype != torch.int8:
        raise RuntimeError(f"codes must be int8 ternary codes in {{-1, 0, +1}}, got dtype {codes.dtype}")
    return _pack(codes, True)


def pack_spikes(spikes, dim=-1):
    return _pack(spikes.movedim(dim, -1), False)


def _decode_f32(packed_w, rows, K):
    out = torch.empty((rows, K), dtype=torch.float32, device=packed_w.device)
    if rows:
        torch.library.wrap_triton(_decode_kernel)[(rows, _words(K))](packed_w.contiguous(), out, K,
                                                                     _words(K), BITS=64)
    return out


def unpack_ternary(packed, K, version):
    _check_version(version)
    rows = packed.numel() // (2 * _words(K))
    return _decode_f32(packed, rows, K).to(torch.int8).reshape(*packed.shape[:-2], K)


def unpack_spikes(bits, K):
    j = torch.arange(64, device=bits.device, dtype=torch.int64)
    return ((bits.unsqueeze(-1) >> j) & 1).reshape(*bits.shape[:-1], -1)[..., :K].to(torch.uint8)


def ternarize(w, method, per_channel, pack):
    if method not in ("twn", "absmean"):
        raise RuntimeError(f"method must be 'twn' or 'absmean', got '{method}'")
    x = w.contiguous()
    n = x.shape[0]
    R = x.numel() // n
    K = x.shape[-1]
    grid_rows = x.numel() // K
    dev = x.device
    abs_sum = torch.empty(n, dtype=torch.float64, device=dev)
    stats = torch.library.wrap_triton(_row_stats_kernel)
    stats[(n,)](x, abs_sum, abs_sum, abs_sum, abs_sum, R, TWN_PASS=False, BLOCK=256)
    mean = (abs_sum / R) if per_channel else (abs_sum.sum() / (R * n)).expand(n).contiguous()
    if method == "twn":
        thr = (0.7 * mean).contiguous()
        above = torch.empty(n, dtype=torch.float64, device=dev)
        cnt = torch.empty(n, dtype=torch.float64, device=dev)
        stats[(n,)](x, thr, above, above, cnt, R, TWN_PASS=True, BLOCK=256)
        if not per_channel:
            above, cnt = above.sum().expand(n), cnt.sum().expand(n)
        scale = torch.where(cnt > 0, above / cnt.clamp(min=1), torch.zeros_like(above))
    else:
        thr = (mean + 1e-5).contiguous()
        scale = mean
    # Threshold per packing row (rows of the last axis belong to output channel row // (R / K)).
    row_thr = thr.repeat_interleave(R // K).contiguous()
    codes = torch.empty(x.shape, dtype=torch.int8, device=dev)
    kw = _words(K)
    packed = torch.empty((*x.shape[:-1], 2, kw) if pack else (0,), dtype=torch.int64, device=dev)
    torch.library.wrap_triton(_quantize_pack_kernel)[(grid_rows, kw)](
        x, row_thr, codes, packed if pack else codes, K, kw, PACK=pack, TWN=method == "twn", BITS=64)
    return codes, scale.to(torch.float32), packed


def spike_ternary_conv2d(spike_bits, packed_w, scale, bias, C, stride, padding, dilation, version,
                         kmajor=None):
    # kmajor (the CPU event-driven layout) is not used on the GPU.
    _check_version(version)
    _check_packed(packed_w, C, 5)
    Bn, H, W, CW = spike_bits.shape
    N, kh, kw = packed_w.shape[:3]
    oh = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = torch.empty((Bn, N, oh, ow), dtype=torch.float32, device=spike_bits.device,
                    memory_format=torch.channels_last)
    M = Bn * oh * ow
    if M and N:
        grid = lambda meta: (triton.cdiv(M, meta["BM"]), triton.cdiv(N, meta["BN"]))  # noqa: E731
        torch.library.wrap_triton(_spike_conv_kernel)[grid](
            spike_bits.contiguous(), packed_w.contiguous(), scale.contiguous(),
            scale if bias is None else bias.contiguous(), y, M, N, H, W, oh, ow, CW, kh * kw * CW,
            KHW=kh * kw, KW_=kw, SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1],
            DH=dilation[0], DW=dilation[1], HAS_BIAS=bias is not None, **_NOFUSE)
    return y


def spike_ternary_linear(spike_bits, packed_w, scale, bias, K, version, kmajor=None):
    _check_version(version)
    _check_packed(packed_w, K, 3)
    if spike_bits.shape[-1] != _words(K):
        raise RuntimeError(f"spike_bits must have shape [..., {_words(K)}] for K = {K}, got "
                           f"{tuple(spike_bits.shape)}")
    lead = spike_bits.shape[:-1]
    s = spike_bits.reshape(-1, 1, 1, _words(K))
    y = spike_ternary_conv2d(s, packed_w.unsqueeze(1).unsqueeze(1), scale, bias, K, [1, 1], [0, 0],
                             [1, 1], version)
    return y.reshape(*lead, packed_w.shape[0])


def ternary_linear(x, packed_w, scale, bias, version):
    _check_version(version)
    K = x.shape[-1]
    _check_packed(packed_w, K, 3)
    N = packed_w.shape[0]
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M and N:
        grid = lambda meta: (triton.cdiv(M, meta["BM"]), triton.cdiv(N, meta["BN"]))  # noqa: E731
        torch.library.wrap_triton(_float_linear_kernel)[grid](
            x2, packed_w.contiguous(), scale.contiguous(), scale if bias is None else bias.contiguous(),
            y, M, N, K, _words(K), HAS_BIAS=bias is not None, **_NOFUSE)
    return y.reshape(*x.shape[:-1], N)


def ternary_linear_grad_input(grad_y, packed_w, scale, K, version):
    _check_version(version)
    _check_packed(packed_w, K, 3)
    N = packed_w.shape[0]
    acc = torch.float32 if grad_y.dtype in (torch.float16, torch.bfloat16) else grad_y.dtype
    codes = _decode_f32(packed_w, N, K).to(acc)
    g = grad_y.reshape(-1, N).to(acc) * scale.to(acc)
    return (g @ codes).to(grad_y.dtype).reshape(*grad_y.shape[:-1], K)


def _decode_conv(packed_w, C, dtype):
    N, kh, kw = packed_w.shape[:3]
    codes = _decode_f32(packed_w, N * kh * kw, C).reshape(N, kh, kw, C)
    return codes.permute(0, 3, 1, 2).contiguous().to(dtype)


def ternary_conv2d(x, packed_w, scale, bias, stride, padding, dilation, version):
    _check_version(version)
    _check_packed(packed_w, x.shape[1], 5)
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    y = torch.nn.functional.conv2d(x.to(acc), _decode_conv(packed_w, x.shape[1], acc), None, stride,
                                   padding, dilation)
    y = y * scale.to(acc).view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.to(acc).view(1, -1, 1, 1)
    return y.to(x.dtype)


def ternary_conv2d_grad_input(grad_y, packed_w, scale, input_size, stride, padding, dilation, version):
    _check_version(version)
    acc = torch.float32 if grad_y.dtype in (torch.float16, torch.bfloat16) else grad_y.dtype
    w = _decode_conv(packed_w, input_size[1], acc)
    g = grad_y.to(acc) * scale.to(acc).view(1, -1, 1, 1)
    gx = torch.nn.grad.conv2d_input(list(input_size), w, g, stride, padding, dilation)
    return gx.to(grad_y.dtype)
