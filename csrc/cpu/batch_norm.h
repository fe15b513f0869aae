// Batch norm with batch statistics (training) on the native core (batch_norm.cpp): raw pointers and
// sizes. tna_kernels/ops/batch_norm.py checks the tensors, allocates the outputs and calls these;
// tna_kernels/nn/bn_lif.py runs them in the fused BN + LIF layer.
//
// x is a contiguous float32 [N, C, S] (S = H*W; 1 for a [N, C] input), or with channels_last a
// [N, C, H, W] tensor in channels-last memory ([N, S, C]); y has x's layout. The forward reproduces
// torch.native_batch_norm's CPU arithmetic for that layout bit for bit, so the spikes downstream are
// those of nn.BatchNorm: per channel, a float64 sum of x in (n, s) order -> mean = float32(sum / M)
// (M = N*S); a float64 sum of the float32 squares (x - mean)^2 in the same order -> var_sum
// (float32); invstd = float32(1 / sqrt(float32(var_sum / M) + eps)) in float64; a = invstd * weight,
// then with `fused` (torch's AVX2 / AVX-512 kernels) b = fma(-mean, a, bias), y = fma(x, a, b), or
// without (torch's portable kernel) b = bias - mean * a, y = x * a + b, each product rounded.
// tna_kernels/ops/batch_norm.py finds which one the torch at hand uses by running both on a probe.
// Running statistics, when given, are updated as torch does in float32:
//   running_mean = momentum * mean + (1 - momentum) * running_mean,
//   running_var = fma(momentum, var_sum / (M - 1), (1 - momentum) * running_var).
// torch runs each channel's sums as one sequential chain; here many channels' chains run side by
// side (same order within each): see batch_norm.cpp.
#pragma once
#include <cstdint>

#include "../core.h"
#include "lif.h"

namespace tna {

// y, mean [C], invstd [C] from x (M = N*S >= 2); weight / bias may be null (1 / 0), running_mean /
// running_var too (not updated); y null: the statistics only.
void batch_norm_forward(const float* x, const float* weight, const float* bias, float* running_mean,
                        float* running_var, float* y, float* mean, float* invstd, int64_t N, int64_t C,
                        int64_t S, double momentum, double eps, bool fused, bool channels_last);

// y = fma(x, a, b) with the forward's a, b from given mean / invstd (the forward's output again,
// without the statistics pass: the fused layer's backward recomputes it this way).
void batch_norm_apply(const float* x, const float* mean, const float* invstd, const float* weight,
                      const float* bias, float* y, int64_t N, int64_t C, int64_t S, bool fused,
                      bool channels_last);

// Gradients of the training forward for channels-last x and grad_y ([N, S, C] memory):
// per channel sum_dy = sum(grad_y), dotp = sum((x - mean) * grad_y) (float32 over each chunk of 256
// positions, the chunks' sums added in order in float64),
// grad_x = (grad_y - sum_dy / M - (x - mean) * dotp * invstd^2 / M) * invstd * weight (channels-last;
// may be grad_y itself), grad_weight = dotp * invstd, grad_bias = sum_dy; any output may be null.
// The formula of torch's batch-norm backward, summed in another order (float tolerance); chunks are
// fixed, so the result does not depend on the thread count.
void batch_norm_backward_cl(const float* grad_y, const float* x, const float* mean, const float* invstd,
                            const float* weight, float* grad_x, float* grad_weight, float* grad_bias, int64_t N,
                            int64_t C, int64_t S);

// Batch norm + LIF fused (batch_norm_lif.cpp), for a channels-last x [N = T*B, C, H, W] ([N, S, C]
// memory, sample t*B + b at step t) and the LIF over the T steps of each of the B*S*C neurons
// (membrane from the reset value). Forward: mean, invstd and the running statistics as
// batch_norm_forward, and spikes [T, B*S*C] (x's memory order) as lif_fwd on its output.
void batch_norm_lif_forward_cl(const float* x, const float* weight, const float* bias, float* running_mean,
                               float* running_var, float* mean, float* invstd, float* spikes, int64_t T, int64_t N,
                               int64_t C, int64_t S, double momentum, double eps, bool fused, const LifHyper& p);

// Backward from the spikes' gradient (T rows of B*S*C, gs_stride apart): grad_x (channels-last,
// not null), grad_weight / grad_bias (nullable) as batch_norm_backward_cl on lif_bwd_recompute's
// gradient of batch_norm_apply's output.
void batch_norm_lif_backward_cl(const float* grad_spikes, int64_t gs_stride, const float* x, const float* mean,
                                const float* invstd, const float* weight, const float* bias, float* grad_x,
                                float* grad_weight, float* grad_bias, int64_t T, int64_t N, int64_t C, int64_t S,
                                bool fused, const LifHyper& p);

}  // namespace tna
