// Batch norm with batch statistics on the native core; the arithmetic is described in batch_norm.h.
// Work is split over blocks of eight channels: a block's sums, then its normalisation, while its
// rows are still in cache (for the training benchmark's layers a block is ~1 MB). torch's own CPU
// kernel sums each channel in one float64 chain, latency-bound; eight chains side by side keep the
// same order per channel and the adders busy.
#include "batch_norm.h"

#include <cmath>
#include <cstdint>

namespace tna {
namespace {

constexpr int kBlock = 8;

// y[s] = x[s] * a + b over one row, rounded as torch's kernel for that `fused` setting.
TNA_MULTIVERSION_FMA void affine_row(const float* __restrict x, float* __restrict y, int64_t S, float a, float b,
                                     bool fused) {
  if (fused) {
    for (int64_t s = 0; s < S; ++s) y[s] = std::fma(x[s], a, b);
  } else {
    for (int64_t s = 0; s < S; ++s) y[s] = x[s] * a + b;
  }
}

// a = invstd * weight, b = bias - mean * a (fused: one rounding), as torch computes them.
inline void affine_terms(float mean, float invstd, const float* weight, const float* bias, int64_t c, bool fused,
                         float& a, float& b) {
  a = invstd * (weight ? weight[c] : 1.0f);
  const float beta = bias ? bias[c] : 0.0f;
  b = fused ? std::fma(-mean, a, beta) : beta - mean * a;
}

// Channel sums of a block of L channels starting at c0, each in torch's (n, s) order.
template <int L>
TNA_MULTIVERSION_FMA void block_stats(const float* __restrict x, int64_t N, int64_t C, int64_t S, int64_t c0, float* mean,
                 float* var_sum) {
  const double M = static_cast<double>(N * S);
  double acc[L];
  for (int j = 0; j < L; ++j) acc[j] = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const float* row = x + (n * C + c0) * S;
    for (int64_t s = 0; s < S; ++s)
      for (int j = 0; j < L; ++j) acc[j] += static_cast<double>(row[j * S + s]);
  }
  float m[L];
  for (int j = 0; j < L; ++j) {
    m[j] = static_cast<float>(acc[j] / M);
    acc[j] = 0.0;
  }
  for (int64_t n = 0; n < N; ++n) {
    const float* row = x + (n * C + c0) * S;
    for (int64_t s = 0; s < S; ++s)
      for (int j = 0; j < L; ++j) {
        const float d = row[j * S + s] - m[j];
        acc[j] += static_cast<double>(d * d);
      }
  }
  for (int j = 0; j < L; ++j) {
    mean[j] = m[j];
    var_sum[j] = static_cast<float>(acc[j]);
  }
}

void stats(const float* x, int64_t N, int64_t C, int64_t S, int64_t c0, int64_t count, float* mean,
           float* var_sum) {
  switch (count) {
    case 8: return block_stats<8>(x, N, C, S, c0, mean, var_sum);
    case 7: return block_stats<7>(x, N, C, S, c0, mean, var_sum);
    case 6: return block_stats<6>(x, N, C, S, c0, mean, var_sum);
    case 5: return block_stats<5>(x, N, C, S, c0, mean, var_sum);
    case 4: return block_stats<4>(x, N, C, S, c0, mean, var_sum);
    case 3: return block_stats<3>(x, N, C, S, c0, mean, var_sum);
    case 2: return block_stats<2>(x, N, C, S, c0, mean, var_sum);
    default: return block_stats<1>(x, N, C, S, c0, mean, var_sum);
  }
}

}  // namespace

void batch_norm_forward(const float* x, const float* weight, const float* bias, float* running_mean,
                        float* running_var, float* y, float* mean, float* invstd, int64_t N, int64_t C,
                        int64_t S, double momentum, double eps, bool fused) {
  const int64_t M = N * S;
  TNA_CHECK(M >= 2, "batch norm in training needs more than one value per channel, got ", N, " x ", S);
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  const float mom = static_cast<float>(momentum), keep = 1.0f - mom;
  parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t c0 = blk * kBlock, count = std::min<int64_t>(kBlock, C - c0);
      float var_sum[kBlock];
      stats(x, N, C, S, c0, count, mean + c0, var_sum);
      for (int64_t j = 0; j < count; ++j) {
        const int64_t c = c0 + j;
        // torch: var_sum / M in float32, then 1 / sqrt(var + eps) in float64
        const float var = var_sum[j] / static_cast<float>(M);
        invstd[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var) + eps));
        if (running_mean) running_mean[c] = mom * mean[c] + keep * running_mean[c];
        if (running_var) {
          const float unbiased = var_sum[j] / static_cast<float>(M - 1);
          running_var[c] = std::fma(mom, unbiased, keep * running_var[c]);
        }
        float a, b;
        affine_terms(mean[c], invstd[c], weight, bias, c, fused, a, b);
        for (int64_t n = 0; n < N; ++n) affine_row(x + (n * C + c) * S, y + (n * C + c) * S, S, a, b, fused);
      }
    }
  });
}

void batch_norm_apply(const float* x, const float* mean, const float* invstd, const float* weight,
                      const float* bias, float* y, int64_t N, int64_t C, int64_t S, bool fused) {
  parallel_for(0, N * C, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % C;
      float a, b;
      affine_terms(mean[c], invstd[c], weight, bias, c, fused, a, b);
      affine_row(x + r * S, y + r * S, S, a, b, fused);
    }
  });
}

}  // namespace tna
