"""The weight gradient of a conv on bit-packed 0/1 spikes in Triton (GPU; tested on CPU under
TRITON_INTERPRET=1). Same contract as the CPU op ``tna::spike_conv2d_grad_weight``
(tna_kernels/ops/spike_train.py, csrc/cpu/spike_train.cpp): grad_y [B, N, OH, OW] floating (any
layout), spike_bits [B, H, W, ceil(C/64)] int64 (``pack_spikes(x, dim=1)``) -> grad_w [N, C, kh, kw]
in grad_y's dtype, summed in float32.

GEMM: grad_w^T viewed as [N, kh*kw*C] = G^T [N, M] @ X_im2col [M, kh*kw*C], M = B*OH*OW. One program
per (BN output channels) x (one tap, one 64-channel spike word) output tile and per M split. Each
step over M loads a [BN, BM] tile of grad_y straight from its strides (no copy, whatever the layout)
and one 64-bit word per row m (the tap's input pixel, 0 outside the image), expands the words in
registers to a [BM, 64] tile of 0/1 in grad_y's dtype (exact in bf16 / fp16 too) and accumulates
``tl.dot`` in float32: bf16 / fp16 on the tensor cores; float32 grad_y with IEEE fp32 inputs (no
TF32), which Triton runs on FMAs, hence its own autotuner with small reduction steps. Channels past
C in the last word are never stored.

Split-K: M (up to millions of rows) is cut into SPLIT contiguous ranges of rows, so that small
layers (few output tiles) still fill the GPU. With SPLIT > 1 each program writes its float32 partial
tile to its own slice of a workspace [SPLIT, N, C, kh, kw] and a second kernel sums the
slices in a fixed order (split 0, 1, ...) and casts; with SPLIT = 1 the GEMM writes grad_w directly.
Why a workspace rather than ``tl.atomic_add`` into a float32 buffer: the result is the same on every
run (atomics add the partials in whatever order the programs finish), there are no per-program
atomics on the fast path (DESIGN.md), and the GEMM only ever writes, so autotuning's repeated
benchmark runs leave a correct result without zeroing a buffer between runs. SPLIT is chosen on the
host from the sizes alone (not from the autotuned config), so a given shape always sums in the same
order for a given config.

Launch path (see _launch.py): direct ``kernel[grid](...)`` launches on one-dimensional grids (the
GEMM folds (split, output tile) into dimension 0; SPLIT <= MAX_SPLIT), checked against CUDA's
limits; autotune keyed on power-of-two buckets of the rows per split, N and kh*kw*C. Offsets that
can pass 2^31 (rows of grad_y and of the bits, the workspace slices) are formed in int64. No host
synchronisation.
"""

import torch
import triton
import triton.language as tl

from .._utils import triton_interpreting
from ._launch import bucket, check_grid

CUDA_OPS = ("spike_conv2d_grad_weight",)

# Split-K policy (host side, from the sizes only). TARGET_PROGRAMS: enough programs for a few waves
# on a GPU with ~132 SMs (H100 / H200). MIN_ROWS: a split covers at least this many rows, so its
# one partial tile written (BN x 64 floats) is small next to the grad_y rows it reads. ROW_ALIGN:
# rows per split are a multiple of the largest BM, so no M step straddles two splits.
# MAX_WORKSPACE: the float32 workspace is capped at 2^25 elements (128 MiB).
TARGET_PROGRAMS = 1024
MIN_ROWS = 1024
ROW_ALIGN = 128
MAX_SPLIT = 1024
MAX_WORKSPACE = 1 << 25
REDUCE_BLOCK = 1024


def _configs(f32: bool):
    if triton_interpreting():  # one small config: the interpreter is slow and tests stay small
        return [triton.Config({"BN": 16, "BM": 16}, num_warps=1)]
    if f32:
        # The IEEE float32 dot has no tensor-core form: Triton lowers it to FMAs with each thread's
        # slices of both operands in registers, so the reduction step BM is 16 (BM = 32 spills at
        # 255 registers in every tile shape tried; scripts/gpu_compile.py reports them).
        return [triton.Config({"BN": bn, "BM": 16}, num_warps=w, num_stages=s)
                for bn, w, s in ((32, 4, 3), (64, 8, 3), (64, 8, 4))]
    # bf16 / fp16 tensor cores. BM (the reduction step) <= ROW_ALIGN. Output tile BN x 64.
    return [triton.Config({"BN": bn, "BM": bm}, num_warps=w, num_stages=s)
            for bn, bm, w, s in ((64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 4, 3), (128, 128, 8, 3),
                                 (64, 32, 4, 4), (128, 32, 4, 4))]


@triton.jit
def _spike_grad_weight(g_ptr, s_ptr, out_ptr, M, N, C, H, W, OH, OW, CW, KHW, KW_,
                       SH, SW, PH, PW, DH, DW, g_sb, g_sn, g_sh, g_sw, ROWS_PER_SPLIT,
                       ROWS_BUCKET, N_BUCKET, K_BUCKET, F32_DOT: tl.constexpr, BN: tl.constexpr,
                       BM: tl.constexpr):
    """out[split, n, c, t] (t = tap i*kw + j) = sum over this split's rows m of
    grad_y[m, n] * x[m, tap t, channel c]. The conv geometry is passed as runtime integers: it only
    enters the per-row index arithmetic (a few integer ops per row and step, beside a BN x BM x 64
    dot), so layer shapes share compilations (Triton still specialises integers equal to 1 or
    divisible by 16). F32_DOT: the dot in IEEE float32 (see _f32_dot), else in grad_y's dtype
    (bf16 / fp16 tensor cores)."""
    # (split, N tile, tap, word) folded into dimension 0, words fastest, splits slowest: the
    # programs of one split run together and share its grad_y rows and bits in L2
    tiles = tl.cdiv(N, BN) * KHW * CW
    pid = tl.program_id(0)
    split = pid // tiles
    pid = pid % tiles
    cw = pid % CW
    t = (pid // CW) % KHW
    pid_n = pid // (CW * KHW)
    i = t // KW_
    j = t % KW_
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < N
    bit = tl.arange(0, 64)
    g_col = rn.to(tl.int64) * g_sn
    acc = tl.zeros((BN, 64), dtype=tl.float32)
    m_lo = split.to(tl.int64) * ROWS_PER_SPLIT
    m_hi = tl.minimum(m_lo + ROWS_PER_SPLIT, M)
    for m0 in range(m_lo, m_hi, BM):
        rm = m0 + tl.arange(0, BM).to(tl.int64)  # int64: M = B * OH * OW may pass 2^31
        mmask = rm < m_hi
        ow = rm % OW
        oh = (rm // OW) % OH
        b = rm // (OW * OH)
        g = tl.load(g_ptr + g_col[:, None] + (b * g_sb + oh * g_sh + ow * g_sw)[None, :],
                    mask=nmask[:, None] & mmask[None, :], other=0.0)  # [BN, BM], grad_y's dtype
        ih = oh * SH - PH + i * DH
        iw = ow * SW - PW + j * DW
        inb = mmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        words = tl.load(s_ptr + ((b * H + ih) * W + iw) * CW + cw, mask=inb, other=0)  # [BM] int64
        x = (words[:, None] >> bit[None, :].to(tl.int64)) & 1  # [BM, 64] of 0/1
        if F32_DOT:
            acc = tl.dot(g.to(tl.float32), x.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(g, x.to(g.dtype), acc)
    c = cw * 64 + bit
    # int64 (a size argument equal to 1 is a constexpr, so the products start from program ids)
    off = split.to(tl.int64) * N * C * KHW + (rn.to(tl.int64) * C * KHW)[:, None] + (c * KHW + t)[None, :]
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=nmask[:, None] & (c < C)[None, :])


# One GEMM body, two autotuners: float32 (FMA dot, small reduction steps) and bf16 / fp16 (tensor
# cores); the launcher picks by grad_y's dtype, so each tunes over the configs that suit it.
_spike_grad_weight_kernel = triton.autotune(configs=_configs(False), key=["ROWS_BUCKET", "N_BUCKET", "K_BUCKET"])(
    _spike_grad_weight)
_spike_grad_weight_f32_kernel = triton.autotune(configs=_configs(True), key=["ROWS_BUCKET", "N_BUCKET", "K_BUCKET"])(
    _spike_grad_weight)


@triton.jit
def _split_sum_kernel(ws_ptr, out_ptr, L, SPLIT, BLOCK: tl.constexpr):
    """out[e] = sum over s = 0, 1, ..., SPLIT-1 (in that order) of ws[s, e], in float32, cast to
    out's dtype."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < L
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT):
        acc += tl.load(ws_ptr + tl.cast(s, tl.int64) * L + e, mask=mask, other=0.0)
    tl.store(out_ptr + e, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _split(M: int, tiles: int, L: int) -> tuple[int, int]:
    """(SPLIT, rows per split) for M rows, `tiles` output tiles of the nominal 64-channel BN and
    L = N * C * kh * kw outputs."""
    want = triton.cdiv(TARGET_PROGRAMS, tiles)
    split = max(1, min(want, M // MIN_ROWS, MAX_SPLIT, MAX_WORKSPACE // L))
    rows = triton.cdiv(triton.cdiv(M, split), ROW_ALIGN) * ROW_ALIGN
    return triton.cdiv(M, rows), rows


_DOT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _f32_dot(dtype: torch.dtype) -> bool:
    """float32 grad_y: IEEE float32 dot (no TF32). bf16 under TRITON_INTERPRET=1 too: the interpreter
    stores bf16 as uint16 and its tl.dot (and int -> bf16 casts) compute on those integers, so a bf16
    tile is widened to float32 there, which gives the same sums (0/1 times a bf16 value is exact in
    either dtype, and the dot accumulates in float32 in both). On a GPU bf16 / fp16 use the tensor
    cores in their own dtype; fp16 takes that path under the interpreter as well."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and triton_interpreting())


def spike_conv2d_grad_weight(grad_y, spike_bits, C, kernel_size, stride, padding, dilation):
    # The CPU op's checker (errors name the argument); imported here, as ops.spike_train imports
    # this module when it registers the CUDA kernel.
    from ..ops.spike_train import check_grad_weight_args

    H, W = check_grad_weight_args(grad_y, spike_bits, C, kernel_size, stride, padding, dilation)
    B, N, OH, OW = grad_y.shape
    kh, kw = kernel_size
    KHW, CW = kh * kw, (C + 63) // 64
    M, L = B * OH * OW, N * C * KHW
    # float64 (or any other floating dtype) is summed in float32, as on the CPU
    g = grad_y if grad_y.dtype in _DOT_DTYPES else grad_y.to(torch.float32)
    out_dtype = g.dtype
    dev = grad_y.device
    if M == 0:
        return torch.zeros((N, C, kh, kw), dtype=grad_y.dtype, device=dev)
    bits = spike_bits.contiguous()
    split, rows = _split(M, triton.cdiv(N, 64) * KHW * CW, L)
    grad_w = torch.empty((N, C, kh, kw), dtype=out_dtype, device=dev)
    dest = grad_w if split == 1 else torch.empty((split, N, C, kh, kw), dtype=torch.float32, device=dev)
    kernel = _spike_grad_weight_f32_kernel if g.dtype == torch.float32 else _spike_grad_weight_kernel
    grid = lambda meta: check_grid((triton.cdiv(N, meta["BN"]) * KHW * CW * split,),  # noqa: E731
                                   "spike_conv2d_grad_weight")
    kernel[grid](
        g, bits, dest, M, N, C, H, W, OH, OW, CW, KHW, kw, stride[0], stride[1], padding[0], padding[1],
        dilation[0], dilation[1], *g.stride(), rows, bucket(rows), bucket(N), bucket(KHW * C),
        F32_DOT=_f32_dot(g.dtype))
    if split > 1:
        _split_sum_kernel[check_grid((triton.cdiv(L, REDUCE_BLOCK),), "spike_conv2d_grad_weight")](
            dest, grad_w, L, split, BLOCK=REDUCE_BLOCK)
    return grad_w if out_dtype == grad_y.dtype else grad_w.to(grad_y.dtype)
