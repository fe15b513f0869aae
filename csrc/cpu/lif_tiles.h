// Float32 LIF kernels for AVX2 CPUs, over tiles of 64 neurons (four 64-byte lines of each row): a tile's membrane,
// gradient carry and (backward) T pre-spike membranes stay in registers or on the stack over all T
// steps, and each step stores the tile's part of each output row straight from registers. Included
// by lif.cpp only, which keeps its block kernels for other dtypes, long sequences, outputs whose rows
// are not 32-byte aligned and CPUs without AVX2 (in SSE code a tile's 64 lanes of state spill:
// forward 25 ms, backward 19 ms in the case above).
//
// Why tiles: the block kernels pass every step's values through L1 buffers (membrane, carry,
// recomputed h, results copied out a chunk at a time). Standalone loops on [4, 4194304] float32,
// two threads, min ms: forward 2.6-3.0 -> 2.5-2.6, recompute backward 5.9-6.2 -> 4.6-4.9.
// The cost: a tile reads and writes all T rows at once (2T rows read by the backward: x and the
// spikes' gradient). Rows of a power-of-two length map to the same cache sets and, past a few
// steps, evict each other. Backward on 2^21-neuron rows: T = 6 3.3 vs 4.6 ms, T = 7 4.6 vs 5.3,
// T = 8 6.1 vs 6.1, T = 10 worse. Forward, 2^24 neuron-steps: T = 16 2.4 vs 3.6 ms, T = 24 3.6 vs
// 4.4, T = 32 4.7 vs 4.0.
//
// TNA_LIF_TILES=0 in the environment turns them off (the tests compare the two paths bit for bit).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../core.h"
#include "lanes.h"
#include "lif_step.h"

#if defined(TNA_AVX2_DISPATCH)
#include <immintrin.h>  // declares the AVX builtin used below
#endif

namespace tna {

// Eight 8-lane vectors (64 neurons, 4 lines of each row) per tile: each step is a chain of dependent
// operations (the membrane's divide, the carry's multiply-adds), and eight independent chains keep
// the pipes busy. Recompute backward with L2-resident data, ns per neuron-step on two threads:
// 2 vectors 0.33, 4 vectors 0.26, 8 vectors 0.19, 16 vectors (spilling) 0.21-0.27.
constexpr int kVecs = 8;
constexpr int64_t kTile = 8 * kVecs;
constexpr int64_t kTileFwdMaxT = 16;  // longest sequence the tile forward takes
constexpr int64_t kTileBwdMaxT = 7;   // ... and the tile recompute backward
// The backward prefetches each row's lines one tile ahead (2 and 4 tiles: no better); the forward,
// with half as many rows in flight, gained nothing from it.
constexpr int64_t kTilePrefetch = kTile;
constexpr int64_t kTilePrefetchStep = 16;  // one prefetch per 64-byte line

// Whether lif.cpp may call the tile kernels: an AVX2 CPU, and TNA_LIF_TILES is not "0".
inline bool lif_tiles_enabled() {
#if defined(TNA_AVX2_DISPATCH)
  static const bool enabled = [] {
    const char* env = std::getenv("TNA_LIF_TILES");
    return __builtin_cpu_supports("avx2") && (env == nullptr || std::strcmp(env, "0") != 0);
  }();
  return enabled;
#else
  return false;
#endif
}

#if defined(TNA_AVX2_DISPATCH)

inline __attribute__((always_inline)) f32x8 load8(const float* p) {
  f32x8 r;
  std::memcpy(&r, p, sizeof r);
  return r;
}

// kVecs vectors to dst: non-temporal when `stream` (dst 32-byte aligned), else plain stores.
__attribute__((target("avx2"), always_inline)) inline void store_vecs(float* dst,
                                                                      const f32x8 (&r)[kVecs],
                                                                      bool stream) {
  if (stream) {
    for (int q = 0; q < kVecs; ++q) __builtin_ia32_movntps256(dst + 8 * q, r[q]);
  } else {
    std::memcpy(dst, r, sizeof r);
  }
}

inline __attribute__((always_inline)) void load_vecs(f32x8 (&r)[kVecs], const float* src,
                                                     float fill) {
  for (int q = 0; q < kVecs; ++q) r[q] = src == nullptr ? splat<f32x8>(fill) : load8(src + 8 * q);
}

// Scalar hyper-parameters as lanes.
struct LifLanes {
  f32x8 tau, v_th, vr, v_reset, alpha, inv_tau;
  LifLanes(bool soft, float tau_, float v_th_, float v_reset_, float alpha_)
      : tau(splat<f32x8>(tau_)), v_th(splat<f32x8>(v_th_)),
        vr(splat<f32x8>(soft ? 0.0f : v_reset_)), v_reset(splat<f32x8>(v_reset_)),
        alpha(splat<f32x8>(alpha_)), inv_tau(splat<f32x8>(1.0f / tau_)) {}
};

// n: a multiple of kTile. s, h_out (when kSaveH) and v_out rows 32-byte aligned when `stream`.
template <bool kDecayInput, bool kSoft, bool kSaveH>
__attribute__((target("avx2"))) void lif_fwd_tiles(
    const float* __restrict x, int64_t x_stride, const float* __restrict v0, float v_init,
    float* __restrict s, float* __restrict h_out, float* __restrict v_out, int64_t n, int64_t T,
    int64_t stride, float tau, float v_th, float v_reset, bool stream) {
  const LifLanes p(kSoft, tau, v_th, v_reset, 1.0f);
  const f32x8 one = splat<f32x8>(1), zero = splat<f32x8>(0);
  for (int64_t i = 0; i < n; i += kTile) {
    f32x8 v[kVecs], h[kVecs], spk[kVecs];
    load_vecs(v, v0 == nullptr ? nullptr : v0 + i, v_init);
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = x + t * x_stride + i;
      for (int q = 0; q < kVecs; ++q) {
        h[q] = lif_h<kDecayInput, kSoft>(load8(xt + 8 * q), v[q], p.vr, p.tau, p.v_th, p.v_reset);
        spk[q] = h[q] >= p.v_th ? one : zero;
      }
      store_vecs(s + t * stride + i, spk, stream);
      if constexpr (kSaveH) store_vecs(h_out + t * stride + i, h, stream);
    }
    store_vecs(v_out + i, v, stream);
  }
}

// n: a multiple of kTile, T <= kTileBwdMaxT; gx rows 32-byte aligned when `stream`. gv_last and
// gv_out (the carry's start and end) may be null.
template <Surrogate S, bool kDecayInput, bool kSoft, bool kDetach>
__attribute__((target("avx2"))) void lif_bwd_recompute_tiles(
    const float* __restrict x, int64_t x_stride, const float* __restrict v0, float v_init,
    const float* __restrict gs, int64_t gs_stride, const float* __restrict gv_last,
    float* __restrict gx, float* __restrict gv_out, int64_t n, int64_t T, int64_t stride, float tau,
    float v_th, float v_reset, float alpha, bool stream) {
  const LifLanes p(kSoft, tau, v_th, v_reset, alpha);
  f32x8 h[kTileBwdMaxT][kVecs];
  for (int64_t i = 0; i < n; i += kTile) {
    f32x8 v[kVecs], gv[kVecs], r[kVecs];
    load_vecs(v, v0 == nullptr ? nullptr : v0 + i, v_init);
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = x + t * x_stride + i;
      for (int64_t k = 0; k < kTile; k += kTilePrefetchStep) {
        __builtin_prefetch(xt + k + kTilePrefetch, 0, 3);
      }
      for (int q = 0; q < kVecs; ++q) {
        h[t][q] = lif_h<kDecayInput, kSoft>(load8(xt + 8 * q), v[q], p.vr, p.tau, p.v_th, p.v_reset);
      }
    }
    load_vecs(gv, gv_last == nullptr ? nullptr : gv_last + i, 0.0f);
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* gst = gs + t * gs_stride + i;
      for (int64_t k = 0; k < kTile; k += kTilePrefetchStep) {
        __builtin_prefetch(gst + k + kTilePrefetch, 0, 3);
      }
      for (int q = 0; q < kVecs; ++q) {
        r[q] = lif_grad_x<S, kDecayInput, kSoft, kDetach>(load8(gst + 8 * q), h[t][q], gv[q],
                                                          p.v_th, p.vr, p.alpha, p.inv_tau);
      }
      store_vecs(gx + t * stride + i, r, stream);
    }
    if (gv_out != nullptr) store_vecs(gv_out + i, gv, false);
  }
}

#endif  // TNA_AVX2_DISPATCH

}  // namespace tna
