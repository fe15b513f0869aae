"""Multi-step LIF in Triton: one program per block of neurons, the time loop inside the kernel,
membrane and gradient carry in registers. Same arithmetic, in the same order, as csrc/cpu/lif.cpp
and reference.py (divisions rounded to nearest via div_rn), so spikes agree bit for bit.
Both kernels read their state input and write a separate output, so autotune reruns are safe.

Launch path (see _launch.py): direct ``kernel[grid](...)`` launches, one grid dimension
(ceil(N / BLOCK) programs), autotune keyed on a power-of-two bucket of N, 64-bit element offsets
(``t * N`` is formed in int64: T * N may exceed 2^31). No host synchronisation."""

import torch
import triton
import triton.language as tl

from .._utils import state_dtype, time_rows, triton_interpreting
from ..formats import SURROGATES
from ._launch import bucket, check_grid


def _configs():
    if triton_interpreting():  # one config: the interpreter is slow and tests must stay small
        return [triton.Config({"BLOCK": 64}, num_warps=1)]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b in (256, 512, 1024) for w in (4, 8)]


@triton.jit
def _surrogate_grad(x, alpha, SURROGATE: tl.constexpr):
    if SURROGATE == 0:  # atan
        u = 1.5707963267948966 * alpha * x
        g = tl.math.div_rn(alpha, 2.0 * (1.0 + u * u))
    elif SURROGATE == 1:  # sigmoid
        sg = tl.sigmoid(alpha * x)
        g = alpha * sg * (1.0 - sg)
    elif SURROGATE == 2:  # fast_sigmoid
        d = 1.0 + alpha * tl.abs(x)
        g = tl.math.div_rn(1.0, d * d)
    elif SURROGATE == 3:  # triangle
        r = 1.0 - alpha * tl.abs(x)
        g = tl.where(r > 0.0, alpha * r, 0.0)
    else:  # rectangle
        g = tl.where(tl.abs(x) < tl.math.div_rn(0.5, alpha), alpha, 0.0)
    return g


@triton.jit
def _charge_fire_reset(v, x, tau, v_th, v_reset, vr, DECAY_INPUT: tl.constexpr, SOFT: tl.constexpr):
    """One time step: the pre-spike membrane h, the spike (bool) and the membrane after reset."""
    if DECAY_INPUT:
        h = v + tl.math.div_rn(x - (v - vr), tau)
    else:
        h = v - tl.math.div_rn(v - vr, tau) + x
    fire = h >= v_th
    if SOFT:
        v = tl.where(fire, h - v_th, h)
    else:
        v = tl.where(fire, v_reset, h)
    return h, fire, v


@triton.jit
def _step_grad(h, gs, gv, tau, v_th, vr, alpha, DECAY_INPUT: tl.constexpr, SOFT: tl.constexpr,
               DETACH: tl.constexpr, SURROGATE: tl.constexpr):
    """One step back through time: from h, dL/dspike and the carry dL/dv after this step, the
    input's gradient and the carry into the previous step."""
    sg = _surrogate_grad(h - v_th, alpha, SURROGATE)
    s = tl.where(h >= v_th, 1.0, 0.0)
    if SOFT:
        if DETACH:
            dv_dh = tl.full(h.shape, 1.0, h.dtype)
        else:
            dv_dh = 1.0 - v_th * sg
    else:
        if DETACH:
            dv_dh = 1.0 - s
        else:
            dv_dh = (1.0 - s) + (vr - h) * sg
    gh = gs * sg + gv * dv_dh
    if DECAY_INPUT:
        gx = tl.math.div_rn(gh, tau)
    else:
        gx = gh
    return gx, gh - tl.math.div_rn(gh, tau)


@triton.autotune(configs=_configs(), key=["N_BUCKET"])
@triton.jit
def _lif_fwd_kernel(x_ptr, x_step, v0_ptr, s_ptr, v_out_ptr, h_ptr, N, T, N_BUCKET, tau, v_th, v_reset, vr,
                    HAS_V0: tl.constexpr, DECAY_INPUT: tl.constexpr, SOFT: tl.constexpr, SAVE_H: tl.constexpr,
                    BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:  # the reset value (vr): no filled v0 tensor, one launch and N * 4 B of reads fewer
        v = tl.full((BLOCK,), 0.0, tl.float32) + vr
    for t in range(T):
        idx = tl.cast(t, tl.int64) * N + offs  # int64: T * N may exceed 2^31
        x = tl.load(x_ptr + tl.cast(t, tl.int64) * x_step + offs, mask=mask, other=0.0).to(v.dtype)
        h, fire, v = _charge_fire_reset(v, x, tau, v_th, v_reset, vr, DECAY_INPUT, SOFT)
        tl.store(s_ptr + idx, tl.where(fire, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mask)
        if SAVE_H:
            tl.store(h_ptr + idx, h, mask=mask)
    tl.store(v_out_ptr + offs, v, mask=mask)


@triton.autotune(configs=_configs(), key=["N_BUCKET"])
@triton.jit
def _lif_bwd_kernel(gs_ptr, gv_last_ptr, h_ptr, gx_ptr, gv0_ptr, N, T, N_BUCKET, tau, v_th, vr, alpha,
                    HAS_GV: tl.constexpr, DECAY_INPUT: tl.constexpr, SOFT: tl.constexpr, DETACH: tl.constexpr,
                    SURROGATE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if HAS_GV:
        gv = tl.load(gv_last_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:  # no zero-filled grad_v_last tensor
        gv = tl.zeros((BLOCK,), tl.float32)
    for i in range(T):  # reverse time with a forward range: negative-step ranges are fragile
        idx = tl.cast(T - 1 - i, tl.int64) * N + offs  # int64: T * N may exceed 2^31
        h = tl.load(h_ptr + idx, mask=mask, other=0.0)
        gs = tl.load(gs_ptr + idx, mask=mask, other=0.0).to(h.dtype)
        gx, gv = _step_grad(h, gs, gv, tau, v_th, vr, alpha, DECAY_INPUT, SOFT, DETACH, SURROGATE)
        tl.store(gx_ptr + idx, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(gv0_ptr + offs, gv, mask=mask)


@triton.autotune(configs=_configs(), key=["N_BUCKET"])
@triton.jit
def _lif_bwd_recompute_kernel(gs_ptr, gs_step, gv_last_ptr, x_ptr, x_step, v0_ptr, gx_ptr, gv0_ptr, N, T,
                              N_BUCKET, tau, v_th, v_reset, vr, alpha, HAS_GV: tl.constexpr,
                              HAS_V0: tl.constexpr, DECAY_INPUT: tl.constexpr, SOFT: tl.constexpr,
                              DETACH: tl.constexpr, SURROGATE: tl.constexpr, BLOCK: tl.constexpr):
    """_lif_bwd_kernel with h recomputed from x instead of loaded: step T-1-i replays the forward
    from v0 (T(T+1)/2 forward steps in all, on data the program itself just read, so from cache;
    the same arithmetic as _lif_fwd_kernel, so the same h bits). HBM traffic: x, grad_spikes and
    grad_x once each, against another [T, N] write and read of h for the two-kernel version."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if HAS_GV:
        gv = tl.load(gv_last_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        gv = tl.zeros((BLOCK,), tl.float32)
    for i in range(T):  # reverse time with a forward range: negative-step ranges are fragile
        last = T - 1 - i
        if HAS_V0:
            v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            v = tl.full((BLOCK,), 0.0, tl.float32) + vr
        h = v
        for t in range(last + 1):
            xt = tl.load(x_ptr + tl.cast(t, tl.int64) * x_step + offs, mask=mask, other=0.0).to(tl.float32)
            h, _, v = _charge_fire_reset(v, xt, tau, v_th, v_reset, vr, DECAY_INPUT, SOFT)
        gs = tl.load(gs_ptr + tl.cast(last, tl.int64) * gs_step + offs, mask=mask, other=0.0).to(tl.float32)
        gx, gv = _step_grad(h, gs, gv, tau, v_th, vr, alpha, DECAY_INPUT, SOFT, DETACH, SURROGATE)
        tl.store(gx_ptr + tl.cast(last, tl.int64) * N + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    if HAS_V0:
        tl.store(gv0_ptr + offs, gv, mask=mask)


def _grid(n):
    """ceil(n / BLOCK) programs in grid dimension 0 (limit 2^31 - 1: n up to 2^39 neurons)."""
    return lambda meta: check_grid((triton.cdiv(n, meta["BLOCK"]),), "LIF")


def _check(dtype, surrogate):
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the Triton LIF kernels take float32, float16 or bfloat16, got {dtype}")


def lif_fwd(x_seq, v0, tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset,
            surrogate, alpha, save_h):
    """Triton implementation of tna::lif_fwd (same contract as the C++ kernel)."""
    _check(x_seq.dtype, surrogate)
    x, x_step = time_rows(x_seq)  # a static input expanded over time is read in place
    T = x.shape[0]
    n = x_seq[0].numel() if T else 0
    acc = state_dtype(x.dtype)
    v_init = 0.0 if soft_reset else float(v_reset)  # without v0 the membrane starts here (in the kernel)
    spikes = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    v_last = torch.empty(x.shape[1:], dtype=acc, device=x.device)
    h_seq = torch.empty(x.shape if save_h else (0,), dtype=acc, device=x.device)
    if n:
        # an absent pointer gets a placeholder the kernel never reads
        _lif_fwd_kernel[_grid(n)](
            x, x_step, v_last if v0 is None else v0.contiguous(), spikes, v_last, h_seq if save_h else v_last, n,
            T, bucket(n), float(tau), float(v_threshold), float(v_reset), v_init, HAS_V0=v0 is not None,
            DECAY_INPUT=decay_input, SOFT=soft_reset, SAVE_H=save_h)
    elif v0 is not None:
        v_last.copy_(v0)
    else:
        v_last.fill_(v_init)
    return spikes, v_last, h_seq


def lif_bwd(grad_spikes, grad_v_last, h_seq, tau, decay_input, v_threshold, v_reset, soft_reset,
            detach_reset, surrogate, alpha):
    """Triton implementation of tna::lif_bwd (same contract as the C++ kernel)."""
    _check(grad_spikes.dtype, surrogate)
    gs = grad_spikes.contiguous()
    T = gs.shape[0]
    n = gs.numel() // T
    grad_x = torch.empty_like(gs)
    grad_v0 = torch.empty(h_seq.shape[1:], dtype=h_seq.dtype, device=h_seq.device)
    if n:
        _lif_bwd_kernel[_grid(n)](
            gs, grad_v0 if grad_v_last is None else grad_v_last.contiguous(), h_seq.contiguous(), grad_x, grad_v0,
            n, T, bucket(n), float(tau), float(v_threshold), 0.0 if soft_reset else float(v_reset), float(alpha),
            HAS_GV=grad_v_last is not None, DECAY_INPUT=decay_input, SOFT=soft_reset, DETACH=detach_reset,
            SURROGATE=SURROGATES.index(surrogate))
    elif grad_v_last is not None:
        grad_v0.copy_(grad_v_last)
    else:
        grad_v0.zero_()
    return grad_x, grad_v0


def lif_bwd_recompute(grad_spikes, grad_v_last, x_seq, v0, tau, decay_input, v_threshold, v_reset,
                      soft_reset, detach_reset, surrogate, alpha):
    """tna::lif_bwd_recompute on CUDA: one kernel that recomputes the membrane from ``x_seq`` in
    registers (no ``h`` written to memory) and runs the backward through time."""
    _check(grad_spikes.dtype, surrogate)
    x, x_step = time_rows(x_seq)
    gs, gs_step = time_rows(grad_spikes)
    T = x.shape[0]
    n = x_seq[0].numel() if T else 0
    grad_x = torch.empty(x_seq.shape, dtype=grad_spikes.dtype, device=x_seq.device)
    acc = state_dtype(grad_spikes.dtype)
    grad_v0 = torch.empty(x_seq.shape[1:] if v0 is not None else (0,), dtype=acc, device=x_seq.device)
    if n and T:
        # an absent pointer gets a placeholder the kernel never reads (grad_v0: empty without v0)
        gv_last = grad_v_last.contiguous() if grad_v_last is not None else grad_v0
        v0c = v0.contiguous() if v0 is not None else grad_v0
        _lif_bwd_recompute_kernel[_grid(n)](
            gs, gs_step, gv_last, x, x_step, v0c, grad_x, grad_v0, n, T, bucket(n), float(tau),
            float(v_threshold), float(v_reset), 0.0 if soft_reset else float(v_reset), float(alpha),
            HAS_GV=grad_v_last is not None, HAS_V0=v0 is not None, DECAY_INPUT=decay_input,
            SOFT=soft_reset, DETACH=detach_reset, SURROGATE=SURROGATES.index(surrogate))
    elif v0 is not None:
        grad_v0.copy_(grad_v_last if grad_v_last is not None else torch.zeros_like(grad_v0))
    return grad_x, grad_v0
