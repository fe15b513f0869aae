// Fused twin loss on the native core: raw pointers, sizes and a dtype code (no torch types).
// The formulas, sweeps and the thread-count independence are described in twin_loss.cpp;
// tna_kernels/ops/twin_loss.py allocates the outputs, checks the tensors and calls these.
#pragma once
#include <cstdint>

#include "../core.h"

namespace tna {

// logits_base, logits_twin: contiguous [B, C] of `dtype` (floating); target: contiguous [B].
// Outputs (allocated by the caller): loss (1 value) and parts (3 values) in opmath_t of the dtype
// (float for float/half/bf16, double for double); grad_base / grad_twin: contiguous [B, C] of
// `dtype`, or null to skip that gradient. Checks the weights, mse_reduction (0 'mean',
// 1 'sum_over_batch'), label_smoothing and every target (a class in [0, C) or ignore_index) before
// writing anything; runs on num_threads() threads, with a result independent of their number.
void twin_loss_fwd(DType dtype, const void* logits_base, const void* logits_twin,
                   const int64_t* target, int64_t B, int64_t C, double ce_weight_base,
                   double ce_weight_twin, double mse_weight, int64_t mse_reduction,
                   double label_smoothing, int64_t ignore_index, void* loss, void* parts,
                   void* grad_base, void* grad_twin);

// out_x = grad_loss * grad_x (computed in opmath_t, rounded once to `dtype`) for the contiguous
// grad_base (na elements) and grad_twin (nb elements); grad_loss: one opmath_t value.
void twin_loss_bwd(DType dtype, const void* grad_loss, const void* grad_base,
                   const void* grad_twin, int64_t na, int64_t nb, void* out_base,
                   void* out_twin);

}  // namespace tna
