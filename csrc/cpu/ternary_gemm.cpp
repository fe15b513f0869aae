// Spike x ternary GEMM engine, CPU: instruction-set selection, the popcount micro-kernels and the
// event-driven kernels, shared by the linear (ternary_linear.cpp) and conv (ternary_conv.cpp) ops.
//
// Maths: with spike words S[m, i] and packed rows P[n], N[n] (format v1, ternary.h)
//   acc[m, n] = sum_i popcount(S[m, i] & P[n, i]) - popcount(S[m, i] & N[n, i])   (exact)
//   y[m, n]   = float(acc) * scale[n] + bias[n]       (two fp32 roundings, no FMA)
// Layout: S [M, KW] int64 words (row stride lds), W [N, 2, KW] (P row then N row), y row-major.
// Two algorithms, chosen per call by spike density, ISA and weight size (TNA_TERNARY_ALGO=
// popcount|event pins one; TNA_TERNARY_ISA=scalar|avx2|avx512 pins the ISA):
//  popcount: callers cut the output into tiles (tna::parallel_for); a tile is swept with
//   register-blocked micro-kernels (rows of S times rows of W, K innermost):
//   avx512  AVX-512 F+BW+VPOPCNTDQ: 8 words per vpopcntq, 4x4 block of zmm accumulators, masked tail.
//   avx2    Mula nibble-LUT popcount (vpshufb) into byte counters, flushed with vpsadbw every 15
//           steps. pos - neg = popcount(s & P) + popcount(~(s & N)) - 64 per word, so both planes
//           feed one unsigned byte counter (2x2 block).
//   scalar  portable 4x4 block of __builtin_popcountll (hardware POPCNT through a target clone).
//  event (avx2/avx512, sparse spikes): for every set bit k of a spike row add the K-major int8
//   code row Wk[k, :] into int16 accumulators held in registers (128 outputs per pass); the cost
//   is proportional to the number of spikes. Wk is built per call or passed in (cached by callers).
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "ternary.h"

namespace tna::ternary {

// ---- instruction-set selection ----------------------------------------------------------------

namespace {
Isa best_supported() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  static const Isa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vpopcntdq"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
        __builtin_cpu_supports("bmi"))
      return Isa::kAvx2;
    return Isa::kScalar;
  }();
  return best;
#else
  return Isa::kScalar;
#endif
}
}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

Isa select_isa() {
  const Isa best = best_supported();
  const char* env = std::getenv("TNA_TERNARY_ISA");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) return best;
  Isa want;
  if (std::strcmp(env, "scalar") == 0) {
    want = Isa::kScalar;
  } else if (std::strcmp(env, "avx2") == 0) {
    want = Isa::kAvx2;
  } else if (std::strcmp(env, "avx512") == 0) {
    want = Isa::kAvx512;
  } else {
    fail("TNA_TERNARY_ISA must be one of auto, scalar, avx2, avx512; got '", env, "'");
  }
  TNA_CHECK(static_cast<int>(want) <= static_cast<int>(best), "TNA_TERNARY_ISA=", env,
              " but this CPU supports at most '", isa_name(best), "'");
  return want;
}

namespace {

inline void store_tile(const int64_t* acc, int mr, int nr, int64_t n0, const float* scale,
                       const float* bias, float* out, int64_t ldo) {
  for (int i = 0; i < mr; ++i) {
    for (int j = 0; j < nr; ++j) {
      float y = static_cast<float>(acc[i * nr + j]) * scale[n0 + j];
      if (bias != nullptr) y = y + bias[n0 + j];
      out[i * ldo + n0 + j] = y;
    }
  }
}

// ---- scalar ------------------------------------------------------------------------------------

template <int MR, int NR>
__attribute__((always_inline)) inline void mk_scalar(const uint64_t* S, int64_t lds, const uint64_t* W,
                                                     int64_t KW, int64_t* acc) {
  int64_t a[MR][NR] = {};
  for (int64_t k = 0; k < KW; ++k) {
    uint64_t s[MR];
    for (int i = 0; i < MR; ++i) s[i] = S[i * lds + k];
    for (int j = 0; j < NR; ++j) {
      const uint64_t p = W[j * 2 * KW + k], q = W[j * 2 * KW + KW + k];
      for (int i = 0; i < MR; ++i) {
        a[i][j] += __builtin_popcountll(s[i] & p) - __builtin_popcountll(s[i] & q);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i * NR + j] = a[i][j];
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("popcnt", "default")))
#endif
void tile_scalar(const uint64_t* S, int64_t lds, int64_t M, const uint64_t* W, int64_t KW,
                 int64_t n0, int64_t n1, const float* scale, const float* bias, float* out,
                 int64_t ldo) {
  int64_t acc[16];
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
      mk_scalar<4, 4>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 4, 4, n, scale, bias, out + m * ldo, ldo);
    }
    for (; n < n1; ++n) {
      mk_scalar<4, 1>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 4, 1, n, scale, bias, out + m * ldo, ldo);
    }
  }
  for (; m < M; ++m) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
      mk_scalar<1, 4>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 1, 4, n, scale, bias, out + m * ldo, ldo);
    }
    for (; n < n1; ++n) {
      mk_scalar<1, 1>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 1, 1, n, scale, bias, out + m * ldo, ldo);
    }
  }
}

#ifdef TNA_HAVE_X86_KERNELS

// ---- AVX2: nibble-LUT popcount ----------------------------------------------------------------

TNA_AVX2 inline __m256i nibble_count(__m256i v, __m256i lut, __m256i low) {
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

// MR x NR block: acc = sum over words of popcount(s & P) + popcount(~(s & N)) (64 too many per
// word, removed at the end). Masked-off tail words load as 0 and so count exactly 64 too.
template <int MR, int NR>
TNA_AVX2 inline void mk_avx2(const uint64_t* S, int64_t lds, const uint64_t* W, int64_t KW,
                             int64_t* acc) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1,
                                       2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi8(-1);
  __m256i a64[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) a64[i][j] = _mm256_setzero_si256();
  const int64_t steps = (KW + 3) / 4;
  const int64_t full = KW / 4;
  const int64_t rem = KW % 4;
  const __m256i tail_mask =
      _mm256_cmpgt_epi64(_mm256_set1_epi64x(rem), _mm256_setr_epi64x(0, 1, 2, 3));
  for (int64_t base = 0; base < steps; base += 15) {
    const int64_t stop = std::min<int64_t>(steps, base + 15);
    __m256i a8[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) a8[i][j] = _mm256_setzero_si256();
    for (int64_t st = base; st < stop; ++st) {
      const int64_t k = st * 4;
      const bool tail = st >= full;
      __m256i s[MR];
      for (int i = 0; i < MR; ++i) {
        const auto* src = reinterpret_cast<const long long*>(S + i * lds + k);
        s[i] = tail ? _mm256_maskload_epi64(src, tail_mask)
                    : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
      }
      for (int j = 0; j < NR; ++j) {
        const auto* pp = reinterpret_cast<const long long*>(W + j * 2 * KW + k);
        const auto* qp = reinterpret_cast<const long long*>(W + j * 2 * KW + KW + k);
        const __m256i p = tail ? _mm256_maskload_epi64(pp, tail_mask)
                               : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pp));
        const __m256i q = tail ? _mm256_maskload_epi64(qp, tail_mask)
                               : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp));
        for (int i = 0; i < MR; ++i) {
          const __m256i pos = _mm256_and_si256(s[i], p);
          const __m256i notneg = _mm256_xor_si256(_mm256_and_si256(s[i], q), ones);
          a8[i][j] = _mm256_add_epi8(a8[i][j], _mm256_add_epi8(nibble_count(pos, lut, low),
                                                               nibble_count(notneg, lut, low)));
        }
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j)
        a64[i][j] = _mm256_add_epi64(a64[i][j], _mm256_sad_epu8(a8[i][j], _mm256_setzero_si256()));
  }
  const int64_t excess = 64 * 4 * steps;
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      alignas(32) int64_t t[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(t), a64[i][j]);
      acc[i * NR + j] = t[0] + t[1] + t[2] + t[3] - excess;
    }
  }
}

TNA_AVX2 void tile_avx2(const uint64_t* S, int64_t lds, int64_t M, const uint64_t* W, int64_t KW,
                        int64_t n0, int64_t n1, const float* scale, const float* bias, float* out,
                        int64_t ldo) {
  int64_t acc[4];
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) {
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) {
      mk_avx2<2, 2>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 2, 2, n, scale, bias, out + m * ldo, ldo);
    }
    for (; n < n1; ++n) {
      mk_avx2<2, 1>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 2, 1, n, scale, bias, out + m * ldo, ldo);
    }
  }
  for (; m < M; ++m) {
    for (int64_t n = n0; n < n1; ++n) {
      mk_avx2<1, 1>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 1, 1, n, scale, bias, out + m * ldo, ldo);
    }
  }
}

// ---- AVX-512 VPOPCNTDQ ------------------------------------------------------------------------

template <int MR, int NR>
TNA_AVX512 inline void step_avx512(__m512i (&a)[MR][NR], const uint64_t* S, int64_t lds,
                                   const uint64_t* W, int64_t KW, int64_t k, __mmask8 mask) {
  __m512i s[MR];
  for (int i = 0; i < MR; ++i) s[i] = _mm512_maskz_loadu_epi64(mask, S + i * lds + k);
  for (int j = 0; j < NR; ++j) {
    const __m512i p = _mm512_maskz_loadu_epi64(mask, W + j * 2 * KW + k);
    const __m512i q = _mm512_maskz_loadu_epi64(mask, W + j * 2 * KW + KW + k);
    for (int i = 0; i < MR; ++i) {
      a[i][j] = _mm512_add_epi64(a[i][j], _mm512_popcnt_epi64(_mm512_and_si512(s[i], p)));
      a[i][j] = _mm512_sub_epi64(a[i][j], _mm512_popcnt_epi64(_mm512_and_si512(s[i], q)));
    }
  }
}

template <int MR, int NR>
TNA_AVX512 inline void mk_avx512(const uint64_t* S, int64_t lds, const uint64_t* W, int64_t KW,
                                 int64_t* acc) {
  __m512i a[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) a[i][j] = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 8 <= KW; k += 8) step_avx512<MR, NR>(a, S, lds, W, KW, k, 0xff);
  if (k < KW) step_avx512<MR, NR>(a, S, lds, W, KW, k, static_cast<__mmask8>((1u << (KW - k)) - 1));
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i * NR + j] = _mm512_reduce_add_epi64(a[i][j]);
}

TNA_AVX512 void tile_avx512(const uint64_t* S, int64_t lds, int64_t M, const uint64_t* W,
                            int64_t KW, int64_t n0, int64_t n1, const float* scale,
                            const float* bias, float* out, int64_t ldo) {
  int64_t acc[16];
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
      mk_avx512<4, 4>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 4, 4, n, scale, bias, out + m * ldo, ldo);
    }
    for (; n < n1; ++n) {
      mk_avx512<4, 1>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 4, 1, n, scale, bias, out + m * ldo, ldo);
    }
  }
  for (; m < M; ++m) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
      mk_avx512<1, 4>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 1, 4, n, scale, bias, out + m * ldo, ldo);
    }
    for (; n < n1; ++n) {
      mk_avx512<1, 1>(S + m * lds, lds, W + n * 2 * KW, KW, acc);
      store_tile(acc, 1, 1, n, scale, bias, out + m * ldo, ldo);
    }
  }
}

// ---- event-driven (sparse spikes): add the K-major int8 weight row of every set bit ------------
// acc[n] (int16, exact while K <= 32767) += c[n, k] for each k with s[k] = 1; a chunk of up to 128
// codes stays in registers, so cost ~ (#set bits) x chunk / lanes, independent of K. A chunk is
// held in only the V vectors its columns need (compile-time V): a narrow layer (N = 32) adds 2
// AVX2 vectors per set bit, not the 8 of a full chunk.

template <int V>
TNA_AVX2 void event_avx2_chunk(const uint64_t* S, int64_t lds, int64_t M, const int8_t* Wk, int64_t ldk,
                               int64_t KW, int64_t n0, int64_t nc, const float* scale, const float* bias,
                               float* out, int64_t ldo) {
  for (int64_t m = 0; m < M; ++m) {
    __m256i a[V];
    for (int v = 0; v < V; ++v) a[v] = _mm256_setzero_si256();
    const uint64_t* row = S + m * lds;
    for (int64_t w = 0; w < KW; ++w) {
      uint64_t bits = row[w];
      while (bits) {
        const int8_t* wr = Wk + (w * 64 + __builtin_ctzll(bits)) * ldk + n0;
        bits &= bits - 1;
        for (int v = 0; v < V; ++v) {
          a[v] = _mm256_add_epi16(
              a[v], _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + 16 * v))));
        }
      }
    }
    alignas(32) int16_t acc[V * 16];
    for (int v = 0; v < V; ++v) _mm256_store_si256(reinterpret_cast<__m256i*>(acc + 16 * v), a[v]);
    float* o = out + m * ldo + n0;
    int64_t j = 0;
    for (; j + 8 <= nc; j += 8) {
      const __m256i iv = _mm256_cvtepi16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(acc + j)));
      __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(iv), _mm256_loadu_ps(scale + n0 + j));
      if (bias != nullptr) y = _mm256_add_ps(y, _mm256_loadu_ps(bias + n0 + j));
      _mm256_storeu_ps(o + j, y);
    }
    for (; j < nc; ++j) {
      float y = static_cast<float>(acc[j]) * scale[n0 + j];
      if (bias != nullptr) y = y + bias[n0 + j];
      o[j] = y;
    }
  }
}

TNA_AVX2 void event_avx2(const uint64_t* S, int64_t lds, int64_t M, const int8_t* Wk, int64_t ldk,
                         int64_t KW, int64_t N, const float* scale, const float* bias, float* out,
                         int64_t ldo) {
  constexpr int64_t kChunk = 128;
  for (int64_t n0 = 0; n0 < N; n0 += kChunk) {
    const int64_t nc = std::min(kChunk, N - n0);
    const auto run = [&](auto vectors) {
      event_avx2_chunk<decltype(vectors)::value>(S, lds, M, Wk, ldk, KW, n0, nc, scale, bias, out, ldo);
    };
    switch ((nc + 15) / 16) {
      case 1: run(std::integral_constant<int, 1>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      case 4: run(std::integral_constant<int, 4>{}); break;
      case 5: run(std::integral_constant<int, 5>{}); break;
      case 6: run(std::integral_constant<int, 6>{}); break;
      case 7: run(std::integral_constant<int, 7>{}); break;
      default: run(std::integral_constant<int, 8>{}); break;
    }
  }
}

template <int V>
TNA_AVX512 void event_avx512_chunk(const uint64_t* S, int64_t lds, int64_t M, const int8_t* Wk, int64_t ldk,
                                   int64_t KW, int64_t n0, int64_t nc, const float* scale, const float* bias,
                                   float* out, int64_t ldo) {
  for (int64_t m = 0; m < M; ++m) {
    __m512i a[V];
    for (int v = 0; v < V; ++v) a[v] = _mm512_setzero_si512();
    const uint64_t* row = S + m * lds;
    for (int64_t w = 0; w < KW; ++w) {
      uint64_t bits = row[w];
      while (bits) {
        const int8_t* wr = Wk + (w * 64 + __builtin_ctzll(bits)) * ldk + n0;
        bits &= bits - 1;
        for (int v = 0; v < V; ++v) {
          a[v] = _mm512_add_epi16(
              a[v], _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + 32 * v))));
        }
      }
    }
    alignas(64) int16_t acc[V * 32];
    for (int v = 0; v < V; ++v) _mm512_store_si512(acc + 32 * v, a[v]);
    float* o = out + m * ldo + n0;
    for (int64_t j = 0; j < nc; j += 16) {
      const __mmask16 lanes = nc - j >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (nc - j)) - 1);
      const __m512i iv = _mm512_cvtepi16_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(acc + j)));
      __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(iv), _mm512_maskz_loadu_ps(lanes, scale + n0 + j));
      if (bias != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(lanes, bias + n0 + j));
      _mm512_mask_storeu_ps(o + j, lanes, y);
    }
  }
}

TNA_AVX512 void event_avx512(const uint64_t* S, int64_t lds, int64_t M, const int8_t* Wk, int64_t ldk,
                             int64_t KW, int64_t N, const float* scale, const float* bias, float* out,
                             int64_t ldo) {
  constexpr int64_t kChunk = 128;
  for (int64_t n0 = 0; n0 < N; n0 += kChunk) {
    const int64_t nc = std::min(kChunk, N - n0);
    const auto run = [&](auto vectors) {
      event_avx512_chunk<decltype(vectors)::value>(S, lds, M, Wk, ldk, KW, n0, nc, scale, bias, out, ldo);
    };
    switch ((nc + 31) / 32) {
      case 1: run(std::integral_constant<int, 1>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      default: run(std::integral_constant<int, 4>{}); break;
    }
  }
}
#endif  // x86 kernels

}  // namespace

void spike_gemm_tile(Isa isa, const uint64_t* S, int64_t lds, int64_t m_count, const uint64_t* W,
                     int64_t KW, int64_t n_begin, int64_t n_end, const float* scale,
                     const float* bias, float* out, int64_t ldo) {
#ifdef TNA_HAVE_X86_KERNELS
  if (isa == Isa::kAvx512) {
    return tile_avx512(S, lds, m_count, W, KW, n_begin, n_end, scale, bias, out, ldo);
  }
  if (isa == Isa::kAvx2) return tile_avx2(S, lds, m_count, W, KW, n_begin, n_end, scale, bias, out, ldo);
#endif
  tile_scalar(S, lds, m_count, W, KW, n_begin, n_end, scale, bias, out, ldo);
}

bool event_supported(Isa isa, int64_t KW, int64_t N) {
  // int16 accumulators are exact up to 32767 set bits; the K-major rows must be readable in chunks
  // of 128 codes (the weight copy is padded to a multiple of 128 columns).
  return isa != Isa::kScalar && KW * 64 <= 32767 && N >= 1;
}

namespace {
// One word column w of all N rows -> 64 K-major rows of codes; contiguous stores along n.
TNA_MULTIVERSION void kmajor_word(const uint64_t* __restrict p, const uint64_t* __restrict q,
                                  int64_t N, int8_t* __restrict out, int64_t ld) {
  for (int j = 0; j < 64; ++j) {
    int8_t* o = out + j * ld;
    for (int64_t n = 0; n < N; ++n) o[n] = static_cast<int8_t>(int((p[n] >> j) & 1) - int((q[n] >> j) & 1));
  }
}
}  // namespace

void kmajor_codes(const uint64_t* W, int64_t N, int64_t KW, int8_t* o) {
  const int64_t ld = kmajor_ld(N);
  parallel_for(0, KW, 1, [&](int64_t w0, int64_t w1) {
    std::vector<uint64_t> p(N), q(N);
    for (int64_t w = w0; w < w1; ++w) {
      for (int64_t n = 0; n < N; ++n) p[n] = W[n * 2 * KW + w], q[n] = W[n * 2 * KW + KW + w];
      kmajor_word(p.data(), q.data(), N, o + w * 64 * ld, ld);
      for (int j = 0; j < 64; ++j) std::memset(o + (w * 64 + j) * ld + N, 0, ld - N);
    }
  });
}

const int8_t* KmajorBuffer::build(const uint64_t* W, int64_t N, int64_t KW) {
  std::free(data);
  // KW * 64 * ld bytes: a multiple of 64, as aligned_alloc requires
  data = static_cast<int8_t*>(std::aligned_alloc(64, static_cast<size_t>(KW * 64 * kmajor_ld(N))));
  TNA_CHECK(data != nullptr, "out of memory for the K-major weight copy (", KW * 64 * kmajor_ld(N),
            " bytes)");
  kmajor_codes(W, N, KW, data);
  return data;
}

KmajorBuffer::~KmajorBuffer() { std::free(data); }

void event_gemm_rows(Isa isa, const uint64_t* S, int64_t lds, int64_t m_count, const int8_t* Wk,
                     int64_t ldk, int64_t KW, int64_t N, const float* scale, const float* bias,
                     float* out, int64_t ldo) {
#ifdef TNA_HAVE_X86_KERNELS
  if (isa == Isa::kAvx512) return event_avx512(S, lds, m_count, Wk, ldk, KW, N, scale, bias, out, ldo);
  if (isa == Isa::kAvx2) return event_avx2(S, lds, m_count, Wk, ldk, KW, N, scale, bias, out, ldo);
#endif
  fail("event-driven ternary kernel needs avx2 or avx512 (got ", isa_name(isa), ")");
}

Algo select_algo(Isa isa, int64_t KW, int64_t N, double density, bool prepacked) {
  const char* env = std::getenv("TNA_TERNARY_ALGO");
  const bool ok = event_supported(isa, KW, N);
  if (env != nullptr && env[0] != '\0' && std::strcmp(env, "auto") != 0) {
    if (std::strcmp(env, "popcount") == 0) return Algo::kPopcount;
    TNA_CHECK(std::strcmp(env, "event") == 0,
                "TNA_TERNARY_ALGO must be one of auto, popcount, event; got '", env, "'");
    TNA_CHECK(ok, "TNA_TERNARY_ALGO=event needs the avx2 or avx512 kernels and K <= 32767");
    return Algo::kEvent;
  }
  if (!ok) return Algo::kPopcount;
  // Event cost ~ density * 64 * KW * N / lanes adds per row; popcount cost ~ KW * N * ops/lanes.
  // Building the K-major int8 copy (KW * 64 * N bytes) per call pays only while it is small; a
  // prepacked copy (cached by the caller) lifts that limit where popcount is slow (AVX2).
  const double kmajor_bytes = double(KW) * 64 * double(N);
  const double limit = isa == Isa::kAvx512 ? kEventDensityAvx512 : kEventDensityAvx2;
  const bool small = kmajor_bytes <= kEventMaxBytes || (prepacked && isa == Isa::kAvx2);
  return (density < limit && small) ? Algo::kEvent : Algo::kPopcount;
}

double spike_density(const uint64_t* S, int64_t words, int64_t bits_total) {
  int64_t ones = 0;
  for (int64_t i = 0; i < words; ++i) ones += __builtin_popcountll(S[i]);
  return bits_total > 0 ? double(ones) / double(bits_total) : 0.0;
}

}  // namespace tna::ternary
