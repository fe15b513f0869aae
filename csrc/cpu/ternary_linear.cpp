// Ternary linear layers, CPU: bit-packed spikes x ternary and float x ternary.
//
// Maths (reference.py is the spec): with packed rows P[n], N[n] (format v1, ternary.h)
//   spikes:  acc[m, n] = sum_i popcount(S[m, i] & P[n, i]) - popcount(S[m, i] & N[n, i])   (exact)
//            y[m, n]   = float(acc) * scale[n] + bias[n]       (two fp32 roundings, no FMA)
//   float:   y[m, n]   = (sum_k x[m, k] c[n, k]) * scale[n] + bias[n]
//   grad:    grad_x    = (grad_y * scale) @ c
// Layout: S [M, KW] int64 words, W [N, 2, KW] (P row then N row), y [M, N] row-major.
// Spikes: 64 x 64 output tiles over tna::parallel_for on the popcount kernels, or rows on the
// event-driven kernel (ternary_gemm.cpp chooses).
// Float x ternary: small M (<= 12, float32) uses a direct kernel that adds x under the P/N bit masks
// (AVX-512 mask registers; AVX2 lane masks from a table, sign flip by xor; or scalar), reading 2
// bits per weight; otherwise the codes are decoded to float32 in cache-sized K blocks here
// (decode_block_f32) and tna_kernels/ops/ternary.py runs the GEMM with torch (oneDNN/MKL) block by
// block: exact for +-1 weights, within a few % of torch fp32. The scale/bias epilogue is
// scale_bias_f32 (ternary_pack.cpp); the gradient is torch's GEMM on decode_codes.
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstdlib>
#include <cstring>
#include <memory>

#include "ternary.h"

namespace tna::ternary {

namespace {

// ---- float x ternary, direct kernel for small M -----------------------------------------------

// Decoded-weight block of the GEMM path (floats, 8 MiB; TNA_GEMM_BLOCK overrides): few blocks (=
// parallel regions, which stall on a busy machine)
// and small enough to stay in L3 instead of streaming the decoded matrix through DRAM.
int64_t gemm_block_floats() {
  const char* env = std::getenv("TNA_GEMM_BLOCK");
  return env != nullptr && std::atoll(env) > 0 ? std::atoll(env) : 2097152;
}

// acc[m * ld + n] = sum_k x[m, k] c[n, k] for all m < M and n in [n0, n1) (before scale and bias).
void direct_scalar(const float* x, int64_t M, int64_t K, const uint64_t* W, int64_t KW, int64_t n0,
                   int64_t n1, float* acc, int64_t ld) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint64_t* p = W + n * 2 * KW;
    const uint64_t* q = p + KW;
    for (int64_t m = 0; m < M; ++m) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        const uint64_t bit = uint64_t(1) << (k % 64);
        if (p[k / 64] & bit) s += x[m * K + k];
        if (q[k / 64] & bit) s -= x[m * K + k];
      }
      acc[m * ld + n] = s;
    }
  }
}

#ifdef TNA_HAVE_X86_KERNELS
// MR rows of x x NR weight rows; each x chunk is loaded once for NR rows and each P/N mask once
// for MR rows. AVX-512: 16 lanes, masked add/sub under the P/N bits (mask registers).
template <int MR, int NR>
TNA_AVX512 inline void dk512(const float* x, int64_t K, const uint64_t* W, int64_t KW, float* acc,
                             int64_t ld) {
  __m512 a[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) a[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const int64_t w = k / 64, sh = k % 64;
    const __mmask16 lanes =
        K - k >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (K - k)) - 1);
    __mmask16 pm[NR], nm[NR];
    for (int j = 0; j < NR; ++j) {
      pm[j] = static_cast<__mmask16>(W[j * 2 * KW + w] >> sh);
      nm[j] = static_cast<__mmask16>(W[j * 2 * KW + KW + w] >> sh);
    }
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(lanes, x + i * K + k);
      for (int j = 0; j < NR; ++j) {
        a[i][j] = _mm512_mask_add_ps(a[i][j], pm[j], a[i][j], xv);
        a[i][j] = _mm512_mask_sub_ps(a[i][j], nm[j], a[i][j], xv);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i * ld + j] = _mm512_reduce_add_ps(a[i][j]);
}

TNA_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// AVX2: 8 lanes. A byte of weights becomes two lane masks by table lookup (256 x 8 int32 = 8 KiB,
// L1-resident): `nz` (c != 0) and `sg` (the float sign bit where c = -1); then x * c is
// (x ^ sg) & nz, one xor + and + add per row.
struct MaskLut {
  alignas(32) int32_t bits[256][8];
  MaskLut() {
    for (int b = 0; b < 256; ++b)
      for (int l = 0; l < 8; ++l) bits[b][l] = ((b >> l) & 1) ? -1 : 0;
  }
};
const MaskLut kMaskLut;

template <int MR, int NR>
TNA_AVX2 inline void dk256(const float* x, int64_t K, const uint64_t* W, int64_t KW, float* acc,
                           int64_t ld) {
  const __m256 signbit = _mm256_castsi256_ps(_mm256_set1_epi32(int32_t(0x80000000u)));
  __m256 a[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) a[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {
    const int64_t w = k / 64, sh = k % 64, left = K - k;
    __m256 nz[NR], sg[NR];
    for (int j = 0; j < NR; ++j) {
      const unsigned pb = (W[j * 2 * KW + w] >> sh) & 0xff, nb = (W[j * 2 * KW + KW + w] >> sh) & 0xff;
      nz[j] = _mm256_load_ps(reinterpret_cast<const float*>(kMaskLut.bits[pb | nb]));
      sg[j] = _mm256_and_ps(_mm256_load_ps(reinterpret_cast<const float*>(kMaskLut.bits[nb])), signbit);
    }
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<int64_t>(left, 8))),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = left >= 8 ? _mm256_loadu_ps(x + i * K + k) : _mm256_maskload_ps(x + i * K + k, lanes);
      for (int j = 0; j < NR; ++j) {
        a[i][j] = _mm256_add_ps(a[i][j], _mm256_and_ps(_mm256_xor_ps(xv, sg[j]), nz[j]));
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i * ld + j] = hsum256(a[i][j]);
}

// Drivers: row groups of up to 4 (AVX-512) / 2 (AVX2) x weight-row groups of 4 (or 1 at the edge).
template <int MR>
TNA_AVX512 void direct512_rows(const float* x, int64_t K, const uint64_t* W, int64_t KW, int64_t n0,
                               int64_t n1, float* acc, int64_t ld) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) dk512<MR, 4>(x, K, W + n * 2 * KW, KW, acc + n, ld);
  for (; n < n1; ++n) dk512<MR, 1>(x, K, W + n * 2 * KW, KW, acc + n, ld);
}

TNA_AVX512 void direct_avx512(const float* x, int64_t M, int64_t K, const uint64_t* W, int64_t KW,
                              int64_t n0, int64_t n1, float* acc, int64_t ld) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) direct512_rows<4>(x + m * K, K, W, KW, n0, n1, acc + m * ld, ld);
  switch (M - m) {
    case 3: direct512_rows<3>(x + m * K, K, W, KW, n0, n1, acc + m * ld, ld); break;
    case 2: direct512_rows<2>(x + m * K, K, W, KW, n0, n1, acc + m * ld, ld); break;
    case 1: direct512_rows<1>(x + m * K, K, W, KW, n0, n1, acc + m * ld, ld); break;
    default: break;
  }
}

template <int MR>
TNA_AVX2 void direct256_rows(const float* x, int64_t K, const uint64_t* W, int64_t KW, int64_t n0,
                             int64_t n1, float* acc, int64_t ld) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) dk256<MR, 2>(x, K, W + n * 2 * KW, KW, acc + n, ld);
  for (; n < n1; ++n) dk256<MR, 1>(x, K, W + n * 2 * KW, KW, acc + n, ld);
}

TNA_AVX2 void direct_avx2(const float* x, int64_t M, int64_t K, const uint64_t* W, int64_t KW,
                          int64_t n0, int64_t n1, float* acc, int64_t ld) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) direct256_rows<4>(x + m * K, K, W, KW, n0, n1, acc + m * ld, ld);
  switch (M - m) {
    case 3: direct256_rows<3>(x + m * K, K, W, KW, n0, n1, acc + m * ld, ld); break;
    case 2: direct256_rows<2>(x + m * K, K, W, KW, n0, n1, acc + m * ld, ld); break;
    case 1: direct256_rows<1>(x + m * K, K, W, KW, n0, n1, acc + m * ld, ld); break;
    default: break;
  }
}

// Fast float32 decode of rows [r0, r1) of packed [rows, 2, KW] into out [rows, K]: two blends per
// 16 (AVX-512) or 8 (AVX2) codes.
// Columns [k0, k1) of each row go to out[r * ldo + (k - k0)]; k0 is a multiple of 64.
TNA_AVX512 void decode_f32_avx512(const uint64_t* W, int64_t KW, int64_t k0, int64_t K, int64_t r0,
                                  int64_t r1, float* out, int64_t ldo) {
  const __m512 one = _mm512_set1_ps(1.f), mone = _mm512_set1_ps(-1.f), zero = _mm512_setzero_ps();
  for (int64_t r = r0; r < r1; ++r) {
    const uint64_t* p = W + r * 2 * KW;
    float* o = out + r * ldo - k0;
    for (int64_t k = k0; k < K; k += 16) {
      const __mmask16 lanes = K - k >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (K - k)) - 1);
      const __mmask16 pm = static_cast<__mmask16>(p[k / 64] >> (k % 64));
      const __mmask16 nm = static_cast<__mmask16>(p[KW + k / 64] >> (k % 64));
      const __m512 v = _mm512_mask_blend_ps(nm, _mm512_mask_blend_ps(pm, zero, one), mone);
      _mm512_mask_storeu_ps(o + k, lanes, v);
    }
  }
}

TNA_AVX2 void decode_f32_avx2(const uint64_t* W, int64_t KW, int64_t k0, int64_t K, int64_t r0,
                              int64_t r1, float* out, int64_t ldo) {
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256 one = _mm256_set1_ps(1.f), mone = _mm256_set1_ps(-1.f);
  for (int64_t r = r0; r < r1; ++r) {
    const uint64_t* p = W + r * 2 * KW;
    float* o = out + r * ldo - k0;
    int64_t k = k0;
    for (; k + 8 <= K; k += 8) {
      const __m256i pb = _mm256_set1_epi32(int((p[k / 64] >> (k % 64)) & 0xff));
      const __m256i nb = _mm256_set1_epi32(int((p[KW + k / 64] >> (k % 64)) & 0xff));
      const __m256 pm = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(pb, sel), sel));
      const __m256 nm = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(nb, sel), sel));
      _mm256_storeu_ps(o + k, _mm256_or_ps(_mm256_and_ps(pm, one), _mm256_and_ps(nm, mone)));
    }
    for (; k < K; ++k) {
      o[k] = float(int((p[k / 64] >> (k % 64)) & 1) - int((p[KW + k / 64] >> (k % 64)) & 1));
    }
  }
}
#endif

}  // namespace

void ternary_linear_direct(const float* xp, int64_t M, int64_t K, const int64_t* W, int64_t N,
                           const float* scale, const float* bias, float* yp) {
  TNA_CHECK(K >= 1, "K must be >= 1, got ", K);
  TNA_CHECK(M >= 1 && M <= kDirectMaxM, "the direct float x ternary kernel takes 1 to ", kDirectMaxM,
            " rows, got ", M);
  check_packed_rows(W, N, K, "packed_w");
  const auto* wp = reinterpret_cast<const uint64_t*>(W);
  const Isa isa = select_isa();
  const int64_t KW = words_for(K);
  parallel_for(0, N, std::max<int64_t>(4, 65536 / (K * M) * 4), [&](int64_t n0, int64_t n1) {
#ifdef TNA_HAVE_X86_KERNELS
    if (isa == Isa::kAvx512) {
      direct_avx512(xp, M, K, wp, KW, n0, n1, yp, N);
    } else if (isa == Isa::kAvx2) {
      direct_avx2(xp, M, K, wp, KW, n0, n1, yp, N);
    } else {
      direct_scalar(xp, M, K, wp, KW, n0, n1, yp, N);
    }
#else
    direct_scalar(xp, M, K, wp, KW, n0, n1, yp, N);
#endif
    // The epilogue of scale_bias_f32 on the columns just written (same two roundings per element).
    if (scale == nullptr) return;
    for (int64_t m = 0; m < M; ++m) {
      float* row = yp + m * N;
      if (bias != nullptr) {
        for (int64_t n = n0; n < n1; ++n) row[n] = row[n] * scale[n] + bias[n];
      } else {
        for (int64_t n = n0; n < n1; ++n) row[n] = row[n] * scale[n];
      }
    }
  });
}

int64_t gemm_block_cols(int64_t N, int64_t K) {
  TNA_CHECK(K >= 1, "K must be >= 1, got ", K);
  // The scalar ISA decodes the whole matrix (decode_codes) and runs one GEMM, as before.
  if (N <= 0 || select_isa() == Isa::kScalar) return 0;
#ifdef TNA_HAVE_X86_KERNELS
  return std::min(words_for(K) * 64, std::max<int64_t>(64, (gemm_block_floats() / N) / 64 * 64));
#else
  return 0;
#endif
}

void decode_block_f32(const int64_t* W, int64_t N, int64_t K, int64_t k0, int64_t k1, float* o,
                      int64_t ldo) {
  TNA_CHECK(K >= 1 && k0 >= 0 && k0 % 64 == 0 && k0 < k1 && k1 <= K && k1 - k0 <= ldo,
            "decode_block_f32: bad block [", k0, ", ", k1, ") of K = ", K, " (row stride ", ldo, ")");
  const auto* wp = reinterpret_cast<const uint64_t*>(W);
  const int64_t KW = words_for(K);
  const Isa isa = select_isa();
  // Decoding a block (<= 8 MiB) is ~0.1 ms on one core: inline, no extra parallel region.
  parallel_for(0, N, std::max<int64_t>(1, 2097152 / ldo), [&](int64_t r0, int64_t r1) {
#ifdef TNA_HAVE_X86_KERNELS
    if (isa == Isa::kAvx512) return decode_f32_avx512(wp, KW, k0, k1, r0, r1, o, ldo);
    if (isa == Isa::kAvx2) return decode_f32_avx2(wp, KW, k0, k1, r0, r1, o, ldo);
#endif
    for (int64_t r = r0; r < r1; ++r) {
      const uint64_t* p = wp + r * 2 * KW;
      for (int64_t k = k0; k < k1; ++k) {
        o[r * ldo + k - k0] =
            float(int((p[k / 64] >> (k % 64)) & 1) - int((p[KW + k / 64] >> (k % 64)) & 1));
      }
    }
  });
}

void spike_ternary_linear(const int64_t* S, int64_t M, const int64_t* W, int64_t N, int64_t K,
                          const float* scp, const float* bp, const int8_t* kmajor, float* yp) {
  TNA_CHECK(K >= 1, "K must be >= 1, got ", K);
  const int64_t KW = words_for(K);
  check_packed_rows(W, N, K, "packed_w");
  const Isa isa = select_isa();
  if (M == 0 || N == 0) return;
  const auto* sp = reinterpret_cast<const uint64_t*>(S);
  const auto* wp = reinterpret_cast<const uint64_t*>(W);
  const Algo algo = select_algo(isa, KW, N, spike_density(sp, M * KW, M * K), kmajor != nullptr);
  if (algo == Algo::kEvent) {
    const int64_t ld = kmajor_ld(N);
    KmajorBuffer own;
    const int8_t* wkp = kmajor != nullptr ? kmajor : own.build(wp, N, KW);
    parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
      event_gemm_rows(isa, sp + m0 * KW, KW, m1 - m0, wkp, ld, KW, N, scp, bp, yp + m0 * N, N);
    });
    return;
  }
  // Tiles: 64 rows of spikes x 64 weight rows (64 x 2 x KW words); small M splits over N only.
  const int64_t tm = 64, tn = 64;
  const int64_t mt = (M + tm - 1) / tm, nt = (N + tn - 1) / tn;
  parallel_for(0, mt * nt, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t t = b0; t < b1; ++t) {
      const int64_t m0 = (t / nt) * tm, n0 = (t % nt) * tn;
      spike_gemm_tile(isa, sp + m0 * KW, KW, std::min(tm, M - m0), wp, KW, n0, std::min(N, n0 + tn),
                      scp, bp, yp + m0 * N, N);
    }
  });
}

}  // namespace tna::ternary
