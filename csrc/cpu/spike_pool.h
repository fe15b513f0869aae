// Max-pooling of 0/1 spikes on the native core (spike_pool.cpp): raw pointers, sizes, a dtype code.
// tna_kernels/ops/spike_pool.py packs the input with tna::pack_spikes, allocates the outputs and
// calls these.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "../core.h"

namespace tna {

struct PoolGeometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// Checks kernel_size (>= 1), stride (>= 1), padding (>= 0, at most half the kernel) and dilation
// (>= 1), each a pair, with errors naming the argument.
PoolGeometry pool_geometry(const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                           const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation);

// (OH, OW) of max_pool2d on x of shape [N, C, H, W] (torch's pooling_output_shape), after checking
// the shape and the geometry; fails when the input is too small for one window.
std::pair<int64_t, int64_t> pool_output_size(const std::vector<int64_t>& x_shape,
                                             const std::vector<int64_t>& kernel,
                                             const std::vector<int64_t>& stride,
                                             const std::vector<int64_t>& padding,
                                             const std::vector<int64_t>& dilation, bool ceil_mode);

// y [N, C, OH, OW] = max_pool2d(x [N, C, H, W]), both contiguous in `dtype` (floating); the first
// maximum of each window wins, as in torch.
void spike_max_pool2d(DType dtype, const void* x, void* y, int64_t N, int64_t C, int64_t H, int64_t W,
                      const PoolGeometry& g, bool ceil_mode);

// grad_x [N, C, H, W] (written whole) from grad_y [N, C, OH, OW] (contiguous, `dtype`) and the
// input's spikes packed per sample, bits [N, ceil(C*H*W/64)] (pack_spikes' layout): each output's
// gradient goes to its window's first spike, or to the window's first element when it has none.
void spike_max_pool2d_backward(DType dtype, const void* grad_y, const uint64_t* bits, void* grad_x,
                               int64_t N, int64_t C, int64_t H, int64_t W, const PoolGeometry& g,
                               bool ceil_mode);

// The spiking VGG's pools (2x2 windows, stride 2, no padding, even H and W). Forward on
// channels-last spikes: x and y in channels-last memory ([N, H, W, C], [N, OH, OW, C]).
void spike_max_pool2d_2x2_cl(DType dtype, const void* x, void* y, int64_t N, int64_t C, int64_t H, int64_t W);

// Backward of either 2x2 forward, same routing as spike_max_pool2d_backward; grad_y element
// (n, c, oh, ow) at grad_y[n*gsn + c*gsc + oh*gsh + ow*gsw] (any layout, read in place).
// channels_last: bits [N, H, W, CW] (CW = ceil(C / 64): pack_spikes along channels, the channels-last
// forward's) and grad_x [N, H, W, C] in memory; else bits [N, ceil(C*H*W/64)] and grad_x NCHW.
// grad_x is written whole.
void spike_max_pool2d_2x2_backward(DType dtype, const void* grad_y, int64_t gsn, int64_t gsc, int64_t gsh,
                                   int64_t gsw, const uint64_t* bits, void* grad_x, int64_t N, int64_t C, int64_t H,
                                   int64_t W, bool channels_last);

}  // namespace tna
