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

from .._utils import state_dtype, triton_interpreting
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


@triton.autotune(configs=_configs(), key=["N_BUCKET"])
@triton.jit
def _lif_fwd_kernel(x_ptr, v0_ptr, s_ptr, v_out_ptr, h_ptr, N, T, N_BUCKET, tau, v_th, v_reset, vr,
                    DECAY_INPUT: tl.constexpr, SOFT: tl.constexpr, SAVE_H: tl.constexpr,
                    BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
    for t in range(T):
        idx = tl.cast(t, tl.int64) * N + offs  # int64: T * N may exceed 2^31
        x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(v.dtype)
        if DECAY_INPUT:
            h = v + tl.math.div_rn(x - (v - vr), tau)
        else:
            h = v - tl.math.div_rn(v - vr, tau) + x
        fire = h >= v_th
        tl.store(s_ptr + idx, tl.where(fire, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mask)
        if SAVE_H:
            tl.store(h_ptr + idx, h, mask=mask)
        if SOFT:
            v = tl.where(fire, h - v_th, h)
        else:
            v = tl.where(fire, v_reset, h)
    tl.store(v_out_ptr + offs, v, mask=mask)


@triton.autotune(configs=_configs(), key=["N_BUCKET"])
@triton.jit
def _lif_bwd_kernel(gs_ptr, gv_last_ptr, h_ptr, gx_ptr, gv0_ptr, N, T, N_BUCKET, tau, v_th, vr, alpha,
                    DECAY_INPUT: tl.constexpr, SOFT: tl.constexpr, DETACH: tl.constexpr,
                    SURROGATE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    gv = tl.load(gv_last_ptr + offs, mask=mask, other=0.0)
    for i in range(T):  # reverse time with a forward range: negative-step ranges are fragile
        idx = tl.cast(T - 1 - i, tl.int64) * N + offs  # int64: T * N may exceed 2^31
        h = tl.load(h_ptr + idx, mask=mask, other=0.0)
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
        gs = tl.load(gs_ptr + idx, mask=mask, other=0.0).to(h.dtype)
        gh = gs * sg + gv * dv_dh
        if DECAY_INPUT:
            gx = tl.math.div_rn(gh, tau)
        else:
            gx = gh
        tl.store(gx_ptr + idx, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        gv = gh - tl.math.div_rn(gh, tau)
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
    x = x_seq.contiguous()
    T = x.shape[0]
    n = x.numel() // T
    if v0 is None:  # start at the reset value
        v0 = torch.full(x.shape[1:], 0.0 if soft_reset else v_reset, dtype=state_dtype(x.dtype), device=x.device)
    spikes = torch.empty_like(x)
    v_last = torch.empty_like(v0, memory_format=torch.contiguous_format)
    h_seq = torch.empty(x.shape if save_h else (0,), dtype=state_dtype(x.dtype), device=x.device)
    if n:
        _lif_fwd_kernel[_grid(n)](
            x, v0.contiguous(), spikes, v_last, h_seq if save_h else v_last, n, T, bucket(n), float(tau),
            float(v_threshold), float(v_reset), 0.0 if soft_reset else float(v_reset),
            DECAY_INPUT=decay_input, SOFT=soft_reset,
            SAVE_H=save_h)
    else:
        v_last.copy_(v0)
    return spikes, v_last, h_seq


def lif_bwd(grad_spikes, grad_v_last, h_seq, tau, decay_input, v_threshold, v_reset, soft_reset,
            detach_reset, surrogate, alpha):
    """Triton implementation of tna::lif_bwd (same contract as the C++ kernel)."""
    _check(grad_spikes.dtype, surrogate)
    gs = grad_spikes.contiguous()
    T = gs.shape[0]
    n = gs.numel() // T
    if grad_v_last is None:
        grad_v_last = torch.zeros_like(h_seq[0])
    grad_x = torch.empty_like(gs)
    grad_v0 = torch.empty_like(grad_v_last, memory_format=torch.contiguous_format)
    if n:
        _lif_bwd_kernel[_grid(n)](
            gs, grad_v_last.contiguous(), h_seq.contiguous(), grad_x, grad_v0, n, T, bucket(n), float(tau),
            float(v_threshold), 0.0 if soft_reset else float(v_reset), float(alpha), DECAY_INPUT=decay_input,
            SOFT=soft_reset, DETACH=detach_reset, SURROGATE=SURROGATES.index(surrogate))
    else:
        grad_v0.copy_(grad_v_last)
    return grad_x, grad_v0


def lif_bwd_recompute(grad_spikes, grad_v_last, x_seq, v0, tau, decay_input, v_threshold, v_reset,
                      soft_reset, detach_reset, surrogate, alpha):
    """tna::lif_bwd_recompute on CUDA: the Triton forward writes h_seq, then the Triton backward
    (unfused; autograd saves h_seq on CUDA, so this path serves direct calls)."""
    hyper = (tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset, surrogate, alpha)
    h_seq = lif_fwd(x_seq, v0, *hyper, True)[2]
    grad_x, grad_v0 = lif_bwd(grad_spikes, grad_v_last, h_seq, *hyper)
    return grad_x, grad_v0 if v0 is not None else grad_v0.new_empty((0,))
