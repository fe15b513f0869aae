// Fused multi-step LIF neuron, CPU entry points on raw pointers (dynamics and layout: lif.cpp).
// Callers (csrc/bindings/lif.cpp, the C++ tests) allocate every output; scratch stays inside.
// Sequences are T rows of N neurons; row t of an input starts at p + t * stride (elements), which
// may be anything (0 for an input repeated over time), each row itself contiguous. Outputs are
// contiguous [T, N] / [N]. The state dtype (membranes, h_seq, v0, grad_v) is opmath_t of the
// input's: float32 for float16/bfloat16, else the input's own.
#pragma once
#include <cstdint>

#include "../core.h"

namespace tna {

// The surrogate gradients by index, in the order of tna_kernels.reference.SURROGATES (Python
// checks at import that tna_kernels._C.LIF_SURROGATES, this list, equals it).
inline constexpr const char* kLifSurrogates[] = {"atan", "sigmoid", "fast_sigmoid", "triangle",
                                                 "rectangle"};
inline constexpr int kNumLifSurrogates = 5;

struct LifHyper {
  double tau;           // finite, > 0
  bool decay_input;
  double v_threshold;   // finite
  double v_reset;       // finite (unused by the dynamics with soft_reset, except as v0's default)
  bool soft_reset;
  bool detach_reset;    // backward only
  int surrogate;        // index into kLifSurrogates; backward only
  double alpha;         // finite, > 0; backward only
};

// Validates the hyper-parameters (errors name the argument); every entry point calls it.
void check_lif_hyper(const LifHyper& p);

// Forward. x: [T, N] of `dtype` rows x_stride apart; v0: [N] state dtype or null (start at v_reset,
// 0 with soft reset). Writes spikes [T, N] (dtype), v_last [N] (state dtype) and, when h_seq is
// not null, the pre-spike membrane [T, N] (state dtype).
void lif_fwd(DType dtype, const void* x, int64_t x_stride, const void* v0, int64_t T, int64_t N,
             const LifHyper& p, void* spikes, void* v_last, void* h_seq);

// Backward through time from lif_fwd's h_seq ([T, N] state dtype, contiguous). grad_spikes:
// [T, N] dtype, contiguous; grad_v_last: [N] state dtype or null (zero). Writes grad_x [T, N]
// (dtype) and grad_v0 [N] (state dtype).
void lif_bwd(DType dtype, const void* grad_spikes, const void* grad_v_last, const void* h_seq,
             int64_t T, int64_t N, const LifHyper& p, void* grad_x, void* grad_v0);

// The same backward, recomputing the membrane from the forward's x and v0 (null: the reset value)
// in cache. grad_spikes rows gs_stride apart, x rows x_stride apart. Writes grad_x [T, N] (dtype)
// and, when not null, grad_v0 [N] (state dtype; pass null when v0 is null: no gradient).
void lif_bwd_recompute(DType dtype, const void* grad_spikes, int64_t gs_stride,
                       const void* grad_v_last, const void* x, int64_t x_stride, const void* v0,
                       int64_t T, int64_t N, const LifHyper& p, void* grad_x, void* grad_v0);

// Serial float32 passes over n neurons for a caller already running on a worker thread (the fused
// batch norm + LIF, batch_norm_lif.cpp), with plain stores so the results stay in cache: the same
// step code as lif_fwd / lif_bwd_recompute, so the same bits. The membrane starts at the reset
// value (no v0, no carried gradient). x rows x_stride apart, output rows `stride` apart.
// v_scratch: n floats.
void lif_fwd_f32_serial(const float* x, int64_t x_stride, int64_t T, int64_t n, const LifHyper& p,
                        float* spikes, int64_t stride, float* v_scratch);

// Floats of scratch lif_bwd_recompute_f32_serial needs for T steps (any n).
int64_t lif_bwd_recompute_f32_scratch(int64_t T);

// grad_spikes rows gs_stride apart; writes grad_x, rows `stride` apart (not overlapping x).
void lif_bwd_recompute_f32_serial(const float* grad_spikes, int64_t gs_stride, const float* x, int64_t x_stride,
                                  int64_t T, int64_t n, const LifHyper& p, float* grad_x, int64_t stride,
                                  float* scratch);

}  // namespace tna
