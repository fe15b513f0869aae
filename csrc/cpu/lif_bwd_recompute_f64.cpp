// The recomputing LIF backward for float64 inputs (entry point: lif_bwd_recompute.cpp).
#include "lif_bwd_recompute_body.h"

namespace tna {

void lif_bwd_recompute_f64(DType dtype, const void* grad_spikes, int64_t gs_stride,
    const void* grad_v_last, const void* x, int64_t x_stride, const void* v0, int64_t T, int64_t N,
    const LifHyper& p, void* grad_x, void* grad_v0) {
  lif_bwd_recompute_as<double>(dtype, grad_spikes, gs_stride, grad_v_last, x, x_stride, v0, T, N, p, grad_x, grad_v0);
}

}  // namespace tna
