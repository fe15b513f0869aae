// Fused multi-step LIF backward that recomputes h from x_seq and v0 a block at a time (what autograd
// uses on the CPU; dynamics: lif.cpp's header).
#include "lif_bwd_recompute_body.h"

namespace tna {

void lif_bwd_recompute(DType dtype, const void* grad_spikes, int64_t gs_stride,
                       const void* grad_v_last, const void* x, int64_t x_stride, const void* v0,
                       int64_t T, int64_t N, const LifHyper& p, void* grad_x, void* grad_v0) {
  check_sizes(T, N, "x_seq");
  check_lif_hyper(p);
  // float32 here (tiles, serial pass); each other dtype in its own unit, compiled in parallel
  switch (dtype) {
    case DType::kFloat32: return lif_bwd_recompute_as<float>(dtype, grad_spikes, gs_stride, grad_v_last, x, x_stride, v0,
                                            T, N, p, grad_x, grad_v0);
    case DType::kFloat64: return lif_bwd_recompute_f64(dtype, grad_spikes, gs_stride, grad_v_last, x, x_stride, v0,
                                            T, N, p, grad_x, grad_v0);
    case DType::kFloat16: return lif_bwd_recompute_f16(dtype, grad_spikes, gs_stride, grad_v_last, x, x_stride, v0,
                                            T, N, p, grad_x, grad_v0);
    case DType::kBFloat16: return lif_bwd_recompute_bf16(dtype, grad_spikes, gs_stride, grad_v_last, x, x_stride, v0,
                                            T, N, p, grad_x, grad_v0);
    default:
      fail("x_seq must be a floating-point tensor (float32, float64, float16, bfloat16), got ", dtype_name(dtype));
  }
}

// The serial passes dispatch like the entry points (tiles for whole 64-neuron tiles on AVX2,
// the block kernels for the rest), without threads and with plain stores.
void lif_bwd_recompute_f32_serial(const float* grad_spikes, int64_t gs_stride, const float* x, int64_t x_stride,
                                  int64_t T, int64_t n, const LifHyper& p, float* grad_x, int64_t stride,
                                  float* scratch) {
  const float v_init = p.soft_reset ? 0.0f : float(p.v_reset);
  const float tau = float(p.tau), v_th = float(p.v_threshold), v_reset = float(p.v_reset),
              alpha = float(p.alpha);
  [[maybe_unused]] const bool tiles = use_tiles(DType::kFloat32, T, kTileBwdMaxT, n, false, {});
  dispatch_surrogate(static_cast<Surrogate>(p.surrogate), [&](auto kSur) {
    dispatch_bool(p.decay_input, [&](auto kDecay) {
      dispatch_bool(p.soft_reset, [&](auto kSoft) {
        dispatch_bool(p.detach_reset, [&](auto kDetach) {
          constexpr Surrogate kS = decltype(kSur)::value;
          constexpr bool kD = decltype(kDecay)::value, kR = decltype(kSoft)::value,
                         kDt = decltype(kDetach)::value;
          int64_t b = 0;
#if defined(TNA_AVX2_DISPATCH)
          if (tiles) {
            b = n - n % kTile;
            if (b > 0)
              lif_bwd_recompute_tiles<kS, kD, kR, kDt>(x, x_stride, nullptr, v_init, grad_spikes, gs_stride, nullptr,
                                                       grad_x, nullptr, b, T, stride, tau, v_th, v_reset, alpha,
                                                       false);
          }
#endif
          if (b < n)
            lif_bwd_recompute_range<float, float, kS, kD, kR, kDt>(
                x + b, x_stride, nullptr, v_init, grad_spikes + b, gs_stride, nullptr, grad_x + b, nullptr, scratch,
                n - b, std::min(n - b, recompute_block(T)), T, stride, tau, v_th, v_reset, alpha, false);
        });
      });
    });
  });
}

}  // namespace tna
