// Training kernels of spike-input layers on the native core (spike_train.cpp): the weight gradient
// of a conv2d / linear whose input is 0/1 spikes, read from the bit-packed spikes the forward saved.
// tna_kernels/ops/spike_train.py checks the tensors, lays grad_y out channels-last and calls these.
#pragma once
#include <cstdint>

#include "../core.h"

namespace tna {

struct ConvGeometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// grad_w [N, C, kh, kw] float32 (written whole) of y = conv2d(x, w) with x the 0/1 spikes
// [B, C, H, W] held as bits [B, H, W, CW] (pack_spikes along channels, CW = ceil(C/64)) and
// grad_y [B, N, OH, OW] float32 (strides below):
//   grad_w[n, c, r, s] = sum over b, oh, ow of grad_y[b, oh, ow, n] * x[b, c, oh*sh - ph + r*dh, ow*sw - pw + s*dw].
// Event-driven: each set bit adds grad_y rows (N floats, vectorised) for the taps it reaches, so
// the work is proportional to the number of spikes; zeros cost nothing. A linear layer is the
// case H = W = OH = OW = kh = kw = 1. Each channel's sums run on one thread in sample order, so the
// result does not depend on the thread count. The instruction set is the popcount kernels'
// (ternary::select_isa, so TNA_TERNARY_ISA forces it too).
// grad_y's element (b, n, oh, ow) is at grad_y[b * sb + n * sn + (oh * OW + ow) * sp]: channels-last
// (sn = 1, sp = N) is read in place; any other layout (e.g. NCHW: sp = 1, sn = OH*OW) is transposed
// tile by tile into a per-thread buffer (no full copy).
void spike_conv2d_grad_weight(const float* grad_y, int64_t sb, int64_t sn, int64_t sp, const uint64_t* bits,
                              float* grad_w, int64_t B, int64_t C, int64_t H, int64_t W, int64_t N, int64_t OH,
                              int64_t OW, const ConvGeometry& g);

}  // namespace tna
