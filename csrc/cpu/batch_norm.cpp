// Batch norm with batch statistics on the native core; the arithmetic is described in batch_norm.h.
// torch's own CPU kernel sums each channel in one float64 chain, latency-bound; here many
// channels' chains run side by side, in the same order per channel. NCHW: work is split over
// blocks of 16 channels, a block's sums then its normalisation while its rows are still in cache
// (AVX2: the block as four 4-lane float64 vectors fed by 8x8 transposes of the rows; otherwise
// eight scalar chains). Channels-last: a thread takes a range of channels and walks the positions,
// the lanes being adjacent channels.
#include "batch_norm.h"
#include "batch_norm_rows.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace tna {
namespace {

constexpr int kBlock = 16;

// y[s] = x[s] * a + b over one row, rounded as torch's kernel for that `fused` setting.
TNA_MULTIVERSION_FMA void affine_row(const float* __restrict x, float* __restrict y, int64_t S, float a, float b,
                                     bool fused) {
  if (fused) {
    for (int64_t s = 0; s < S; ++s) y[s] = std::fma(x[s], a, b);
  } else {
    for (int64_t s = 0; s < S; ++s) y[s] = x[s] * a + b;
  }
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

#if defined(__x86_64__) && defined(__GNUC__)
#define TNA_BN_AVX2 1
#define TNA_AVX2_FN __attribute__((target("avx2,fma")))

// r[k] = (v[0][k], ..., v[7][k]): an 8x8 transpose of floats.
TNA_AVX2_FN inline void transpose8(__m256 v[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
    v[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
  }
}

// acc[0..1] += 8 channels' values v (kSquares: (v - m)^2 rounded to float32), widened to float64.
template <bool kSquares>
TNA_AVX2_FN inline void accumulate(__m256d* acc, __m256 v, __m256 m) {
  if (kSquares) {
    const __m256 d = _mm256_sub_ps(v, m);
    v = _mm256_mul_ps(d, d);
  }
  acc[0] = _mm256_add_pd(acc[0], _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  acc[1] = _mm256_add_pd(acc[1], _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

// One pass over 16 channels (two groups of 8, four float64 chains of 4 lanes): each lane adds its
// channel's values (kSquares: the float32 squares of value - mean) in torch's (n, s) order. A tile
// of 8 positions x 8 channels is loaded row-wise and transposed, so each add takes 8 channels at
// one position.
template <bool kSquares>
TNA_AVX2_FN void pass16(const float* x, int64_t N, int64_t C, int64_t S, int64_t c0, const float* mean,
                        double* out) {
  __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  __m256 m[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  if (kSquares) m[0] = _mm256_loadu_ps(mean), m[1] = _mm256_loadu_ps(mean + 8);
  for (int64_t n = 0; n < N; ++n) {
    const float* row = x + (n * C + c0) * S;
    int64_t s = 0;
    for (; s + 8 <= S; s += 8) {
      __m256 a[8], b[8];
      for (int j = 0; j < 8; ++j) {
        a[j] = _mm256_loadu_ps(row + j * S + s);
        b[j] = _mm256_loadu_ps(row + (j + 8) * S + s);
      }
      transpose8(a);
      transpose8(b);
      for (int k = 0; k < 8; ++k) {
        accumulate<kSquares>(acc, a[k], m[0]);
        accumulate<kSquares>(acc + 2, b[k], m[1]);
      }
    }
    for (; s < S; ++s) {
      alignas(32) float a[16];
      for (int j = 0; j < 16; ++j) a[j] = row[j * S + s];
      accumulate<kSquares>(acc, _mm256_load_ps(a), m[0]);
      accumulate<kSquares>(acc + 2, _mm256_load_ps(a + 8), m[1]);
    }
  }
  for (int q = 0; q < 4; ++q) _mm256_storeu_pd(out + 4 * q, acc[q]);
}

TNA_AVX2_FN void block_stats16_avx2(const float* x, int64_t N, int64_t C, int64_t S, int64_t c0, float* mean,
                                    float* var_sum) {
  const double M = static_cast<double>(N * S);
  double acc[16];
  pass16<false>(x, N, C, S, c0, nullptr, acc);
  for (int j = 0; j < 16; ++j) mean[j] = static_cast<float>(acc[j] / M);
  pass16<true>(x, N, C, S, c0, mean, acc);
  for (int j = 0; j < 16; ++j) var_sum[j] = static_cast<float>(acc[j]);
}

bool has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

void stats(const float* x, int64_t N, int64_t C, int64_t S, int64_t c0, int64_t count, float* mean,
           float* var_sum) {
#if defined(TNA_BN_AVX2)
  if (count == 16 && has_avx2()) return block_stats16_avx2(x, N, C, S, c0, mean, var_sum);
#endif
  if (count > 8) {  // the scalar chains take at most 8 channels at a time
    block_stats<8>(x, N, C, S, c0, mean, var_sum);
    return stats(x, N, C, S, c0 + 8, count - 8, mean + 8, var_sum + 8);
  }
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

// ---- Channels-last input: x [N, S, C] in memory ------------------------------------------------
// The same sums in the same (n, s) order per channel. A thread takes a range of channels and walks
// the positions once per pass, adding that range of each position's row (contiguous) into float64
// accumulators in cache: the lanes of a vector are channels, without a transpose.
TNA_MULTIVERSION_FMA void stats_cl(const float* __restrict x, int64_t N, int64_t C, int64_t S, int64_t c0,
                                   int64_t count, float* __restrict mean, float* __restrict var_sum) {
  const int64_t M = N * S;
  std::vector<double> acc(count, 0.0);
  std::vector<float> m(count);
  double* __restrict a = acc.data();
  for (int64_t r = 0; r < M; ++r) {
    const float* p = x + r * C + c0;
    for (int64_t j = 0; j < count; ++j) a[j] += static_cast<double>(p[j]);
  }
  for (int64_t j = 0; j < count; ++j) {
    m[j] = static_cast<float>(a[j] / static_cast<double>(M));
    a[j] = 0.0;
  }
  const float* __restrict mm = m.data();
  for (int64_t r = 0; r < M; ++r) {
    const float* p = x + r * C + c0;
    for (int64_t j = 0; j < count; ++j) {
      const float d = p[j] - mm[j];
      a[j] += static_cast<double>(d * d);
    }
  }
  for (int64_t j = 0; j < count; ++j) {
    mean[j] = m[j];
    var_sum[j] = static_cast<float>(a[j]);
  }
}

}  // namespace

namespace bn_rows {

// y[r, c] = x[r, c] * a[c] + b[c] over rows [r0, r1) of `count` channels starting at c0 (row
// length C), rounded as torch's kernel for that `fused` setting.
TNA_MULTIVERSION_FMA void affine_cl(const float* __restrict x, float* __restrict y, int64_t r0, int64_t r1,
                                    int64_t C, int64_t c0, int64_t count, const float* a, const float* b,
                                    bool fused) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* p = x + r * C + c0;
    float* q = y + r * C + c0;
    if (fused) {
      for (int64_t j = 0; j < count; ++j) q[j] = std::fma(p[j], a[j], b[j]);
    } else {
      for (int64_t j = 0; j < count; ++j) q[j] = p[j] * a[j] + b[j];
    }
  }
}

TNA_MULTIVERSION_FMA void accumulate_sums_cl(const float* __restrict dy, const float* __restrict x,
                                             const float* __restrict mean, int64_t r0, int64_t r1, int64_t C,
                                             float* __restrict f1, float* __restrict f2) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* g = dy + r * C;
    const float* p = x + r * C;
    for (int64_t c = 0; c < C; ++c) {
      f1[c] += g[c];
      f2[c] += (p[c] - mean[c]) * g[c];
    }
  }
}

GradTerms finish_sums(const std::vector<float>& part, int64_t chunks, int64_t M, int64_t C, const float* invstd,
                      const float* weight, float* grad_weight, float* grad_bias) {
  GradTerms g{std::vector<float>(C), std::vector<float>(C), std::vector<float>(C)};
  for (int64_t c = 0; c < C; ++c) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t q = 0; q < chunks; ++q) {
      s1 += part[q * 2 * C + c];
      s2 += part[q * 2 * C + C + c];
    }
    const double inv = invstd[c];
    if (grad_weight) grad_weight[c] = static_cast<float>(s2 * inv);
    if (grad_bias) grad_bias[c] = static_cast<float>(s1);
    g.gm[c] = static_cast<float>(s1 / static_cast<double>(M));
    g.k[c] = static_cast<float>(s2 * inv * inv / static_cast<double>(M));
    g.scale[c] = static_cast<float>(inv * (weight ? weight[c] : 1.0f));
  }
  return g;
}

namespace {
TNA_MULTIVERSION_FMA void grad_rows(const float* dy, const float* __restrict x, const float* __restrict mean,
                                    const float* __restrict gm, const float* __restrict k,
                                    const float* __restrict scale, float* grad_x, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* g = dy + r * C;
    const float* p = x + r * C;
    float* o = grad_x + r * C;  // may be dy itself: each element is read before it is written
    for (int64_t c = 0; c < C; ++c) o[c] = (g[c] - gm[c] - (p[c] - mean[c]) * k[c]) * scale[c];
  }
}
}  // namespace

void grad_rows_cl(const float* dy, const float* x, const float* mean, const GradTerms& g, float* grad_x, int64_t r0,
                  int64_t r1, int64_t C) {
  grad_rows(dy, x, mean, g.gm.data(), g.k.data(), g.scale.data(), grad_x, r0, r1, C);
}

}  // namespace bn_rows

using namespace bn_rows;

void batch_norm_forward(const float* x, const float* weight, const float* bias, float* running_mean,
                        float* running_var, float* y, float* mean, float* invstd, int64_t N, int64_t C,
                        int64_t S, double momentum, double eps, bool fused, bool channels_last) {
  const int64_t M = N * S;
  TNA_CHECK(M >= 2, "batch norm in training needs more than one value per channel, got ", N, " x ", S);
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  const float mom = static_cast<float>(momentum), keep = 1.0f - mom;
  // NCHW: blocks of kBlock channels, each normalised while in cache; channels-last: one range of
  // blocks per thread (the range's part of each position's row is contiguous)
  const int64_t per_task = channels_last ? (blocks + num_threads() - 1) / std::max(1, num_threads()) : 1;
  parallel_for(0, (blocks + per_task - 1) / per_task, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = t * per_task * kBlock, count = std::min<int64_t>(per_task * kBlock, C - c0);
      std::vector<float> var_sum(count), a(count), b(count);
      if (channels_last) {
        stats_cl(x, N, C, S, c0, count, mean + c0, var_sum.data());
      } else {
        stats(x, N, C, S, c0, count, mean + c0, var_sum.data());
      }
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
        affine_terms(mean[c], invstd[c], weight, bias, c, fused, a[j], b[j]);
        if (!channels_last && y)
          for (int64_t n = 0; n < N; ++n) affine_row(x + (n * C + c) * S, y + (n * C + c) * S, S, a[j], b[j], fused);
      }
      if (channels_last && y) affine_cl(x, y, 0, M, C, c0, count, a.data(), b.data(), fused);
    }
  });
}

void batch_norm_apply(const float* x, const float* mean, const float* invstd, const float* weight,
                      const float* bias, float* y, int64_t N, int64_t C, int64_t S, bool fused,
                      bool channels_last) {
  if (channels_last) {
    std::vector<float> a(C), b(C);
    for (int64_t c = 0; c < C; ++c) affine_terms(mean[c], invstd[c], weight, bias, c, fused, a[c], b[c]);
    parallel_for(0, N * S, 64, [&](int64_t r0, int64_t r1) { affine_cl(x, y, r0, r1, C, 0, C, a.data(), b.data(), fused); });
    return;
  }
  parallel_for(0, N * C, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % C;
      float a, b;
      affine_terms(mean[c], invstd[c], weight, bias, c, fused, a, b);
      affine_row(x + r * S, y + r * S, S, a, b, fused);
    }
  });
}

void batch_norm_backward_cl(const float* grad_y, const float* x, const float* mean, const float* invstd,
                            const float* weight, float* grad_x, float* grad_weight, float* grad_bias, int64_t N,
                            int64_t C, int64_t S) {
  const int64_t M = N * S, chunks = (M + kRows - 1) / kRows;
  std::vector<float> part(static_cast<size_t>(chunks * 2 * C), 0.0f);
  parallel_for(0, chunks, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q)
      accumulate_sums_cl(grad_y, x, mean, q * kRows, std::min(M, (q + 1) * kRows), C, &part[q * 2 * C],
                         &part[q * 2 * C + C]);
  });
  const GradTerms g = finish_sums(part, chunks, M, C, invstd, weight, grad_weight, grad_bias);
  if (!grad_x) return;
  parallel_for(0, M, 64, [&](int64_t r0, int64_t r1) { grad_rows_cl(grad_y, x, mean, g, grad_x, r0, r1, C); });
}

}  // namespace tna
