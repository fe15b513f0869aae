// The LIF kernels' building blocks (block, recompute and tile loops, dispatch helpers), shared by
// the three translation units of the CPU LIF: lif.cpp (forward), lif_bwd.cpp (backward from a saved
// h_seq) and lif_bwd_recompute.cpp (backward recomputing h). Split so that the build compiles
// them in parallel: one unit with every dtype x surrogate x flag instantiation took ~3 minutes.
// Everything here has internal linkage (one copy per unit that uses it).
#pragma once

#include "lif.h"


#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <type_traits>

#include "../core.h"
#include "fast_exp.h"
#include "lif_step.h"
#include "lif_tiles.h"

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace tna {

// kLifSurrogates (lif.h) names the Surrogate enum (lif_step.h) in order.
static_assert(static_cast<int>(Surrogate::kATan) == 0 && static_cast<int>(Surrogate::kSigmoid) == 1 &&
              static_cast<int>(Surrogate::kFastSigmoid) == 2 &&
              static_cast<int>(Surrogate::kTriangle) == 3 &&
              static_cast<int>(Surrogate::kRectangle) == 4 && kNumLifSurrogates == 5);

namespace {

// Neurons per inner block: short enough that a step's working set (membrane, carry, output buffer,
// the rows in flight and their prefetched successors) stays in the 32 KiB L1. At [4, 4.2M]
// float32, 512 against 1024: forward 0.79-0.88 vs 0.83-0.92x the time of a same-size copy, saved-h
// backward 5.4-6.5 vs 6.3-7.5 ms, recompute backward (two h buffers more) 1.44-1.71 vs 1.66-2.09x.
constexpr int64_t kBlock = 512;
constexpr int64_t kGrain = 4096;
// Results are computed into an L1 buffer and copied out a chunk at a time (with non-temporal
// stores when streaming), between the arithmetic: a whole 4 KiB row in one burst stalls on the
// write-combining buffers. On [4, 4.2M] float32, 1024-neuron blocks: forward 4.2-4.7 -> 3.4-3.9
// ms, saved-h backward 6.6-6.8 -> 5.6-6.2 ms; the recompute backward, longer arithmetic per
// element, is unchanged.
// (A standalone C++ loop storing its spikes straight from registers runs near the speed of a
// non-temporal copy of the same bytes, 1.8-2.7 vs 1.6-2.1 ms: the forward is not at its floor.)
constexpr int64_t kChunkBytes = 512;
// Outputs larger than this bypass the caches (non-temporal stores): they cannot stay cached anyway,
// and streaming saves the read-for-ownership of every written line (~1.6x less traffic here).
constexpr int64_t kStreamBytes = int64_t(8) << 20;
// The recompute backward holds h for T steps of a block: blocks shrink with T to keep that buffer
// within 64 KiB (L2), down to 64 neurons.
constexpr int64_t kRecomputeFloats = 16384;
inline int64_t recompute_block(int64_t T) {
  return std::clamp<int64_t>(kRecomputeFloats / T, 64, kBlock);
}

// Copies n elements computed into an L1 buffer to their destination, with non-temporal stores
// when `stream` (x86-64 SSE2, present on every x86-64 CPU), else plain stores.
template <typename T>
inline void store_out(T* __restrict dst, const T* __restrict src, int64_t n, bool stream) {
#if defined(__x86_64__)
  if (stream) {
    auto* d = reinterpret_cast<char*>(dst);
    const auto* s = reinterpret_cast<const char*>(src);
    int64_t bytes = n * int64_t(sizeof(T));
    const int64_t head = std::min<int64_t>(bytes, (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16);
    std::memcpy(d, s, head);
    int64_t i = head;
    for (; i + 16 <= bytes; i += 16) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i),
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    }
    std::memcpy(d + i, s + i, bytes - i);
    return;
  }
#endif
  std::memcpy(dst, src, n * sizeof(T));
}

// Software stream a step ahead for the backward loops: a block's rows are short runs (2 KiB at
// 512 float32 neurons) far apart ([T, N], N in the millions), and the hardware prefetchers restart on
// each; a backward step's arithmetic is long enough to hide the next step's loads, so each line
// of a row prefetches the same line of the rows the next step reads (standalone at T = 4 on a
// CIFAR activation, 1024-neuron blocks: recompute backward 9.1-9.4 -> 6.7-6.9 ms, saved-h
// backward 7.3 -> 5.8-6.1).
// The forward, a few instructions per element, gained nothing from it at any distance.
// Callers pass rows valid over the whole loop (their current row where no next one is long
// enough), so there is no bounds check per line: that branch cost ~7 % of the in-cache arithmetic.
template <typename T>
inline __attribute__((always_inline)) void prefetch_next(const T* row, int64_t i) {
  __builtin_prefetch(row + i, 0, 3);
}

// The membrane runs in an L1 buffer from v0 (or v_init when null) and is stored to v_out once.
template <typename scalar_t, typename acc_t, bool kDecayInput, bool kSoft, bool kSaveH>
TNA_MULTIVERSION void lif_fwd_block(const scalar_t* __restrict x, int64_t x_stride,
                                    const acc_t* __restrict v0, acc_t v_init,
                                    scalar_t* __restrict s, acc_t* __restrict h_out,
                                    acc_t* __restrict v_out, int64_t n, int64_t T, int64_t stride,
                                    acc_t tau, acc_t v_th,
                                    acc_t v_reset, bool stream) {
  constexpr int64_t kChunk = kChunkBytes / int64_t(sizeof(scalar_t));
  const acc_t vr = kSoft ? acc_t(0) : v_reset;
  alignas(64) acc_t v[kBlock];
  alignas(64) scalar_t s_buf[kBlock];
  alignas(64) acc_t h_buf[kBlock];
  for (int64_t i = 0; i < n; ++i) v[i] = v0 == nullptr ? v_init : v0[i];
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* __restrict xt = x + t * x_stride;
    for (int64_t c = 0; c < n; c += kChunk) {
      const int64_t e = std::min(n, c + kChunk);
      #pragma GCC ivdep  // distinct buffers: no run-time alias checks per chunk
      for (int64_t i = c; i < e; ++i) {
        const acc_t xi = static_cast<acc_t>(xt[i]);
        const acc_t vi = v[i];
        const acc_t h = lif_charge<kDecayInput>(xi, vi, vr, tau);
        const bool fire = h >= v_th;
        s_buf[i] = static_cast<scalar_t>(fire ? acc_t(1) : acc_t(0));
        h_buf[i] = h;
        v[i] = lif_reset<kSoft>(h, fire, v_th, v_reset);
      }
      store_out(s + t * stride + c, s_buf + c, e - c, stream);
      if constexpr (kSaveH) store_out(h_out + t * stride + c, h_buf + c, e - c, stream);
    }
  }
  store_out(v_out, v, n, stream);
}

template <typename scalar_t, typename acc_t, Surrogate S, bool kDecayInput, bool kSoft,
          bool kDetach>
TNA_MULTIVERSION void lif_bwd_block(const scalar_t* __restrict gs, const acc_t* __restrict h,
                                    scalar_t* __restrict gx, acc_t* __restrict gv, int64_t n,
                                    int64_t next_n, int64_t T, int64_t stride, acc_t tau,
                                    acc_t v_th, acc_t v_reset, acc_t alpha, bool stream) {
  constexpr int64_t kLine = 64 / int64_t(sizeof(scalar_t));
  constexpr int64_t kChunk = kChunkBytes / int64_t(sizeof(scalar_t));
  const acc_t vr = kSoft ? acc_t(0) : v_reset;
  const acc_t inv_tau = acc_t(1) / tau;  // gradients need not round like the reference: no divide
  alignas(64) scalar_t gx_buf[kBlock];
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* __restrict gst = gs + t * stride;
    const acc_t* __restrict ht = h + t * stride;
    // next step: rows t-1, or after t = 0 rows T-1 of the worker's next block (if not shorter)
    const bool next_block = t == 0 && next_n >= n;
    const scalar_t* pf_gs = t > 0 ? gst - stride : next_block ? gs + (T - 1) * stride + n : gst;
    const acc_t* pf_h = t > 0 ? ht - stride : next_block ? h + (T - 1) * stride + n : ht;
    for (int64_t c = 0; c < n; c += kChunk) {
      const int64_t e = std::min(n, c + kChunk);
      int64_t i = c;
      for (; i + kLine <= e; i += kLine) {
        prefetch_next(pf_gs, i);
        for (int64_t u = i; u < i + kLine; u += 64 / int64_t(sizeof(acc_t))) prefetch_next(pf_h, u);
        #pragma GCC ivdep  // distinct buffers; without it GCC re-checks aliasing every line
        for (int64_t u = i; u < i + kLine; ++u) {
          gx_buf[u] = static_cast<scalar_t>(lif_grad_x<S, kDecayInput, kSoft, kDetach>(
              static_cast<acc_t>(gst[u]), ht[u], gv[u], v_th, vr, alpha, inv_tau));
        }
      }
      for (; i < e; ++i) {
        gx_buf[i] = static_cast<scalar_t>(lif_grad_x<S, kDecayInput, kSoft, kDetach>(
            static_cast<acc_t>(gst[i]), ht[i], gv[i], v_th, vr, alpha, inv_tau));
      }
      store_out(gx + t * stride + c, gx_buf + c, e - c, stream);
    }
  }
}

// Recompute variant over a worker's n neurons, block by block: a forward pass refills the membrane
// buffer (the forward's lif_charge / lif_reset, in the same order, so h is the forward's bit for
// bit) and the backward pass reads it instead of a saved h_seq. The forward of block j+1 runs in the
// backward loop of block j (its step k beside their step T-1-k): each loop then streams x,
// grad_spikes and grad_x together instead of reading x alone and then the rest (measured ~10 %).
// scratch holds two [T, nb] buffers; gv_last / gv_out (nullable) are the carry's start and end.
template <typename scalar_t, typename acc_t, Surrogate S, bool kDecayInput, bool kSoft,
          bool kDetach>
TNA_MULTIVERSION void lif_bwd_recompute_range(const scalar_t* __restrict x, int64_t x_stride,
                                              const acc_t* __restrict v0, acc_t v_init,
                                              const scalar_t* __restrict gs, int64_t gs_stride,
                                              const acc_t* __restrict gv_last,
                                              scalar_t* __restrict gx, acc_t* __restrict gv_out,
                                              acc_t* __restrict scratch, int64_t n_total,
                                              int64_t nb, int64_t T, int64_t stride, acc_t tau,
                                              acc_t v_th, acc_t v_reset, acc_t alpha, bool stream) {
  constexpr int64_t kLine = 64 / int64_t(sizeof(scalar_t));
  constexpr int64_t kChunk = kChunkBytes / int64_t(sizeof(scalar_t));
  const acc_t vr = kSoft ? acc_t(0) : v_reset;
  const acc_t inv_tau = acc_t(1) / tau;  // gradients need not round like the reference: no divide
  alignas(64) acc_t v[kBlock];
  alignas(64) acc_t gv_local[kBlock];
  alignas(64) scalar_t gx_buf[kBlock];
  acc_t* cur = scratch;
  acc_t* nxt = scratch + T * nb;
  int64_t b = 0, n = std::min(nb, n_total);
  for (int64_t i = 0; i < n; ++i) v[i] = v0 == nullptr ? v_init : v0[i];
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* __restrict xt = x + t * x_stride;
    acc_t* __restrict ht = cur + t * n;
    for (int64_t i = 0; i < n; ++i) {
      ht[i] = lif_h<kDecayInput, kSoft>(static_cast<acc_t>(xt[i]), v[i], vr, tau, v_th, v_reset);
    }
  }
  while (n > 0) {
    const int64_t b2 = b + n, n2 = std::min(nb, n_total - b2);  // the next block (n2 <= 0: none)
    const int64_t m = std::min(n, n2);
    acc_t* __restrict gv = gv_out == nullptr ? gv_local : gv_out + b;
    for (int64_t i = 0; i < n; ++i) gv[i] = gv_last == nullptr ? acc_t(0) : gv_last[b + i];
    for (int64_t i = 0; i < n2; ++i) v[i] = v0 == nullptr ? v_init : v0[b2 + i];
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = T - 1 - k;
      const scalar_t* __restrict gst = gs + t * gs_stride + b;
      const acc_t* __restrict ht = cur + t * n;
      const scalar_t* __restrict xn = x + k * x_stride + b2;
      acc_t* __restrict hn = nxt + k * std::max<int64_t>(n2, 0);
      // What the next step reads: grad row t-1 of this block and x row k+1 of the next one, or,
      // after the last step, grad row T-1 of the next block and x row 0 of the one after (if that
      // one is at least m long). The loop below runs over i < m = min(n, n2).
      const int64_t b3 = b2 + std::max<int64_t>(n2, 0);
      const scalar_t* pf_gs = t > 0 ? gst - gs_stride : gs + (T - 1) * gs_stride + b2;
      const scalar_t* pf_x = k + 1 < T ? xn + x_stride : std::min(nb, n_total - b3) >= m ? x + b3 : xn;
      // both blocks a cache line at a time (prefetch_next), stored a chunk at a time, then
      // whichever block is longer alone
      scalar_t* __restrict gxt = gx + t * stride + b;
      for (int64_t c = 0; c < m; c += kChunk) {
        const int64_t e = std::min(m, c + kChunk);
        int64_t i = c;
        for (; i + kLine <= e; i += kLine) {
          prefetch_next(pf_gs, i);
          prefetch_next(pf_x, i);
          #pragma GCC ivdep  // distinct buffers; without it GCC re-checks aliasing every line
          for (int64_t u = i; u < i + kLine; ++u) {
            hn[u] = lif_h<kDecayInput, kSoft>(static_cast<acc_t>(xn[u]), v[u], vr, tau, v_th, v_reset);
            gx_buf[u] = static_cast<scalar_t>(lif_grad_x<S, kDecayInput, kSoft, kDetach>(
                static_cast<acc_t>(gst[u]), ht[u], gv[u], v_th, vr, alpha, inv_tau));
          }
        }
        for (; i < e; ++i) {
          hn[i] = lif_h<kDecayInput, kSoft>(static_cast<acc_t>(xn[i]), v[i], vr, tau, v_th, v_reset);
          gx_buf[i] = static_cast<scalar_t>(lif_grad_x<S, kDecayInput, kSoft, kDetach>(
              static_cast<acc_t>(gst[i]), ht[i], gv[i], v_th, vr, alpha, inv_tau));
        }
        store_out(gxt + c, gx_buf + c, e - c, stream);
      }
      const int64_t i = std::max<int64_t>(m, 0);
      for (int64_t j = i; j < n; ++j) {
        gx_buf[j] = static_cast<scalar_t>(lif_grad_x<S, kDecayInput, kSoft, kDetach>(
            static_cast<acc_t>(gst[j]), ht[j], gv[j], v_th, vr, alpha, inv_tau));
      }
      for (int64_t j = i; j < n2; ++j) {
        hn[j] = lif_h<kDecayInput, kSoft>(static_cast<acc_t>(xn[j]), v[j], vr, tau, v_th, v_reset);
      }
      if (n > i) store_out(gxt + i, gx_buf + i, n - i, stream);
    }
    std::swap(cur, nxt);
    b = b2;
    n = n2;
  }
}

// Non-temporal stores are weakly ordered: fence before the worker hands its block back.
inline void fence_streams(bool stream) {
#if defined(__x86_64__)
  if (stream) _mm_sfence();
#endif
}

template <typename F>
void dispatch_bool(bool value, F&& f) {
  if (value) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

template <typename F>
void dispatch_surrogate(Surrogate s, F&& f) {
  switch (s) {
    case Surrogate::kATan: return f(std::integral_constant<Surrogate, Surrogate::kATan>{});
    case Surrogate::kSigmoid: return f(std::integral_constant<Surrogate, Surrogate::kSigmoid>{});
    case Surrogate::kFastSigmoid:
      return f(std::integral_constant<Surrogate, Surrogate::kFastSigmoid>{});
    case Surrogate::kTriangle: return f(std::integral_constant<Surrogate, Surrogate::kTriangle>{});
    case Surrogate::kRectangle:
      return f(std::integral_constant<Surrogate, Surrogate::kRectangle>{});
  }
}

template <typename T>
inline T* offset_or_null(T* p, int64_t k) {
  return p == nullptr ? nullptr : p + k;
}

// The tile kernels (lif_tiles.h, AVX2 CPUs) take float32 sequences up to max_T steps; when they
// stream, every output row must start 32-byte aligned (rows of N floats from aligned buffers:
// N % 8 == 0).
inline bool use_tiles(DType dtype, int64_t T, int64_t max_T, int64_t N, bool stream,
               std::initializer_list<const void*> outputs) {
  if (!lif_tiles_enabled() || dtype != DType::kFloat32 || T > max_T) return false;
  if (!stream) return true;
  if (N % 8 != 0) return false;
  return std::all_of(outputs.begin(), outputs.end(),
                     [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 32 == 0; });
}

// Workers take whole tiles: tiles(b, e) runs the tile kernel on [b, e), and the last worker runs
// tail(b, N) on the N % kTile neurons left over.
template <typename Tiles, typename Tail>
void parallel_tiles(int64_t N, const Tiles& tiles, const Tail& tail, bool stream) {
  const int64_t n_tiles = N / kTile;
  parallel_for(0, n_tiles + (N % kTile != 0), kGrain / kTile, [&](int64_t tb, int64_t te) {
    const int64_t e = std::min(te, n_tiles) * kTile;
    if (e > tb * kTile) tiles(tb * kTile, e);
    if (te > n_tiles) tail(n_tiles * kTile, N);
    fence_streams(stream);
  });
}

inline void check_sizes(int64_t T, int64_t N, const char* name) {
  TNA_CHECK(T >= 1, name, " must be [T, ...] with at least one time step, got T = ", T);
  TNA_CHECK(N >= 0, name, " must have N >= 0 neurons per step, got ", N);
}

}  // namespace

}  // namespace tna
