// TRANSITIONAL (native-ternary branch only): the ATen-free part of lif_pack.cpp (the LIF row
// routine that spike_ternary_conv2d_lif runs as its epilogue), copied verbatim with TNA_CHECK for
// TORCH_CHECK, so the native core links while lif_pack.cpp itself is still built into _C_legacy.
// Delete this file (and its line in sources.txt) when the LIF family's native lif_pack.cpp lands:
// the two define the same functions.
#include <algorithm>
#include <cmath>

#include "../core.h"
#include "lif_pack.h"
#include "lif_step.h"

namespace tna {
namespace {

template <bool kDecayInput, bool kSoft>
TNA_MULTIVERSION void lif_pack_rows_impl(const float* __restrict x, int64_t x_step, int64_t rows,
                                         int64_t N, int64_t T, float tau, float v_th,
                                         float v_reset, uint64_t* __restrict out, int64_t out_step,
                                         float* __restrict v) {
  const float vr = kSoft ? 0.0f : v_reset;
  const int64_t NW = (N + 63) / 64;
  for (int64_t r = 0; r < rows; ++r) {
    std::fill_n(v, N, vr);
    for (int64_t t = 0; t < T; ++t) {
      const float* __restrict xr = x + t * x_step + r * N;
      uint64_t* __restrict o = out + t * out_step + r * NW;
      for (int64_t w = 0; w < NW; ++w) {
        const int64_t n0 = 64 * w, n1 = std::min(N, n0 + 64);
        uint64_t bits = 0;
        for (int64_t n = n0; n < n1; ++n) {
          const float h = lif_charge<kDecayInput>(xr[n], v[n], vr, tau);
          const bool fire = h >= v_th;
          v[n] = lif_reset<kSoft>(h, fire, v_th, v_reset);
          bits |= static_cast<uint64_t>(fire) << (n - n0);
        }
        o[w] = bits;
      }
    }
  }
}

}  // namespace

void check_lif_pack_params(const LifPackParams& p) {
  TNA_CHECK(std::isfinite(p.tau) && p.tau > 0, "tau must be a finite number > 0, got ", p.tau);
  TNA_CHECK(std::isfinite(p.v_threshold), "v_threshold must be finite, got ", p.v_threshold);
  TNA_CHECK(std::isfinite(p.v_reset), "v_reset must be finite, got ", p.v_reset);
}

void lif_pack_rows(const float* x, int64_t x_step, int64_t rows, int64_t N, int64_t T,
                   const LifPackParams& p, uint64_t* out, int64_t out_step, float* v) {
  const auto run = [&](auto impl) {
    impl(x, x_step, rows, N, T, p.tau, p.v_threshold, p.v_reset, out, out_step, v);
  };
  if (p.decay_input) {
    p.soft_reset ? run(lif_pack_rows_impl<true, true>) : run(lif_pack_rows_impl<true, false>);
  } else {
    p.soft_reset ? run(lif_pack_rows_impl<false, true>) : run(lif_pack_rows_impl<false, false>);
  }
}

}  // namespace tna
