// Fused multi-step LIF backward from the h_seq the forward saved (dynamics: lif.cpp's header).
#include "lif_blocks.h"

namespace tna {

void lif_bwd(DType dtype, const void* grad_spikes, const void* grad_v_last, const void* h_seq,
             int64_t T, int64_t N, const LifHyper& p, void* grad_x, void* grad_v0) {
  check_sizes(T, N, "h_seq");
  check_lif_hyper(p);
  const Surrogate sur = static_cast<Surrogate>(p.surrogate);
  const double tau = p.tau, v_threshold = p.v_threshold, v_reset = p.v_reset, alpha = p.alpha;

  dispatch_floating(dtype, "grad_spikes", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* gsp = static_cast<const scalar_t*>(grad_spikes);
    const acc_t* hp = static_cast<const acc_t*>(h_seq);
    const acc_t* gvlp = static_cast<const acc_t*>(grad_v_last);
    scalar_t* gxp = static_cast<scalar_t*>(grad_x);
    acc_t* gvp = static_cast<acc_t*>(grad_v0);
    const bool stream = T * N * int64_t(sizeof(acc_t)) >= kStreamBytes;
    dispatch_surrogate(sur, [&](auto kSur) {
      dispatch_bool(p.decay_input, [&](auto kDecay) {
        dispatch_bool(p.soft_reset, [&](auto kSoft) {
          dispatch_bool(p.detach_reset, [&](auto kDetach) {
            parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
              for (int64_t b = begin; b < end; b += kBlock) {
                // the carry starts at grad_v_last (zero when null), a block at a time in place
                const int64_t n = std::min(kBlock, end - b);
                if (gvlp == nullptr) {
                  std::fill_n(gvp + b, n, acc_t(0));
                } else {
                  std::copy_n(gvlp + b, n, gvp + b);
                }
                lif_bwd_block<scalar_t, acc_t, decltype(kSur)::value, decltype(kDecay)::value,
                              decltype(kSoft)::value, decltype(kDetach)::value>(
                    gsp + b, hp + b, gxp + b, gvp + b, n,
                    std::clamp<int64_t>(end - b - kBlock, 0, kBlock), T, N,
                    acc_t(tau), acc_t(v_threshold), acc_t(v_reset), acc_t(alpha), stream);
              }
              fence_streams(stream);
            });
          });
        });
      });
    });
  });
}

}  // namespace tna
