"""Fused twin loss in Triton: one program per row, looping over blocks of classes, so any class
count works (10, 100, 1000, non-powers of two larger than one block). Same contract and maths as
csrc/cpu/twin_loss.cpp (the formulas are in its header; reference.py::twin_loss is the spec):

  sweep 1 (per row, both logit tensors at once): online logsumexp carried as a scalar running
      max m and rescaled sum s (s <- s * exp(m_old - m_new) + sum exp(x - m_new) per block), the
      row sum of x (label smoothing) and sum (a - b)^2. The row writes (ce_a, ce_b, mse_row) to a
      [B, 3] buffer (ce = 0 on ignored rows; a target outside [0, C) is never read through).
  sweep 2: re-reads the row (from L2) and writes, for grad_output = 1,
      dL/da = [valid] wa/N (exp(a - lse_a) - (1 - eps) onehot - eps/C) + 2 lam/D (a - b)
      dL/db = [valid] wb/N (exp(b - lse_b) - (1 - eps) onehot - eps/C) - 2 lam/D (a - b)
Three launches and an assert per call, no torch glue and no host sync (host cost, not HBM
traffic, bounds this loss on a GPU at training batch sizes):
  1. ``_count_valid_kernel`` (one program): N, the non-ignored rows, which the row kernel's
     gradients divide by, and whether every other target is in [0, C);
  2. ``_twin_loss_fwd_kernel`` (one program per row): the sweeps above;
  3. ``_twin_loss_finish_kernel`` (one program): sums the row buffer's columns, writes the parts
     and the weighted loss;
then ``torch._assert_async`` on that flag (asynchronous on the GPU) reports targets out of range.
Accumulation runs in the dtype of the row buffer: float32 for half/bf16/float32, float64 for
float64. Outputs are written, never accumulated, so autotune reruns are safe.

Launch path (see _launch.py): a direct ``kernel[(B,)](...)`` launch (B programs in grid dimension
0), autotune keyed on a power-of-two bucket of C: the block choice is tuned once per bucket (the
pruning of blocks wider than the row runs at that one tuning), never per call or per batch size.
No host synchronisation; the target check is a device-side assert (on CUDA a bad target makes the
CUDA context unusable, as any device assert does; documented in docs/GPU.md)."""

import math

import torch
import triton
import triton.language as tl

from .._utils import state_dtype, triton_interpreting
from ._launch import bucket, check_grid


def _configs():
    if triton_interpreting():  # one small block: the interpreter is slow, and C = 100 then spans blocks
        return [triton.Config({"BLOCK": 32}, num_warps=1)]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b in (256, 1024, 4096) for w in (4, 8)]


def _prune(configs, named_args, **kwargs):
    """Drop blocks far wider than the row (keep the smallest one that covers it). Runs once per
    autotune key (a power-of-two bucket of C), so every C of a bucket keeps the same blocks."""
    c = named_args["C"]
    cover = max(triton.next_power_of_2(c), min(cfg.kwargs["BLOCK"] for cfg in configs))
    kept = [cfg for cfg in configs if cfg.kwargs["BLOCK"] <= cover]
    return kept or configs[:1]


# Rows per step of the one-program reductions (count, finish): B = 256 is one step; 1024 x 4 columns
# in float32 is 16 KiB of loads in flight, well inside one SM.
_REDUCE_BLOCK = 1024


@triton.jit
def _count_valid_kernel(y_ptr, aux_ptr, B, C, ignore_index, BLOCK: tl.constexpr):
    """aux[0] = the number of rows whose target is not ignore_index; aux[1] = 1 when every such
    target is in [0, C), else 0 (one program)."""
    offs = tl.arange(0, BLOCK)
    count = tl.zeros([BLOCK], tl.int64)
    bad = tl.zeros([BLOCK], tl.int64)
    for start in range(0, B, BLOCK):
        idx = start + offs
        y = tl.load(y_ptr + idx, mask=idx < B, other=ignore_index)
        valid = y != ignore_index
        count += valid.to(tl.int64)
        bad += (valid & ((y < 0) | (y >= C))).to(tl.int64)
    tl.store(aux_ptr, tl.sum(count, 0))
    tl.store(aux_ptr + 1, (tl.sum(bad, 0) == 0).to(tl.int64))


@triton.jit
def _twin_loss_finish_kernel(rows_ptr, aux_ptr, loss_ptr, parts_ptr, B, wa, wb, lam, denom,
                             BLOCK: tl.constexpr):
    """The row buffer's column sums -> parts = (CE_a / N, CE_b / N, MSE / denom) (0 for a CE
    without rows) and loss = wa parts[0] + wb parts[1] + lam parts[2]. One program."""
    acc_t = rows_ptr.dtype.element_ty
    offs = tl.arange(0, BLOCK)
    s_a = tl.zeros([BLOCK], acc_t)
    s_b = tl.zeros([BLOCK], acc_t)
    s_sq = tl.zeros([BLOCK], acc_t)
    for start in range(0, B, BLOCK):
        r = (start + offs).to(tl.int64)
        m = r < B
        s_a += tl.load(rows_ptr + r * 3, mask=m, other=0.0)
        s_b += tl.load(rows_ptr + r * 3 + 1, mask=m, other=0.0)
        s_sq += tl.load(rows_ptr + r * 3 + 2, mask=m, other=0.0)
    n = tl.load(aux_ptr).to(acc_t)
    inv_n = tl.where(n > 0, 1.0 / tl.maximum(n, 1.0), 0.0)
    p_a = tl.sum(s_a, 0) * inv_n
    p_b = tl.sum(s_b, 0) * inv_n
    p_sq = tl.sum(s_sq, 0) / denom
    tl.store(parts_ptr, p_a)
    tl.store(parts_ptr + 1, p_b)
    tl.store(parts_ptr + 2, p_sq)
    tl.store(loss_ptr, wa * p_a + wb * p_b + lam * p_sq)


@triton.autotune(configs=_configs(), key=["C_BUCKET"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _twin_loss_fwd_kernel(a_ptr, b_ptr, y_ptr, n_ptr, rows_ptr, ga_ptr, gb_ptr, C, C_BUCKET, ignore_index,
                          wa, wb, k_mse, eps, NEED_GA: tl.constexpr, NEED_GB: tl.constexpr,
                          BLOCK: tl.constexpr):
    acc_t = rows_ptr.dtype.element_ty
    row = tl.program_id(0).to(tl.int64)
    a_row = a_ptr + row * C
    b_row = b_ptr + row * C
    y = tl.load(y_ptr + row)
    valid = y != ignore_index
    in_range = (y >= 0) & (y < C)
    y_safe = tl.where(valid & in_range, y, 0)  # a bad target (reported by the count kernel) is never read through
    offs = tl.arange(0, BLOCK)

    m_a = tl.full((), float("-inf"), acc_t)
    m_b = tl.full((), float("-inf"), acc_t)
    s_a = tl.zeros((), acc_t)
    s_b = tl.zeros((), acc_t)
    sx_a = tl.zeros([BLOCK], acc_t)
    sx_b = tl.zeros([BLOCK], acc_t)
    sq = tl.zeros([BLOCK], acc_t)
    for start in range(0, C, BLOCK):
        cols = start + offs
        mask = cols < C
        xa = tl.load(a_row + cols, mask=mask, other=float("-inf")).to(acc_t)
        xb = tl.load(b_row + cols, mask=mask, other=float("-inf")).to(acc_t)
        new_a = tl.maximum(m_a, tl.max(xa, 0))
        new_b = tl.maximum(m_b, tl.max(xb, 0))
        s_a = s_a * tl.exp(m_a - new_a) + tl.sum(tl.exp(xa - new_a), 0)
        s_b = s_b * tl.exp(m_b - new_b) + tl.sum(tl.exp(xb - new_b), 0)
        m_a = new_a
        m_b = new_b
        xa0 = tl.where(mask, xa, 0.0)
        xb0 = tl.where(mask, xb, 0.0)
        sx_a += xa0
        sx_b += xb0
        d = xa0 - xb0
        sq += d * d
    lse_a = m_a + tl.log(s_a)
    lse_b = m_b + tl.log(s_b)
    ya = tl.load(a_row + y_safe).to(acc_t)
    yb = tl.load(b_row + y_safe).to(acc_t)
    smooth = eps / C
    ce_a = tl.where(valid, lse_a - (1.0 - eps) * ya - smooth * tl.sum(sx_a, 0), 0.0)
    ce_b = tl.where(valid, lse_b - (1.0 - eps) * yb - smooth * tl.sum(sx_b, 0), 0.0)
    tl.store(rows_ptr + row * 3, ce_a.to(acc_t))
    tl.store(rows_ptr + row * 3 + 1, ce_b.to(acc_t))
    tl.store(rows_ptr + row * 3 + 2, tl.sum(sq, 0))

    if NEED_GA or NEED_GB:
        n = tl.load(n_ptr).to(acc_t)
        inv_n = tl.where(n > 0, 1.0 / tl.maximum(n, 1.0), 0.0)
        ca = tl.where(valid, wa * inv_n, 0.0)
        cb = tl.where(valid, wb * inv_n, 0.0)
        for start in range(0, C, BLOCK):
            cols = start + offs
            mask = cols < C
            xa = tl.load(a_row + cols, mask=mask, other=0.0).to(acc_t)
            xb = tl.load(b_row + cols, mask=mask, other=0.0).to(acc_t)
            hot = tl.where(cols == y, 1.0 - eps, 0.0) + smooth
            d = k_mse * (xa - xb)
            if NEED_GA:
                ga = ca * (tl.exp(xa - lse_a) - hot) + d
                tl.store(ga_ptr + row * C + cols, ga.to(ga_ptr.dtype.element_ty), mask=mask)
            if NEED_GB:
                gb = cb * (tl.exp(xb - lse_b) - hot) - d
                tl.store(gb_ptr + row * C + cols, gb.to(gb_ptr.dtype.element_ty), mask=mask)


def twin_loss_fwd(logits_base, logits_twin, target, ce_weight_base, ce_weight_twin, mse_weight,
                  mse_reduction, label_smoothing, ignore_index, need_grad_base, need_grad_twin):
    """Triton implementation of tna::twin_loss_fwd (same contract as the C++ kernel)."""
    if logits_base.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"logits_base must be float32, float16, bfloat16 or float64, got {logits_base.dtype}")
    if logits_base.dim() != 2 or logits_base.shape[1] < 1:
        raise ValueError("logits_base must be a 2-D [batch, classes] tensor, got shape "
                         f"{tuple(logits_base.shape)}")
    if logits_twin.dtype != logits_base.dtype:
        raise TypeError(f"logits_twin must have dtype {logits_base.dtype}, got {logits_twin.dtype}")
    if logits_twin.shape != logits_base.shape:
        raise ValueError(f"logits_twin must have shape {tuple(logits_base.shape)}, "
                         f"got {tuple(logits_twin.shape)}")
    if target.dtype != torch.int64 or target.shape != logits_base.shape[:1]:
        raise ValueError(f"target must be an int64 tensor of shape {tuple(logits_base.shape[:1])}, "
                         f"got {target.dtype} {tuple(target.shape)}")
    if mse_reduction not in (0, 1):
        raise ValueError(f"mse_reduction must be 0 ('mean') or 1 ('sum_over_batch'), got {mse_reduction}")
    for name, w in (("ce_weight_base", ce_weight_base), ("ce_weight_twin", ce_weight_twin),
                    ("mse_weight", mse_weight)):
        if not math.isfinite(w):
            raise ValueError(f"{name} must be finite, got {w}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    a = logits_base.contiguous()
    b = logits_twin.contiguous()
    y = target.contiguous()
    B, C = a.shape
    acc = state_dtype(a.dtype)
    dev = a.device
    loss = torch.empty((), dtype=acc, device=dev)
    parts = torch.empty(3, dtype=acc, device=dev)
    grad_a = torch.empty_like(a) if need_grad_base else a.new_empty((0,))
    grad_b = torch.empty_like(a) if need_grad_twin else a.new_empty((0,))
    if B == 0:  # no rows, no launch (an empty tensor's pointer may be null): every part is 0
        loss.zero_()
        parts.zero_()
        return loss, parts, grad_a, grad_b
    aux = torch.empty(2, dtype=torch.int64, device=dev)  # [N, 1 if every target is in range]
    rows = torch.empty((B, 3), dtype=acc, device=dev)
    denom = max(B * C if mse_reduction == 0 else B, 1)
    ignore_index = int(ignore_index)
    _count_valid_kernel[(1,)](y, aux, B, C, ignore_index, BLOCK=_REDUCE_BLOCK)
    _twin_loss_fwd_kernel[check_grid((B,), "twin_loss")](
        a, b, y, aux, rows, grad_a if need_grad_base else rows, grad_b if need_grad_twin else rows,
        C, bucket(C), ignore_index, float(ce_weight_base), float(ce_weight_twin),
        2.0 * float(mse_weight) / denom, float(label_smoothing),
        NEED_GA=bool(need_grad_base), NEED_GB=bool(need_grad_twin))
    _twin_loss_finish_kernel[(1,)](rows, aux, loss, parts, B, float(ce_weight_base), float(ce_weight_twin),
                                   float(mse_weight), denom, BLOCK=_REDUCE_BLOCK)
    torch._assert_async(aux[1], f"target must hold class indices in [0, {C}) or ignore_index ({ignore_index})")
    return loss, parts, grad_a, grad_b


def twin_loss_bwd(grad_loss, grad_base, grad_twin):
    """CUDA implementation of tna::twin_loss_bwd: a scale by a 0-dim device tensor is one fused
    elementwise torch kernel per tensor, which Triton would not beat. A bf16/half tensor times a
    0-dim float32 tensor stays in its dtype (computed in float, rounded once)."""
    if grad_loss.dim() != 0:
        raise ValueError(f"grad_loss must be a 0-dim tensor, got shape {tuple(grad_loss.shape)}")
    if not grad_base.dtype.is_floating_point:
        raise TypeError(f"grad_base must be a floating-point tensor, got {grad_base.dtype}")
    if grad_twin.dtype != grad_base.dtype:
        raise TypeError(f"grad_twin must have dtype {grad_base.dtype}, got {grad_twin.dtype}")
    if grad_loss.dtype != state_dtype(grad_base.dtype):
        raise TypeError(f"grad_loss must have dtype {state_dtype(grad_base.dtype)}, got {grad_loss.dtype}")
    return grad_base * grad_loss, grad_twin * grad_loss
