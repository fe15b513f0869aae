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

Sums are deterministic: each tile writes its partial result to its own slot, and the slots are
combined by torch in a fixed order (float64) — no atomics, so a run repeats bit for bit. The
statistics combine per-tile means and centred sums of squares (Chan et al.), so a large mean does
not cancel the variance. No autotuning: the tile shape fixes the partial sums' grouping, so it is
chosen from the sizes, not timed. No host synchronisation."""

import torch
import triton
import triton.language as tl

from .._utils import triton_interpreting
from ._launch import check_grid
from .lif import _charge_fire_reset, _step_grad

# Elements per tile: 4 warps hold 8 floats per thread per live tile (the backward keeps ~8 live).
TILE = 1024
MAX_BLOCK_S = 128


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
def _stats_kernel(x_ptr, mean_ptr, m2_ptr, C, S, sN, sC, sS, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Per tile and channel: the mean and the centred sum of squares of the tile's positions."""
    n = tl.program_id(0).to(tl.int64)
    c, mask, offs = _tile(n, C, S, sN, sC, sS, BLOCK_C, BLOCK_S)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    count = tl.minimum(S - tl.program_id(1) * BLOCK_S, BLOCK_S).to(tl.float32)
    mean = tl.sum(x, axis=1) / count
    d = tl.where(mask, x - mean[:, None], 0.0)
    slot = (n * tl.num_programs(1) + tl.program_id(1)) * C + c
    tl.store(mean_ptr + slot, mean, mask=c < C)
    tl.store(m2_ptr + slot, tl.sum(d * d, axis=1), mask=c < C)


@triton.jit
def _bn_lif_fwd_kernel(x_ptr, a_ptr, b_ptr, s_ptr, C, S, sN, sC, sS, step, T, tau, v_th, v_reset, vr,
                       DECAY_INPUT: tl.constexpr, SOFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Sample b's tile at each of the T steps (sample t*B + b): y = x * a + b, then the LIF from its
    reset value; spikes are written with x's strides (``step``: elements between steps)."""
    n = tl.program_id(0).to(tl.int64)
    c, mask, offs = _tile(n, C, S, sN, sC, sS, BLOCK_C, BLOCK_S)
    a = tl.load(a_ptr + c, mask=c < C, other=0.0)[:, None]
    b = tl.load(b_ptr + c, mask=c < C, other=0.0)[:, None]
    v = tl.zeros((BLOCK_C, BLOCK_S), tl.float32) + vr
    for t in range(T):
        o = offs + tl.cast(t, tl.int64) * step
        y = tl.load(x_ptr + o, mask=mask, other=0.0).to(tl.float32) * a + b
        _, fire, v = _charge_fire_reset(v, y, tau, v_th, v_reset, vr, DECAY_INPUT, SOFT)
        tl.store(s_ptr + o, tl.where(fire, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_lif_bwd_kernel(gs_ptr, gsN, gsC, gsS, x_ptr, a_ptr, b_ptr, mean_ptr, gy_ptr, f1_ptr, f2_ptr, C, S, sN, sC,
                       sS, step, gs_step, T, tau, v_th, v_reset, vr, alpha, DECAY_INPUT: tl.constexpr,
                       SOFT: tl.constexpr, DETACH: tl.constexpr, SURROGATE: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_S: tl.constexpr):
    """The batch norm's output gradient grad_y (written with x's strides) from the spikes' gradient,
    the membrane recomputed from x in registers as in _lif_bwd_recompute_kernel (the same bits as
    the forward), and per tile and channel f1 = sum(grad_y), f2 = sum((x - mean) * grad_y) over
    the tile's positions and steps."""
    n = tl.program_id(0).to(tl.int64)
    c, mask, offs = _tile(n, C, S, sN, sC, sS, BLOCK_C, BLOCK_S)
    _, _, goffs = _tile(n, C, S, gsN, gsC, gsS, BLOCK_C, BLOCK_S)
    a = tl.load(a_ptr + c, mask=c < C, other=0.0)[:, None]
    b = tl.load(b_ptr + c, mask=c < C, other=0.0)[:, None]
    mu = tl.load(mean_ptr + c, mask=c < C, other=0.0)[:, None]
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
            h, _, v = _charge_fire_reset(v, xt * a + b, tau, v_th, v_reset, vr, DECAY_INPUT, SOFT)
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
def _bn_grad_kernel(gy_ptr, x_ptr, mean_ptr, gm_ptr, k_ptr, scale_ptr, gx_ptr, C, S, sN, sC, sS,
                    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """grad_x = (grad_y - gm - (x - mean) * k) * scale, per channel's gm, k, scale (x's strides;
    grad_x may be grad_y itself)."""
    n = tl.program_id(0).to(tl.int64)
    c, mask, offs = _tile(n, C, S, sN, sC, sS, BLOCK_C, BLOCK_S)
    cm = c < C
    mu = tl.load(mean_ptr + c, mask=cm, other=0.0)[:, None]
    gm = tl.load(gm_ptr + c, mask=cm, other=0.0)[:, None]
    k = tl.load(k_ptr + c, mask=cm, other=0.0)[:, None]
    scale = tl.load(scale_ptr + c, mask=cm, other=0.0)[:, None]
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(gx_ptr + offs, ((gy - gm - (x - mu) * k) * scale).to(gx_ptr.dtype.element_ty), mask=mask)


# ---- launchers ------------------------------------------------------------------------------------

def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(sample, channel, position) strides of a 4-D tensor whose H, W are dense (NCHW or channels-last)."""
    return t.stride(0), t.stride(1), t.stride(3)


def _grid(samples: int, c: int, s: int, block_c: int, block_s: int) -> tuple[int, int, int]:
    return check_grid((samples, triton.cdiv(s, block_s), triton.cdiv(c, block_c)), "batch norm + LIF")


def _affine(mean, invstd, weight, bias):
    """y = x * a + b: a = invstd * weight, b = bias - mean * a (float32, per channel)."""
    a = invstd if weight is None else invstd * weight.float()
    b = -mean * a if bias is None else bias.float() - mean * a
    return a.contiguous(), b.contiguous()


def batch_norm_lif_forward(x, weight, bias, running_mean, running_var, momentum, eps, T, tau, decay_input,
                           v_threshold, v_reset, soft_reset):
    """The CUDA kernel of tna::batch_norm_lif_forward (arguments checked by the caller): spikes in
    x's dtype and layout, batch mean and invstd (float32), running statistics updated in place as
    torch's batch norm updates them (unbiased variance)."""
    n, c, h, w = x.shape
    s = h * w
    block_c, block_s = tile_shape(c, s)
    sN, sC, sS = _strides(x)
    grid = _grid(n, c, s, block_c, block_s)
    tiles = n * grid[1]
    part_mean = torch.empty(tiles, c, dtype=torch.float32, device=x.device)
    part_m2 = torch.empty(tiles, c, dtype=torch.float32, device=x.device)
    _stats_kernel[grid](x, part_mean, part_m2, c, s, sN, sC, sS, BLOCK_C=block_c, BLOCK_S=block_s)
    # Chan's combination of the tiles' (count, mean, M2), in float64, in tile order
    counts = torch.full((grid[1],), float(block_s), dtype=torch.float64, device=x.device)
    counts[-1] = s - (grid[1] - 1) * block_s
    counts = counts.repeat(n)[:, None]
    total = float(n * s)
    pm = part_mean.double()
    mean64 = (pm * counts).sum(0) / total
    var64 = (part_m2.double().sum(0) + (counts * (pm - mean64) ** 2).sum(0)) / total
    mean = mean64.float()
    invstd = torch.rsqrt(var64 + eps).float()
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(mean64.float(), alpha=momentum)
    if running_var is not None:
        running_var.mul_(1 - momentum).add_((var64 * (total / (total - 1))).float(), alpha=momentum)
    a, b = _affine(mean, invstd, weight, bias)
    spikes = torch.empty_like(x)
    B = n // T
    _bn_lif_fwd_kernel[_grid(B, c, s, block_c, block_s)](
        x, a, b, spikes, c, s, sN, sC, sS, B * sN, T, float(tau), float(v_threshold), float(v_reset),
        0.0 if soft_reset else float(v_reset), DECAY_INPUT=decay_input, SOFT=soft_reset,
        BLOCK_C=block_c, BLOCK_S=block_s)
    return spikes, mean, invstd


def batch_norm_lif_backward(grad_spikes, x, mean, invstd, weight, bias, T, tau, decay_input, v_threshold, v_reset,
                            soft_reset, detach_reset, surrogate_index, alpha, output_mask):
    """The CUDA kernel of tna::batch_norm_lif_backward (arguments checked by the caller): grad_x in
    x's dtype and layout, grad_weight and grad_bias float32; masked-off outputs are empty."""
    n, c, h, w = x.shape
    s = h * w
    want_x, want_w, want_b = output_mask
    block_c, block_s = tile_shape(c, s)
    sN, sC, sS = _strides(x)
    gs = grad_spikes if grad_spikes.stride(2) == w * grad_spikes.stride(3) else grad_spikes.contiguous()
    B = n // T
    grid_b = _grid(B, c, s, block_c, block_s)
    tiles = B * grid_b[1]
    mean, invstd = mean.float().contiguous(), invstd.float().contiguous()
    a, b = _affine(mean, invstd, weight, bias)
    # grad_y in float32: grad_x's own buffer when x is float32 (the gradient pass runs in place)
    gy = torch.empty_like(x, dtype=torch.float32)
    f1 = torch.empty(tiles, c, dtype=torch.float32, device=x.device)
    f2 = torch.empty(tiles, c, dtype=torch.float32, device=x.device)
    _bn_lif_bwd_kernel[grid_b](
        gs, gs.stride(0), gs.stride(1), gs.stride(3), x, a, b, mean, gy, f1, f2, c, s, sN, sC, sS, B * sN,
        B * gs.stride(0), T, float(tau), float(v_threshold), float(v_reset), 0.0 if soft_reset else float(v_reset),
        float(alpha), DECAY_INPUT=decay_input, SOFT=soft_reset, DETACH=detach_reset, SURROGATE=surrogate_index,
        BLOCK_C=block_c, BLOCK_S=block_s)
    sum_gy = f1.double().sum(0)
    sum_dot = f2.double().sum(0)
    grad_w = (sum_dot * invstd.double()).float() if want_w and weight is not None else x.new_empty((0,),
                                                                                                    dtype=torch.float32)
    grad_b = sum_gy.float() if want_b else x.new_empty((0,), dtype=torch.float32)
    if not want_x:
        return x.new_empty((0,)), grad_w, grad_b
    total = float(n * s)
    inv64 = invstd.double()
    gm = (sum_gy / total).float()
    k = (sum_dot / total * inv64 * inv64).float()
    scale = (inv64 if weight is None else inv64 * weight.double()).float()
    grad_x = gy if x.dtype == torch.float32 else torch.empty_like(x)
    _bn_grad_kernel[_grid(n, c, s, block_c, block_s)](
        gy, x, mean, gm, k, scale, grad_x, c, s, sN, sC, sS, BLOCK_C=block_c, BLOCK_S=block_s)
    return grad_x, grad_w, grad_b
