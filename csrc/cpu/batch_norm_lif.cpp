// Batch norm (batch statistics) followed by the LIF neuron, channels-last float32, fused: the batch
// norm's output never reaches memory. Per block of positions its rows are normalised into an L1/L2
// scratch with the batch norm's own row kernel (batch_norm_rows.h) and the LIF runs on the scratch
// (lif.h's serial passes), so spikes and gradients are those of batch_norm_forward + lif_fwd and
// batch_norm_apply + lif_bwd_recompute + batch_norm_backward_cl bit for bit (the backward's
// partial sums are that kernel's chunks when a step has a multiple of 256 positions; otherwise
// its chunks stop at each step's end and the float sums differ in rounding only).
//
// Memory passes over an activation-sized tensor (x, grad_x, spikes and their gradient):
//   unfused forward:  statistics (2 reads), normalise (read + write), LIF (read + write)
//   fused forward:    statistics (2 reads), normalise + LIF (read + write)
//   unfused backward: normalise (read + write), LIF (2 reads + write), sums (2 reads),
//                     gradient (2 reads + write)
//   fused backward:   normalise + LIF + sums (2 reads + write), gradient (2 reads + write)
#include <algorithm>
#include <vector>

#include "batch_norm.h"
#include "batch_norm_rows.h"
#include "lif.h"

namespace tna {
namespace {

using namespace bn_rows;

// Positions per LIF block: T rows of a block's normalised values (T * R * C floats) fit in 32 KiB.
int64_t block_rows(int64_t C, int64_t T) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(1, C * T)); }

void check_sizes(int64_t T, int64_t N, int64_t C, int64_t S) {
  TNA_CHECK(T >= 1, "T must be >= 1, got ", T);
  TNA_CHECK(N % T == 0, "x must have T*B samples (a multiple of T = ", T, "), got ", N);
  TNA_CHECK(C >= 1 && S >= 1, "x must have at least one channel and position, got C = ", C, ", S = ", S);
}

std::vector<float> affine_terms_all(const float* mean, const float* invstd, const float* weight, const float* bias,
                                    int64_t C, bool fused, std::vector<float>& b) {
  std::vector<float> a(C);
  b.assign(C, 0.0f);
  for (int64_t c = 0; c < C; ++c) affine_terms(mean[c], invstd[c], weight, bias, c, fused, a[c], b[c]);
  return a;
}

}  // namespace

void batch_norm_lif_forward_cl(const float* x, const float* weight, const float* bias, float* running_mean,
                               float* running_var, float* mean, float* invstd, float* spikes, int64_t T, int64_t N,
                               int64_t C, int64_t S, double momentum, double eps, bool fused, const LifHyper& p) {
  check_sizes(T, N, C, S);
  check_lif_hyper(p);
  batch_norm_forward(x, weight, bias, running_mean, running_var, nullptr, mean, invstd, N, C, S, momentum, eps,
                     fused, true);
  std::vector<float> b;
  const std::vector<float> a = affine_terms_all(mean, invstd, weight, bias, C, fused, b);
  const int64_t P = N / T * S, R = block_rows(C, T);  // P: positions per step
  parallel_for(0, P, R, [&](int64_t p0, int64_t p1) {
    std::vector<float> y(static_cast<size_t>(T * R * C)), v(static_cast<size_t>(R * C));
    for (int64_t q0 = p0; q0 < p1; q0 += R) {
      const int64_t rows = std::min(R, p1 - q0), n = rows * C;
      for (int64_t t = 0; t < T; ++t)
        affine_cl(x + (t * P + q0) * C, y.data() + t * n, 0, rows, C, 0, C, a.data(), b.data(), fused);
      lif_fwd_f32_serial(y.data(), n, T, n, p, spikes + q0 * C, P * C, v.data());
    }
  });
}

void batch_norm_lif_backward_cl(const float* grad_spikes, int64_t gs_stride, const float* x, const float* mean,
                                const float* invstd, const float* weight, const float* bias, float* grad_x,
                                float* grad_weight, float* grad_bias, int64_t T, int64_t N, int64_t C, int64_t S,
                                bool fused, const LifHyper& p) {
  check_sizes(T, N, C, S);
  check_lif_hyper(p);
  std::vector<float> b;
  const std::vector<float> a = affine_terms_all(mean, invstd, weight, bias, C, fused, b);
  const int64_t P = N / T * S, M = N * S, R = block_rows(C, T);
  const int64_t U = (P + kRows - 1) / kRows;  // chunks of kRows positions per step
  std::vector<float> part(static_cast<size_t>(T * U * 2 * C), 0.0f);
  // A chunk's T partial sums are one worker's: its blocks add their rows in position order.
  parallel_for(0, U, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> y(static_cast<size_t>(T * R * C)), scratch(static_cast<size_t>(lif_bwd_recompute_f32_scratch(T)));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t end = std::min(P, (u + 1) * kRows);
      for (int64_t q0 = u * kRows; q0 < end; q0 += R) {
        const int64_t q1 = std::min(end, q0 + R), n = (q1 - q0) * C;
        for (int64_t t = 0; t < T; ++t)
          affine_cl(x + (t * P + q0) * C, y.data() + t * n, 0, q1 - q0, C, 0, C, a.data(), b.data(), fused);
        // the batch norm's output gradient, into grad_x (the last pass turns it into grad_x in place)
        lif_bwd_recompute_f32_serial(grad_spikes + q0 * C, gs_stride, y.data(), n, T, n, p, grad_x + q0 * C, P * C,
                                     scratch.data());
        for (int64_t t = 0; t < T; ++t) {
          float* f = &part[static_cast<size_t>((t * U + u) * 2 * C)];
          accumulate_sums_cl(grad_x + t * P * C, x + t * P * C, mean, q0, q1, C, f, f + C);
        }
      }
    }
  });
  // chunks in (step, position) order: batch_norm_backward_cl's global position order
  const GradTerms g = finish_sums(part, T * U, M, C, invstd, weight, grad_weight, grad_bias);
  parallel_for(0, M, 64, [&](int64_t r0, int64_t r1) { grad_rows_cl(grad_x, x, mean, g, grad_x, r0, r1, C); });
}

}  // namespace tna
