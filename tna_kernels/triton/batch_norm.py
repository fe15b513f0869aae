"""Batch norm (batch statistics) + LIF fused, in Triton: the CUDA kernels of
``tna::batch_norm_lif_forward`` / ``_backward`` (:mod:`tna_kernels.ops.batch_norm`).

x is [T*B, C, H, W] (sample t*B + b at step t), NCHW-contiguous or channels-last, float32, bfloat16
or float16; the arithmetic is float32. Every kernel walks tiles of [BLOCK_C channels, BLOCK_S
spatial positions] of one sample (grid: samples x spatial blocks x channel blocks), so a tile's
elements are ``n * sN + c * sC + s * sS`` and the per-channel sums of a tile are a reduction along
its spatial axis. HBM passes over an activation-sized tensor (the unfused layer in brackets:
torch's batch norm, the LIF, torch's batch-norm backward):

  forward   statistics (read x), normalise + LIF (read x, write spikes)
            [statistics, normalise (read + write y), LIF (read y, write spikes)]
  backward  normalise + LIF backward + sums (read x and grad_spikes, write grad_y),
            gradient (read grad_y and x, write grad_x)
            [normalise (read x, write y), LIF backward (read y and grad_spikes, write grad_y),
             sums (read grad_y and x), gradient (read grad_y and x, write grad_x)]

Sums are deterministic: each program writes its partial result to its own slot, and a finishing
kernel (one program per 32 channels) adds the slots in a fixed order in float64 — no atomics, so a
run repeats bit for bit. The statistics merge means and centred sums of squares (Chan et al.: per
sample tile, then across a program's chunk of samples, then across the slots), so a large mean
does not cancel the variance. Three launches each way (statistics, finish, normalise + LIF;
LIF backward + sums, finish, gradient), no torch operators between them. No autotuning: the tile
shape fixes the partial sums' grouping, so it is chosen from the sizes, not timed. No host
synchronisation."""

import torch
import triton
import triton.language as tl

from .._utils import triton_interpreting
from ._launch import check_grid
from .lif import _charge_fire_reset, _step_grad

# Elements per tile: 4 warps (the default) hold 8 floats per thread per live tile. The backward keeps
# about ten tiles live (membrane, carry, x, y, h, gradients, the per-channel terms): 8 warps, 4 floats
# per thread per tile, keep it under ~64 registers without spills (make gpu-compile reports them).
TILE = 1024
MAX_BLOCK_S = 128
BWD_WARPS = 8


def tile_shape(c: int, s: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_S) for C channels and S = H*W positions: the spatial block covers S up to
    128 (powers of two; an 8x8 map is one block), channels fill the rest of the tile."""
    if triton_interpreting():  # small tiles: the interpreter runs each program in numpy
        block_s = min(triton.next_power_of_2(max(s, 1)), 16)
        return min(triton.next_power_of_2(max(c, 1)), 4), block_s
    block_s = min(triton.next_power_of_2(max(s, 1)), MAX_BLOCK_S)
    return min(triton.next_power_of_2(max(c, 1)), TILE // block_s), block_s


@triton.jit
def _tile(n, C, S, sN, sC, sS, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """This program's tile of sample n: channel and position indices, mask and element offsets."""
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = (c < C)[:, None] & (s < S)[None, :]
    offs = n * sN + c.to(tl.int64)[:, None] * sC + s.to(tl.int64)[None, :] * sS  # int64: N*C*S may pass 2^31
    return c, mask, offs


@triton.jit
def _affine_terms(c, cm, mean_ptr, invstd_ptr, w_ptr, b_ptr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Per channel of the tile: y = x * a + b with a = invstd * weight, b = bias - mean * a."""
    mu = tl.load(mean_ptr + c, mask=cm, other=0.0)
    a = tl.load(invstd_ptr + c, mask=cm, other=0.0)
    if HAS_WEIGHT:
        a = a * tl.load(w_ptr + c, mask=cm, other=0.0)
    shift = -mu * a
    if HAS_BIAS:
        shift = tl.load(b_ptr + c, mask=cm, other=0.0) + shift
    return mu[:, None], a[:, None], shift[:, None]


@triton.jit
def _stats_kernel(x_ptr, mean_ptr, m2_ptr, N, per, C, S, sN, sC, sS, BLOCK_C: tl.constexpr,
                  BLOCK_S: tl.constexpr):
    """Samples [chunk * per, +per) of one tile's channels and positions: each sample's tile mean and
    centred sum of squares, merged sample by sample (Chan et al.) into this program's partial
    (count, mean, M2) per channel, written to slot (chunk, spatial block); _partial_counts knows
    each slot's count."""
    chunk = tl.program_id(0)
    n0 = chunk.to(tl.int64) * per
    c, mask, offs = _tile(n0, C, S, sN, sC, sS, BLOCK_C, BLOCK_S)
    cm = c < C
    tile_n = tl.minimum(S - tl.program_id(1) * BLOCK_S, BLOCK_S).to(tl.float32)
    count = tl.zeros((BLOCK_C,), tl.float32)
    mean = tl.zeros((BLOCK_C,), tl.float32)
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for i in range(tl.minimum(per, N - n0)):
        x = tl.load(x_ptr + offs + tl.cast(i, tl.int64) * sN, mask=mask, other=0.0).to(tl.float32)
        tile_mean = tl.sum(x, axis=1) / tile_n
        d = tl.where(mask, x - tile_mean[:, None], 0.0)
        total = count + tile_n
        delta = tile_mean - mean
        mean += delta * (tile_n / total)
        m2 += tl.sum(d * d, axis=1) + delta * delta * (count * tile_n / total)
        count = total
    slot = chunk * tl.num_programs(1) + tl.program_id(1)
    tl.store(mean_ptr + slot.to(tl.int64) * C + c, mean, mask=cm)
    tl.store(m2_ptr + slot.to(tl.int64) * C + c, m2, mask=cm)


@triton.jit
def _partial_counts(p, N, per, S, SB, BLOCK_S: tl.constexpr):
    """Values behind _stats_kernel's slots p = chunk * SB + spatial block: samples x positions."""
    chunk = p // SB
    positions = tl.minimum(S - (p % SB) * BLOCK_S, BLOCK_S)
    return (tl.minimum(per, N - chunk * per) * positions).to(tl.float64)


@triton.jit
def _finish_stats_kernel(mean_ptr, m2_ptr, N, per, S, SB, C, eps, momentum, out_mean_ptr, out_invstd_ptr, rm_ptr,
                         rv_ptr, HAS_RM: tl.constexpr, HAS_RV: tl.constexpr, BLOCK_C: tl.constexpr,
                         BLOCK_P: tl.constexpr,
                         BLOCK_S: tl.constexpr):
    """The P partials of each channel combined in float64 in a fixed order: mean, invstd (biased
    variance, as batch norm normalises) and the running statistics (unbiased variance)."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    P = tl.cdiv(N, per) * SB
    sum_n = tl.zeros((BLOCK_C,), tl.float64)
    sum_nm = tl.zeros((BLOCK_C,), tl.float64)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pm = p < P
        n = tl.where(pm, _partial_counts(p, N, per, S, SB, BLOCK_S), 0.0)[:, None]
        m = tl.load(mean_ptr + p.to(tl.int64)[:, None] * C + c[None, :], mask=pm[:, None] & cm[None, :],
                    other=0.0).to(tl.float64)
        sum_n += tl.sum(n + tl.zeros((BLOCK_P, BLOCK_C), tl.float64), axis=0)
        sum_nm += tl.sum(n * m, axis=0)
    mean = sum_nm / tl.maximum(sum_n, 1.0)
    m2 = tl.zeros((BLOCK_C,), tl.float64)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pm = p < P
        n = tl.where(pm, _partial_counts(p, N, per, S, SB, BLOCK_S), 0.0)[:, None]
        both = pm[:, None] & cm[None, :]
        offs = p.to(tl.int64)[:, None] * C + c[None, :]
        d = tl.load(mean_ptr + offs, mask=both, other=0.0).to(tl.float64) - mean[None, :]
        m2 += tl.sum(tl.load(m2_ptr + offs, mask=both, other=0.0).to(tl.float64) + n * d * d, axis=0)
    var = m2 / tl.maximum(sum_n, 1.0)
    tl.store(out_mean_ptr + c, mean.to(tl.float32), mask=cm)
    tl.store(out_invstd_ptr + c, (1.0 / tl.sqrt(var + eps)).to(tl.float32), mask=cm)
    if HAS_RM:  # each running statistic given is updated, as torch's batch norm updates it
        rm = tl.load(rm_ptr + c, mask=cm, other=0.0)
        tl.store(rm_ptr + c, (1.0 - momentum) * rm + momentum * mean.to(tl.float32), mask=cm)
    if HAS_RV:
        unbiased = (m2 / tl.maximum(sum_n - 1.0, 1.0)).to(tl.float32)
        rv = tl.load(rv_ptr + c, mask=cm, other=0.0)
        tl.store(rv_ptr + c, (1.0 - momentum) * rv + momentum * unbiased, mask=cm)


@triton.jit
def _bn_lif_fwd_kernel(x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, s_ptr, C, S, sN, sC, sS, step, T, tau, v_th,
                       v_reset, vr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, DECAY_INPUT: tl.constexpr,
                       SOFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Sample b's tile at each of the T steps (sample t*B + b): y = x * a + b, then the LIF from its
    reset value; spikes are written with x's strides (``step``: elements between steps)."""
    n = tl.program_id(0).to(tl.int64)
    c, mask, offs = _tile(n, C, S, sN, sC, sS, BLOCK_C, BLOCK_S)
    # (no `_` for unused results: a name the time loop re-binds must keep its shape for Triton)
    mu, a, b = _affine_terms(c, c < C, mean_ptr, invstd_ptr, w_ptr, b_ptr, HAS_WEIGHT, HAS_BIAS)
    v = tl.zeros((BLOCK_C, BLOCK_S), tl.float32) + vr
    for t in range(T):
        o = offs + tl.cast(t, tl.int64) * step
        y = tl.load(x_ptr + o, mask=mask, other=0.0).to(tl.float32) * a + b
        h, fire, v = _charge_fire_reset(v, y, tau, v_th, v_reset, vr, DECAY_INPUT, SOFT)
        tl.store(s_ptr + o, tl.where(fire, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_lif_bwd_kernel(gs_ptr, gsN, gsC, gsS, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, gy_ptr, f1_ptr, f2_ptr, C,
                       S, sN, sC, sS, step, gs_step, T, tau, v_th, v_reset, vr, alpha, HAS_WEIGHT: tl.constexpr,
                       HAS_BIAS: tl.constexpr, DECAY_INPUT: tl.constexpr, SOFT: tl.constexpr, DETACH: tl.constexpr,
                       SURROGATE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """The batch norm's output gradient grad_y (written with x's strides) from the spikes' gradient,
    the membrane recomputed from x in registers as in _lif_bwd_recompute_kernel (the same bits as
    the forward), and per tile and channel f1 = sum(grad_y), f2 = sum((x - mean) * grad_y) over
    the tile's positions and steps."""
    n = tl.program_id(0).to(tl.int64)
    c, mask, offs = _tile(n, C, S, sN, sC, sS, BLOCK_C, BLOCK_S)
    gc, gmask, goffs = _tile(n, C, S, gsN, gsC, gsS, BLOCK_C, BLOCK_S)
    mu, a, b = _affine_terms(c, c < C, mean_ptr, invstd_ptr, w_ptr, b_ptr, HAS_WEIGHT, HAS_BIAS)
    gv = tl.zeros((BLOCK_C, BLOCK_S), tl.float32)
    f1 = tl.zeros((BLOCK_C,), tl.float32)
    f2 = tl.zeros((BLOCK_C,), tl.float32)
    for i in range(T):  # reverse time with a forward range: negative-step ranges are fragile
        last = T - 1 - i
        v = tl.zeros((BLOCK_C, BLOCK_S), tl.float32) + vr
        h = v
        xt = v
        for t in range(last + 1):
            xt = tl.load(x_ptr + offs + tl.cast(t, tl.int64) * step, mask=mask, other=0.0).to(tl.float32)
            h, fire, v = _charge_fire_reset(v, xt * a + b, tau, v_th, v_reset, vr, DECAY_INPUT, SOFT)
        gs = tl.load(gs_ptr + goffs + tl.cast(last, tl.int64) * gs_step, mask=mask, other=0.0).to(tl.float32)
        gy, gv = _step_grad(h, gs, gv, tau, v_th, vr, alpha, DECAY_INPUT, SOFT, DETACH, SURROGATE)
        gy = tl.where(mask, gy, 0.0)
        tl.store(gy_ptr + offs + tl.cast(last, tl.int64) * step, gy.to(gy_ptr.dtype.element_ty), mask=mask)
        f1 += tl.sum(gy, axis=1)
        f2 += tl.sum(tl.where(mask, xt - mu, 0.0) * gy, axis=1)
    slot = (n * tl.num_programs(1) + tl.program_id(1)) * C + c
    tl.store(f1_ptr + slot, f1, mask=c < C)
    tl.store(f2_ptr + slot, f2, mask=c < C)


@triton.jit
def _finish_grad_kernel(f1_ptr, f2_ptr, P, C, M, invstd_ptr, w_ptr, gw_ptr, gb_ptr, terms_ptr, HAS_WEIGHT: tl.constexpr,
                        WANT_W: tl.constexpr, WANT_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """The P partial sums of each channel added in float64 in a fixed order: grad_weight =
    f2 * invstd, grad_bias = f1, and the gradient pass's per-channel gm, k, scale (terms [3, C])."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    f1 = tl.zeros((BLOCK_C,), tl.float64)
    f2 = tl.zeros((BLOCK_C,), tl.float64)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        both = (p < P)[:, None] & cm[None, :]
        offs = p.to(tl.int64)[:, None] * C + c[None, :]
        f1 += tl.sum(tl.load(f1_ptr + offs, mask=both, other=0.0).to(tl.float64), axis=0)
        f2 += tl.sum(tl.load(f2_ptr + offs, mask=both, other=0.0).to(tl.float64), axis=0)
    invstd = tl.load(invstd_ptr + c, mask=cm, other=0.0).to(tl.float64)
    scale = invstd
    if HAS_WEIGHT:
        scale = invstd * tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float64)
    if WANT_W:
        tl.store(gw_ptr + c, (f2 * invstd).to(tl.float32), mask=cm)
    if WANT_B:
        tl.store(gb_ptr + c, f1.to(tl.float32), mask=cm)
    tl.store(terms_ptr + c, (f1 / M).to(tl.float32), mask=cm)
    tl.store(terms_ptr + C + c, (f2 / M * invstd * invstd).to(tl.float32), mask=cm)
    tl.store(terms_ptr + 2 * C + c, scale.to(tl.float32), mask=cm)


@triton.jit
def _bn_grad_kernel(gy_ptr, x_ptr, mean_ptr, terms_ptr, gx_ptr, C, S, sN, sC, sS, BLOCK_C: tl.constexpr,
                    BLOCK_S: tl.constexpr):
    """grad_x = (grad_y - gm - (x - mean) * k) * scale, per channel's gm, k, scale (x's strides;
    grad_x may be grad_y itself)."""
    n = tl.program_id(0).to(tl.int64)
    c, mask, offs = _tile(n, C, S, sN, sC, sS, BLOCK_C, BLOCK_S)
    cm = c < C
    mu = tl.load(mean_ptr + c, mask=cm, other=0.0)[:, None]
    gm = tl.load(terms_ptr + c, mask=cm, other=0.0)[:, None]
    k = tl.load(terms_ptr + C + c, mask=cm, other=0.0)[:, None]
    scale = tl.load(terms_ptr + 2 * C + c, mask=cm, other=0.0)[:, None]
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(gx_ptr + offs, ((gy - gm - (x - mu) * k) * scale).to(gx_ptr.dtype.element_ty), mask=mask)


# ---- launchers ------------------------------------------------------------------------------------

# The finishing kernels: channels per program and partials per iteration.
FINISH_C, FINISH_P = 32, 64
# The statistics kernel's programs, at least (samples are split into chunks until there are this
# many programs or one sample per chunk): enough to fill an H100/H200 several times over.
STATS_PROGRAMS = 2048


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(sample, channel, position) strides of a 4-D tensor whose H, W are dense (NCHW or channels-last)."""
    return t.stride(0), t.stride(1), t.stride(3)


def _grid(samples: int, c: int, s: int, block_c: int, block_s: int) -> tuple[int, int, int]:
    return check_grid((samples, triton.cdiv(s, block_s), triton.cdiv(c, block_c)), "batch norm + LIF")


def _finish_grid(c: int) -> tuple[int]:
    return check_grid((triton.cdiv(c, FINISH_C),), "batch norm + LIF")


def batch_norm_lif_forward(x, weight, bias, running_mean, running_var, momentum, eps, T, tau, decay_input,
                           v_threshold, v_reset, soft_reset):
    """The CUDA kernel of tna::batch_norm_lif_forward (arguments checked by the caller): spikes in
    x's dtype and layout, batch mean and invstd (float32), running statistics updated in place as
    torch's batch norm updates them (unbiased variance). Three launches."""
    n, c, h, w = x.shape
    s = h * w
    block_c, block_s = tile_shape(c, s)
    sN, sC, sS = _strides(x)
    tiles = _grid(1, c, s, block_c, block_s)
    per = triton.cdiv(n, min(n, max(1, STATS_PROGRAMS // (tiles[1] * tiles[2]))))
    chunks = triton.cdiv(n, per)
    partials = chunks * tiles[1]
    part = torch.empty(2, partials, c, dtype=torch.float32, device=x.device)
    _stats_kernel[_grid(chunks, c, s, block_c, block_s)](x, part[0], part[1], n, per, c, s, sN, sC, sS,
                                                          BLOCK_C=block_c, BLOCK_S=block_s)
    mean = torch.empty(c, dtype=torch.float32, device=x.device)  # two outputs: two tensors, not views of one
    invstd = torch.empty(c, dtype=torch.float32, device=x.device)
    _finish_stats_kernel[_finish_grid(c)](
        part[0], part[1], n, per, s, tiles[1], c, float(eps), float(momentum), mean, invstd,
        mean if running_mean is None else running_mean, invstd if running_var is None else running_var,
        HAS_RM=running_mean is not None, HAS_RV=running_var is not None, BLOCK_C=FINISH_C, BLOCK_P=FINISH_P,
        BLOCK_S=block_s)
    spikes = torch.empty_like(x)
    B = n // T
    _bn_lif_fwd_kernel[_grid(B, c, s, block_c, block_s)](
        x, mean, invstd, mean if weight is None else weight, mean if bias is None else bias, spikes, c, s, sN, sC,
        sS, B * sN, T, float(tau), float(v_threshold), float(v_reset), 0.0 if soft_reset else float(v_reset),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, DECAY_INPUT=decay_input, SOFT=soft_reset,
        BLOCK_C=block_c, BLOCK_S=block_s)
    return spikes, mean, invstd


def batch_norm_lif_backward(grad_spikes, x, mean, invstd, weight, bias, T, tau, decay_input, v_threshold, v_reset,
                            soft_reset, detach_reset, surrogate_index, alpha, output_mask):
    """The CUDA kernel of tna::batch_norm_lif_backward (arguments checked by the caller): grad_x in
    x's dtype and layout, grad_weight and grad_bias float32; masked-off outputs are empty. Three
    launches (two without grad_x)."""
    n, c, h, w = x.shape
    s = h * w
    want_x, want_w, want_b = output_mask
    want_w = want_w and weight is not None
    block_c, block_s = tile_shape(c, s)
    sN, sC, sS = _strides(x)
    gs = grad_spikes if grad_spikes.stride(2) == w * grad_spikes.stride(3) else grad_spikes.contiguous()
    B = n // T
    grid_b = _grid(B, c, s, block_c, block_s)
    partials = B * grid_b[1]
    mean, invstd = mean.contiguous(), invstd.contiguous()
    # grad_y in x's dtype, as the unfused layer hands it to torch's batch-norm backward; it is
    # grad_x's buffer too (the gradient pass runs in place). The sums take it before rounding.
    gy = torch.empty_like(x)
    f = torch.empty(2, partials, c, dtype=torch.float32, device=x.device)
    _bn_lif_bwd_kernel[grid_b](
        gs, gs.stride(0), gs.stride(1), gs.stride(3), x, mean, invstd, mean if weight is None else weight,
        mean if bias is None else bias, gy, f[0], f[1], c, s, sN, sC, sS, B * sN, B * gs.stride(0), T, float(tau),
        float(v_threshold), float(v_reset), 0.0 if soft_reset else float(v_reset), float(alpha),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, DECAY_INPUT=decay_input, SOFT=soft_reset,
        DETACH=detach_reset, SURROGATE=surrogate_index, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=BWD_WARPS)
    grad_w = torch.empty(c if want_w else 0, dtype=torch.float32, device=x.device)
    grad_b = torch.empty(c if want_b else 0, dtype=torch.float32, device=x.device)
    terms = torch.empty(3, c, dtype=torch.float32, device=x.device)
    _finish_grad_kernel[_finish_grid(c)](
        f[0], f[1], partials, c, float(n * s), invstd, mean if weight is None else weight,
        grad_w if want_w else terms, grad_b if want_b else terms, terms, HAS_WEIGHT=weight is not None,
        WANT_W=want_w, WANT_B=bool(want_b), BLOCK_C=FINISH_C, BLOCK_P=FINISH_P)
    if not want_x:
        return x.new_empty((0,)), grad_w, grad_b
    _bn_grad_kernel[_grid(n, c, s, block_c, block_s)](gy, x, mean, terms, gy, c, s, sN, sC, sS,
                                                      BLOCK_C=block_c, BLOCK_S=block_s)
    return gy, grad_w, grad_b
