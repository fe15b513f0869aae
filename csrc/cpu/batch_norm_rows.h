// Row kernels of the channels-last batch norm (batch_norm.cpp), shared with the fused batch norm +
// LIF (batch_norm_lif.cpp) so both round every element the same way: one compiled function each.
// Rows are the positions of channels-last memory ([M, C]); the lanes are channels.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core.h"

namespace tna {
namespace bn_rows {

// The backward's partial sums run over chunks of kRows positions (float32 within a chunk, the
// chunks added in order in float64): fixed chunks, so the result does not depend on the threads.
constexpr int64_t kRows = 256;

// a = invstd * weight, b = bias - mean * a (fused: one rounding), as torch computes them.
inline void affine_terms(float mean, float invstd, const float* weight, const float* bias, int64_t c, bool fused,
                         float& a, float& b) {
  a = invstd * (weight ? weight[c] : 1.0f);
  const float beta = bias ? bias[c] : 0.0f;
  b = fused ? std::fma(-mean, a, beta) : beta - mean * a;
}

// y[r, c] = x[r, c] * a[c] + b[c] over rows [r0, r1) of `count` channels starting at c0 (row
// length C), rounded as torch's kernel for that `fused` setting.
void affine_cl(const float* x, float* y, int64_t r0, int64_t r1, int64_t C, int64_t c0, int64_t count,
               const float* a, const float* b, bool fused);

// f1[c] += dy[r, c], f2[c] += (x[r, c] - mean[c]) * dy[r, c] over rows [r0, r1), in row order.
void accumulate_sums_cl(const float* dy, const float* x, const float* mean, int64_t r0, int64_t r1, int64_t C,
                        float* f1, float* f2);

// The per-channel terms of the gradient from the chunks' partial sums (part: `chunks` blocks of
// [f1 | f2], each 2*C floats, added in order in float64): grad_weight / grad_bias (nullable) and
// gm, k, scale for grad_rows_cl.
struct GradTerms {
  std::vector<float> gm, k, scale;
};
GradTerms finish_sums(const std::vector<float>& part, int64_t chunks, int64_t M, int64_t C, const float* invstd,
                      const float* weight, float* grad_weight, float* grad_bias);

// grad_x[r, c] = (dy - gm - (x - mean) * k) * scale over rows [r0, r1); grad_x may be dy itself.
void grad_rows_cl(const float* dy, const float* x, const float* mean, const GradTerms& g, float* grad_x, int64_t r0,
                  int64_t r1, int64_t C);

}  // namespace bn_rows
}  // namespace tna
