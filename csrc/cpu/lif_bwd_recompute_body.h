// The body of the recomputing LIF backward for one input dtype, shared by the two units that
// instantiate it: lif_bwd_recompute.cpp (float32, with the AVX2 tile kernels and the serial pass)
// and one unit per other dtype (lif_bwd_recompute_f64.cpp, _f16.cpp, _bf16.cpp). Split for build
// time: the four dtypes x five surrogates x eight flag combinations in one unit took most of it.
#pragma once

#include "lif_blocks.h"

namespace tna {

// one unit per dtype besides float32 (lif_bwd_recompute_<dtype>.cpp), compiled in parallel
void lif_bwd_recompute_f64(DType dtype, const void* grad_spikes, int64_t gs_stride,
    const void* grad_v_last, const void* x, int64_t x_stride, const void* v0, int64_t T, int64_t N,
    const LifHyper& p, void* grad_x, void* grad_v0);
void lif_bwd_recompute_f16(DType dtype, const void* grad_spikes, int64_t gs_stride,
    const void* grad_v_last, const void* x, int64_t x_stride, const void* v0, int64_t T, int64_t N,
    const LifHyper& p, void* grad_x, void* grad_v0);
void lif_bwd_recompute_bf16(DType dtype, const void* grad_spikes, int64_t gs_stride,
    const void* grad_v_last, const void* x, int64_t x_stride, const void* v0, int64_t T, int64_t N,
    const LifHyper& p, void* grad_x, void* grad_v0);

namespace {

template <typename scalar_t>
void lif_bwd_recompute_as(DType dtype, const void* grad_spikes, int64_t gs_stride,
                          const void* grad_v_last, const void* x, int64_t x_stride, const void* v0,
                          int64_t T, int64_t N, const LifHyper& p, void* grad_x, void* grad_v0) {
  const Surrogate sur = static_cast<Surrogate>(p.surrogate);
  const double tau = p.tau, v_threshold = p.v_threshold, v_reset = p.v_reset, alpha = p.alpha;
  const int64_t nb = recompute_block(T);
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* xp = static_cast<const scalar_t*>(x);
  const acc_t* v0p = static_cast<const acc_t*>(v0);
  const acc_t* gvlp = static_cast<const acc_t*>(grad_v_last);
  const scalar_t* gsp = static_cast<const scalar_t*>(grad_spikes);
  scalar_t* gxp = static_cast<scalar_t*>(grad_x);
  acc_t* gvp = static_cast<acc_t*>(grad_v0);
  const acc_t v_init = acc_t(p.soft_reset ? 0.0 : v_reset);
  const bool stream = T * N * int64_t(sizeof(acc_t)) >= kStreamBytes;
  [[maybe_unused]] const bool tiles = use_tiles(dtype, T, kTileBwdMaxT, N, stream, {gxp});
  dispatch_surrogate(sur, [&](auto kSur) {
    dispatch_bool(p.decay_input, [&](auto kDecay) {
      dispatch_bool(p.soft_reset, [&](auto kSoft) {
        dispatch_bool(p.detach_reset, [&](auto kDetach) {
          constexpr Surrogate kS = decltype(kSur)::value;
          constexpr bool kD = decltype(kDecay)::value, kR = decltype(kSoft)::value,
                         kDt = decltype(kDetach)::value;
          // neurons [begin, end) with blocks of nb (one block when called on a tile kernel's tail)
          auto blocks = [&](int64_t begin, int64_t end, int64_t nb) {
            std::unique_ptr<acc_t[]> scratch(new acc_t[2 * T * nb]);
            lif_bwd_recompute_range<scalar_t, acc_t, kS, kD, kR, kDt>(
                xp + begin, x_stride, offset_or_null(v0p, begin), v_init, gsp + begin, gs_stride,
                offset_or_null(gvlp, begin), gxp + begin, offset_or_null(gvp, begin),
                scratch.get(), end - begin, nb, T, N, acc_t(tau), acc_t(v_threshold),
                acc_t(v_reset), acc_t(alpha), stream);
          };
#if defined(TNA_AVX2_DISPATCH)
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (tiles) {
              auto tile_range = [&](int64_t b, int64_t e) {
                lif_bwd_recompute_tiles<kS, kD, kR, kDt>(
                    xp + b, x_stride, offset_or_null(v0p, b), v_init, gsp + b, gs_stride,
                    offset_or_null(gvlp, b), gxp + b, offset_or_null(gvp, b), e - b, T, N,
                    float(tau), float(v_threshold), float(v_reset), float(alpha), stream);
              };
              auto tail = [&](int64_t b, int64_t e) { blocks(b, e, kTile); };
              return parallel_tiles(N, tile_range, tail, stream);
            }
          }
#endif
          parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
            blocks(begin, end, nb);
            fence_streams(stream);
          });
        });
      });
    });
  });
}

}  // namespace
}  // namespace tna
