// Fused multi-step LIF neuron, CPU (SpikingJelly dynamics; tna_kernels/reference.py is the spec).
//
// Forward, per neuron, t = 0..T-1, with vr = v_reset (hard reset) or 0 (soft reset):
//   h[t] = v + (x[t] - (v - vr)) / tau        (decay_input)
//   h[t] = v - (v - vr) / tau + x[t]          (otherwise)
//   s[t] = h[t] >= v_th
//   v    = s[t] ? v_reset : h[t]              (hard)  |  v = s[t] ? h[t] - v_th : h[t]   (soft)
// Backward, t = T-1..0, gv = dL/dv (starts at grad_v_last), sg = surrogate'(h[t] - v_th):
//   dv/dh = (1 - s) + (vr - h) * sg   (hard)  |  1 - v_th * sg   (soft); detach_reset drops sg
//   gh = grad_s[t] * sg + gv * dv/dh;   grad_x[t] = gh / tau (decay_input) or gh;   gv = gh - gh / tau
//   (computed as gh * (1 / tau): one divide fewer per element, within an ulp of the reference)
// Layout: x_seq as T rows of N (read in place when each step is contiguous: tna_kernels/ops/lif.py,
// _time_major);
// parallel over blocks of neurons, the time loop runs inside each block so the membrane stays in
// L1; large outputs are written with non-temporal stores (into the huge-page buffers Python
// allocates: tna_kernels/ops/_native.py, empty_output).
// Float32 on AVX2 CPUs, up to 16 steps forward and 7 backward: the tile kernels of lif_tiles.h
// instead, each neuron's state in registers over all steps (the same step code, so the same bits).
// Backward either reads h_seq saved by the forward (lif_bwd; the compute dtype, float for
// half/bf16) or recomputes it from x_seq and v0 a block at a time into an L1/L2 buffer
// (lif_bwd_recompute, what autograd uses on the CPU): the same charge and reset code in the same
// order, so h and the spikes are the forward's bit for bit.
//
// No torch header: the entry points (lif.h) take raw pointers, sizes, row steps and a dtype code;
// csrc/bindings/lif.cpp exposes them to Python (tna_kernels/ops/lif.py), which allocates outputs.
//
// This unit: the forward entry points and check_lif_hyper; the backward ones are in lif_bwd.cpp and
// lif_bwd_recompute.cpp, the shared loops in lif_blocks.h.
#include "lif_blocks.h"

namespace tna {

void check_lif_hyper(const LifHyper& p) {
  TNA_CHECK(std::isfinite(p.tau) && p.tau > 0, "tau must be a finite number > 0, got ", p.tau);
  TNA_CHECK(std::isfinite(p.v_threshold), "v_threshold must be finite, got ", p.v_threshold);
  TNA_CHECK(std::isfinite(p.v_reset), "v_reset must be finite, got ", p.v_reset);
  TNA_CHECK(std::isfinite(p.alpha) && p.alpha > 0, "alpha must be a finite number > 0, got ",
            p.alpha);
  TNA_CHECK(p.surrogate >= 0 && p.surrogate < kNumLifSurrogates,
            "surrogate must be one of 'atan', 'sigmoid', 'fast_sigmoid', 'triangle', 'rectangle'; "
            "got index ", p.surrogate);
}

void lif_fwd(DType dtype, const void* x, int64_t x_stride, const void* v0, int64_t T, int64_t N,
             const LifHyper& p, void* spikes, void* v_last, void* h_seq) {
  check_sizes(T, N, "x_seq");
  check_lif_hyper(p);
  const bool save_h = h_seq != nullptr;
  const double tau = p.tau, v_threshold = p.v_threshold, v_reset = p.v_reset;
  // Without v0 the membrane starts at the reset value inside each worker's blocks.
  const double v_init = p.soft_reset ? 0.0 : v_reset;

  dispatch_floating(dtype, "x_seq", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* xp = static_cast<const scalar_t*>(x);
    scalar_t* sp = static_cast<scalar_t*>(spikes);
    acc_t* hp = static_cast<acc_t*>(h_seq);
    acc_t* vp = static_cast<acc_t*>(v_last);
    const acc_t* v0p = static_cast<const acc_t*>(v0);
    const bool stream = T * N * int64_t(sizeof(acc_t)) >= kStreamBytes;
    [[maybe_unused]] const bool tiles = use_tiles(dtype, T, kTileFwdMaxT, N, stream, {sp, hp, vp});
    dispatch_bool(p.decay_input, [&](auto kDecay) {
      dispatch_bool(p.soft_reset, [&](auto kSoft) {
        dispatch_bool(save_h, [&](auto kSave) {
          constexpr bool kD = decltype(kDecay)::value, kS = decltype(kSoft)::value,
                         kH = decltype(kSave)::value;
          auto blocks = [&](int64_t begin, int64_t end) {
            for (int64_t b = begin; b < end; b += kBlock) {
              lif_fwd_block<scalar_t, acc_t, kD, kS, kH>(
                  xp + b, x_stride, offset_or_null(v0p, b), acc_t(v_init), sp + b,
                  offset_or_null(hp, b), vp + b, std::min(kBlock, end - b), T, N, acc_t(tau),
                  acc_t(v_threshold), acc_t(v_reset), stream);
            }
          };
#if defined(TNA_AVX2_DISPATCH)
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (tiles) {
              auto tile_range = [&](int64_t b, int64_t e) {
                lif_fwd_tiles<kD, kS, kH>(xp + b, x_stride, offset_or_null(v0p, b), float(v_init),
                                          sp + b, offset_or_null(hp, b), vp + b, e - b, T, N,
                                          float(tau), float(v_threshold), float(v_reset), stream);
              };
              return parallel_tiles(N, tile_range, blocks, stream);
            }
          }
#endif
          parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
            blocks(begin, end);
            fence_streams(stream);
          });
        });
      });
    });
  });
}

// The serial passes dispatch like the entry points (tiles for whole 64-neuron tiles on AVX2,
// the block kernels for the rest), without threads and with plain stores.
// The serial passes dispatch like the entry points above (tiles for whole 64-neuron tiles on AVX2,
// the block kernels for the rest), without threads and with plain stores.
void lif_fwd_f32_serial(const float* x, int64_t x_stride, int64_t T, int64_t n, const LifHyper& p,
                        float* spikes, int64_t stride, float* v_scratch) {
  const float v_init = p.soft_reset ? 0.0f : float(p.v_reset);
  const float tau = float(p.tau), v_th = float(p.v_threshold), v_reset = float(p.v_reset);
  [[maybe_unused]] const bool tiles = use_tiles(DType::kFloat32, T, kTileFwdMaxT, n, false, {});
  dispatch_bool(p.decay_input, [&](auto kDecay) {
    dispatch_bool(p.soft_reset, [&](auto kSoft) {
      constexpr bool kD = decltype(kDecay)::value, kS = decltype(kSoft)::value;
      int64_t b = 0;
#if defined(TNA_AVX2_DISPATCH)
      if (tiles) {
        b = n - n % kTile;
        if (b > 0)
          lif_fwd_tiles<kD, kS, false>(x, x_stride, nullptr, v_init, spikes, nullptr, v_scratch, b, T, stride, tau,
                                       v_th, v_reset, false);
      }
#endif
      for (; b < n; b += kBlock) {
        lif_fwd_block<float, float, kD, kS, false>(x + b, x_stride, nullptr, v_init, spikes + b, nullptr,
                                                   v_scratch + b, std::min(kBlock, n - b), T, stride, tau, v_th,
                                                   v_reset, false);
      }
    });
  });
}

int64_t lif_bwd_recompute_f32_scratch(int64_t T) { return 2 * T * recompute_block(T); }

}  // namespace tna
