// Ternariser and the packed ternary / spike formats, CPU (tna_kernels/reference.py is the spec).
//
// Format v1 (csrc/cpu/ternary.h, docs/FORMAT.md): codes [..., K] int8 in {-1, 0, +1} ->
// words [..., 2, KW] int64, KW = ceil(K/64), plane 0 = P (c == +1), plane 1 = N (c == -1),
// element k at bit k % 64 of word k / 64, padding bits zero. Spikes [..., K] in {0, 1} -> [..., KW].
//
// Ternariser, per row r (dim 0 = output channel; per_channel=false pools every row), statistics in
// float64 over |w|:
//   twn:     delta = 0.7 * mean|w|;  c = sign(w) * [|w| > delta];  scale = mean(|w| : |w| > delta)
//            (0 when no |w| exceeds delta)
//   absmean: g = mean|w|;  c = clamp(round_half_even(w / (g + 1e-5)), -1, 1);  scale = g
// scale is returned per output channel (float32, [N]) for both modes. The fused op writes codes,
// scales and (optionally) the packed words in one call, so re-quantising each step is cheap.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ternary.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tna::ternary {

void check_version(int64_t version) {
  TNA_CHECK(version == kFormatVersion, "version: this build reads packed ternary format v",
            kFormatVersion, " only, got v", version,
            " (re-pack the weights with tna_kernels.functional.pack_ternary)");
}

namespace {

constexpr int64_t kNoBad = std::numeric_limits<int64_t>::max();

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TNA_HAVE_PACK_AVX2 1

// 8x8 bit-matrix transpose: bit (r, c) at 8r + c moves to 8c + r (Hacker's Delight 7-3).
inline uint64_t transpose8x8(uint64_t x) {
  uint64_t t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
  x ^= t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
  x ^= t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
  x ^= t ^ (t << 28);
  return x;
}

// float32 spikes packed across planes: src points at channel 64 i of the word, plane stride P;
// `len` channels (<= 64) x `np` pixels (multiple of 8) -> buf[p] |= bit (channel - 64 i). Eight
// pixels at a time: compare + movemask gives one byte per channel (bit = pixel), and an 8x8 bit
// transpose turns 8 such bytes into one byte per pixel (bit = channel). Returns false on a value
// other than 0 and 1.
__attribute__((target("avx2"))) bool pack_f32_planes_avx2(const float* src, int64_t P, int64_t len,
                                                           int64_t np, uint64_t* buf) {
  const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
  int bad = 0;
  for (int64_t p = 0; p < np; p += 8) {
    uint64_t word[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t g = 0; g * 8 < len; ++g) {
      uint64_t x = 0;
      const int64_t cmax = std::min<int64_t>(8, len - g * 8);
      for (int64_t cc = 0; cc < cmax; ++cc) {
        const __m256 v = _mm256_loadu_ps(src + (g * 8 + cc) * P + p);
        const __m256 is1 = _mm256_cmp_ps(v, one, _CMP_EQ_OQ);
        const __m256 is0 = _mm256_cmp_ps(v, zero, _CMP_EQ_OQ);
        bad |= _mm256_movemask_ps(_mm256_or_ps(is0, is1)) ^ 0xff;
        x |= uint64_t(_mm256_movemask_ps(is1)) << (8 * cc);
      }
      x = transpose8x8(x);
      for (int q = 0; q < 8; ++q) word[q] |= ((x >> (8 * q)) & 0xff) << (8 * g);
    }
    for (int q = 0; q < 8; ++q) buf[p + q] = word[q];
  }
  return bad == 0;
}
// float32 row of K elements, packing along the contiguous axis: every whole group of 8 (the first
// K / 8 * 8 elements, a partial last word included, so 16- and 32-channel rows take this path too),
// one compare + movemask per group. Returns the elements packed; *ok false on a value other than 0
// and 1.
__attribute__((target("avx2"))) int64_t pack_f32_row_avx2(const float* src, int64_t K, uint64_t* out, bool* ok) {
  const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
  const int64_t groups = K / 8;
  int bad = 0;
  uint64_t w = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const __m256 v = _mm256_loadu_ps(src + g * 8);
    const __m256 is1 = _mm256_cmp_ps(v, one, _CMP_EQ_OQ);
    const __m256 is0 = _mm256_cmp_ps(v, zero, _CMP_EQ_OQ);
    bad |= _mm256_movemask_ps(_mm256_or_ps(is0, is1)) ^ 0xff;
    w |= uint64_t(_mm256_movemask_ps(is1)) << (8 * (g % 8));
    if (g % 8 == 7) {
      out[g / 8] = w;
      w = 0;
    }
  }
  if (groups % 8 != 0) out[groups / 8] = w;
  *ok = bad == 0;
  return groups * 8;
}
#endif

void record_bad(std::atomic<int64_t>& first, int64_t idx) {
  int64_t cur = first.load();
  while (idx < cur && !first.compare_exchange_weak(cur, idx)) {
  }
}

// Checks that no word has a bit in both planes and that the bits past K are zero; returns the
// first bad row or -1. O(rows * KW): cheap next to any GEMM that reads the same words.
int64_t first_bad_packed_row(const uint64_t* w, int64_t rows, int64_t K) {
  const int64_t KW = words_for(K);
  const uint64_t tail = (K % 64) ? ~((uint64_t(1) << (K % 64)) - 1) : 0;
  std::atomic<int64_t> bad{kNoBad};
  // Small checks run inline: a parallel region costs more than scanning 256 Ki words.
  parallel_for(0, rows, std::max<int64_t>(256, 262144 / KW), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const uint64_t* p = w + r * 2 * KW;
      const uint64_t* n = p + KW;
      uint64_t clash = (p[KW - 1] | n[KW - 1]) & tail;
      for (int64_t i = 0; i < KW; ++i) clash |= p[i] & n[i];
      if (clash) {
        record_bad(bad, r);
        return;
      }
    }
  });
  return bad.load() == kNoBad ? -1 : bad.load();
}

TNA_MULTIVERSION void pack_codes_row_scalar(const int8_t* __restrict c, int64_t K, uint64_t* __restrict p,
                                            uint64_t* __restrict n, bool* ok) {
  bool good = true;
  for (int64_t i = 0; i * 64 < K; ++i) {
    const int64_t len = std::min<int64_t>(64, K - i * 64);
    uint64_t pw = 0, nw = 0;
    for (int64_t j = 0; j < len; ++j) {
      const int8_t v = c[i * 64 + j];
      pw |= uint64_t(v == 1) << j;
      nw |= uint64_t(v == -1) << j;
      good &= (v >= -1) & (v <= 1);
    }
    p[i] = pw;
    n[i] = nw;
  }
  *ok = good;
}

#ifdef TNA_HAVE_PACK_AVX2
// pack_codes_row on AVX2: 32 codes per compare, their bits by movemask (the scalar loop tests a
// code per instruction chain: 0.8 ms for a 256x256x3x3 weight's codes).
__attribute__((target("avx2"))) void pack_codes_row_avx2(const int8_t* __restrict c, int64_t K,
                                                         uint64_t* __restrict p, uint64_t* __restrict n, bool* ok) {
  const __m256i plus = _mm256_set1_epi8(1), minus = _mm256_set1_epi8(-1), zero = _mm256_setzero_si256();
  bool good = true;
  int64_t i = 0;
  for (; (i + 1) * 64 <= K; ++i) {
    uint64_t pw = 0, nw = 0;
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i * 64 + 32 * h));
      const __m256i is_p = _mm256_cmpeq_epi8(v, plus), is_n = _mm256_cmpeq_epi8(v, minus);
      const __m256i known = _mm256_or_si256(_mm256_or_si256(is_p, is_n), _mm256_cmpeq_epi8(v, zero));
      pw |= uint64_t(uint32_t(_mm256_movemask_epi8(is_p))) << (32 * h);
      nw |= uint64_t(uint32_t(_mm256_movemask_epi8(is_n))) << (32 * h);
      good &= _mm256_movemask_epi8(known) == -1;
    }
    p[i] = pw;
    n[i] = nw;
  }
  if (i * 64 < K) {  // the last, partial word
    bool tail_ok = true;
    pack_codes_row_scalar(c + i * 64, K - i * 64, p + i, n + i, &tail_ok);
    good &= tail_ok;
  }
  *ok = good;
}
#endif

inline void pack_codes_row(const int8_t* c, int64_t K, uint64_t* p, uint64_t* n, bool* ok) {
#ifdef TNA_HAVE_PACK_AVX2
  if (cpu_has_avx2()) return pack_codes_row_avx2(c, K, p, n, ok);
#endif
  pack_codes_row_scalar(c, K, p, n, ok);
}

template <typename T>
TNA_MULTIVERSION void decode_row(const uint64_t* __restrict p, const uint64_t* __restrict n,
                                 int64_t K, T* __restrict out) {
  for (int64_t i = 0; i * 64 < K; ++i) {
    const int64_t len = std::min<int64_t>(64, K - i * 64);
    const uint64_t pw = p[i], nw = n[i];
    T* o = out + i * 64;
    for (int64_t j = 0; j < len; ++j) {
      o[j] = static_cast<T>(static_cast<int>((pw >> j) & 1) - static_cast<int>((nw >> j) & 1));
    }
  }
}

template <typename T>
inline auto value_of(T v) {
  if constexpr (std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>) {
    return static_cast<float>(v);
  } else {
    return v;
  }
}

template <typename T>
inline bool is_one(T v) {
  return value_of(v) == value_of(T(1));
}

template <typename T>
inline bool is_binary(T v) {
  return value_of(v) == value_of(T(0)) || is_one(v);
}

template <typename T>
void pack_spikes_typed(const T* sp, int64_t A, int64_t K, int64_t P, uint64_t* op) {
  const int64_t KW = words_for(K);
  std::atomic<int64_t> bad{kNoBad};
  if (P == 1) {
    parallel_for(0, A, std::max<int64_t>(1, 32768 / K), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* row = sp + r * K;
        int64_t done = 0;  // elements packed by the AVX2 float path (whole groups of 8)
#ifdef TNA_HAVE_PACK_AVX2
        if constexpr (std::is_same_v<T, float>) {
          if (cpu_has_avx2()) {
            bool fast_ok = true;
            done = pack_f32_row_avx2(row, K, op + r * KW, &fast_ok);
            if (!fast_ok) record_bad(bad, r * K);
          }
        }
#endif
        for (int64_t i = done / 64; i < KW; ++i) {  // the last K % 8 elements, into a started word
          const int64_t len = std::min<int64_t>(64, K - i * 64);
          const int64_t j0 = std::max<int64_t>(0, done - i * 64);
          uint64_t word = j0 > 0 ? op[r * KW + i] : 0;
          bool ok = true;
          for (int64_t j = j0; j < len; ++j) {
            const T v = row[i * 64 + j];
            ok &= is_binary(v);
            word |= uint64_t(is_one(v)) << j;
          }
          op[r * KW + i] = word;
          if (!ok) record_bad(bad, r * K + i * 64);
        }
      }
    });
  } else {
    constexpr int64_t kBlockP = 512;
    const int64_t pb = (P + kBlockP - 1) / kBlockP;
    parallel_for(0, A * KW * pb, 1, [&](int64_t b, int64_t e) {
      uint64_t buf[kBlockP];
      for (int64_t t = b; t < e; ++t) {
        const int64_t a = t / (KW * pb), i = (t / pb) % KW, p0 = (t % pb) * kBlockP;
        const int64_t np = std::min(kBlockP, P - p0);
        const int64_t len = std::min<int64_t>(64, K - i * 64);
        for (int64_t p = 0; p < np; ++p) buf[p] = 0;
        bool ok = true;
        int64_t done = 0;  // pixels handled by the AVX2 float path
#ifdef TNA_HAVE_PACK_AVX2
        if constexpr (std::is_same_v<T, float>) {
          if (cpu_has_avx2()) {
            done = np / 8 * 8;
            ok = pack_f32_planes_avx2(sp + (a * K + i * 64) * P + p0, P, len, done, buf);
          }
        }
#endif
        for (int64_t j = 0; j < len && done < np; ++j) {
          const T* src = sp + (a * K + i * 64 + j) * P + p0;
          for (int64_t p = done; p < np; ++p) {
            ok &= is_binary(src[p]);
            buf[p] |= uint64_t(is_one(src[p])) << j;
          }
        }
        for (int64_t p = 0; p < np; ++p) op[(a * P + p0 + p) * KW + i] = buf[p];
        if (!ok) record_bad(bad, (a * K + i * 64) * P + p0);
      }
    });
  }
  if (bad.load() != kNoBad) {
    // Locate the first offending element (in memory order) for the message.
    const int64_t n = A * K * P;
    for (int64_t i = 0; i < n; ++i) {
      if (!is_binary(sp[i])) {
        fail("spikes must contain only 0 and 1; found ", static_cast<double>(value_of(sp[i])),
             " at flat index ", i);
      }
    }
  }
}

// Sums in float64 over 8 interleaved partial sums (one dependency chain each, combined in a fixed
// order): the loops vectorise and run at load speed instead of one add latency per element. The
// order is fixed, so results do not depend on threading.
constexpr int kLanes = 8;

inline double combine(const double* acc) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
TNA_MULTIVERSION double row_abs_sum(const T* w, int64_t n) {
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += std::abs(static_cast<double>(value_of(w[i + j])));
  for (; i < n; ++i) acc[0] += std::abs(static_cast<double>(value_of(w[i])));
  return combine(acc);
}

// TWN's second pass over a row: the sum and the count of |w| above delta. a * [a > delta] (a is
// finite, checked before): a or +0.0, the same sums as a select.
template <typename T>
TNA_MULTIVERSION void row_above_scalar(const T* w, int64_t n, double delta, double& sum, double& count) {
  double s[kLanes] = {}, c[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double a = std::abs(static_cast<double>(value_of(w[i + j])));
      const double above = static_cast<double>(a > delta);
      s[j] += a * above;
      c[j] += above;
    }
  }
  for (; i < n; ++i) {
    const double a = std::abs(static_cast<double>(value_of(w[i])));
    if (a > delta) s[0] += a, c[0] += 1;
  }
  sum = combine(s);
  count = combine(c);
}

#ifdef TNA_HAVE_PACK_AVX2
// row_above_scalar for float on AVX2, the same lanes and order (lane j sums elements i + j), so the
// same bits. gcc compiles the scalar loop to a compare-and-branch per element, half of them
// mispredicted on a weight's magnitudes (~7 ns per element: 4.3 ms for a 256x256x3x3 weight).
__attribute__((target("avx2"))) void row_above_f32_avx2(const float* w, int64_t n, double delta, double& sum,
                                                        double& count) {
  const __m256d d = _mm256_set1_pd(delta), one = _mm256_set1_pd(1.0);
  const __m256d abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
  __m256d s0 = _mm256_setzero_pd(), s1 = s0, c0 = s0, c1 = s0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 v = _mm256_loadu_ps(w + i);
    const __m256d a0 = _mm256_and_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), abs_mask);
    const __m256d a1 = _mm256_and_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), abs_mask);
    const __m256d m0 = _mm256_cmp_pd(a0, d, _CMP_GT_OQ), m1 = _mm256_cmp_pd(a1, d, _CMP_GT_OQ);
    s0 = _mm256_add_pd(s0, _mm256_and_pd(a0, m0));
    s1 = _mm256_add_pd(s1, _mm256_and_pd(a1, m1));
    c0 = _mm256_add_pd(c0, _mm256_and_pd(one, m0));
    c1 = _mm256_add_pd(c1, _mm256_and_pd(one, m1));
  }
  double s[kLanes], c[kLanes];
  _mm256_storeu_pd(s, s0);
  _mm256_storeu_pd(s + 4, s1);
  _mm256_storeu_pd(c, c0);
  _mm256_storeu_pd(c + 4, c1);
  for (; i < n; ++i) {
    const double a = std::abs(static_cast<double>(w[i]));
    if (a > delta) s[0] += a, c[0] += 1;
  }
  sum = combine(s);
  count = combine(c);
}
#endif

template <typename T>
void row_above(const T* w, int64_t n, double delta, double& sum, double& count) {
#ifdef TNA_HAVE_PACK_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx2()) return row_above_f32_avx2(w, n, delta, sum, count);
  }
#endif
  row_above_scalar(w, n, delta, sum, count);
}

// TWN codes of a row: +1 above t, -1 below -t, else 0 (branch-free, vectorises).
template <typename T>
TNA_MULTIVERSION void row_twn_codes(const T* w, int64_t n, double t, int8_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(value_of(w[i]));
    out[i] = static_cast<int8_t>(static_cast<int>(v > t) - static_cast<int>(v < -t));
  }
}

template <typename T>
void ternarize_typed(const T* xp, int64_t N, int64_t R, bool twn, bool per_channel, int8_t* cp,
                     std::vector<double>& sc) {
  std::vector<double> thr(N);  // per row: threshold (twn) or g + eps (absmean)
  std::vector<double> mean(N);
  parallel_for(0, N, std::max<int64_t>(1, 65536 / R), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) mean[r] = row_abs_sum(xp + r * R, R);
  });
  // Pool the row sums in row order so the per-tensor statistics do not depend on threading.
  if (!per_channel) {
    double tot = 0;
    for (int64_t r = 0; r < N; ++r) tot += mean[r];
    for (int64_t r = 0; r < N; ++r) mean[r] = tot;
  }
  const double count = per_channel ? double(R) : double(R) * double(N);
  for (int64_t r = 0; r < N; ++r) {
    TNA_CHECK(std::isfinite(mean[r]), "w must be finite (found inf or NaN in output channel ", r, ")");
    mean[r] /= count;
  }
  if (twn) {
    std::vector<double> above(N), cnt(N);
    parallel_for(0, N, std::max<int64_t>(1, 65536 / R), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const double delta = 0.7 * mean[r];
        row_above(xp + r * R, R, delta, above[r], cnt[r]);
        thr[r] = delta;
      }
    });
    if (!per_channel) {
      double s = 0, c = 0;
      for (int64_t r = 0; r < N; ++r) s += above[r], c += cnt[r];
      for (int64_t r = 0; r < N; ++r) above[r] = s, cnt[r] = c;
    }
    for (int64_t r = 0; r < N; ++r) sc[r] = cnt[r] > 0 ? above[r] / cnt[r] : 0.0;
  } else {
    for (int64_t r = 0; r < N; ++r) thr[r] = mean[r] + 1e-5, sc[r] = mean[r];
  }
  parallel_for(0, N, std::max<int64_t>(1, 65536 / R), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const double t = thr[r];
      if (twn) {
        row_twn_codes(xp + r * R, R, t, cp + r * R);
        continue;
      }
      for (int64_t i = 0; i < R; ++i) {
        const double v = static_cast<double>(value_of(xp[r * R + i]));
        int c;
        if (twn) {
          c = std::abs(v) > t ? (v > 0 ? 1 : -1) : 0;
        } else {
          c = static_cast<int>(std::clamp(std::nearbyint(v / t), -1.0, 1.0));
        }
        cp[r * R + i] = static_cast<int8_t>(c);
      }
    }
  });
}

TNA_MULTIVERSION void epilogue_block(float* __restrict y, int64_t inner, float s, float b, bool has_b) {
  if (has_b) {
    for (int64_t i = 0; i < inner; ++i) y[i] = y[i] * s + b;  // two roundings (-ffp-contract=off)
  } else {
    for (int64_t i = 0; i < inner; ++i) y[i] = y[i] * s;
  }
}

}  // namespace

void pack_ternary(const int8_t* cp, int64_t rows, int64_t K, int64_t* out) {
  TNA_CHECK(K >= 1, "K must be >= 1, got ", K);
  const int64_t KW = words_for(K);
  uint64_t* op = reinterpret_cast<uint64_t*>(out);
  std::atomic<int64_t> bad{kNoBad};
  parallel_for(0, rows, std::max<int64_t>(1, 32768 / K), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      bool ok = true;
      pack_codes_row(cp + r * K, K, op + r * 2 * KW, op + r * 2 * KW + KW, &ok);
      if (!ok) {
        for (int64_t k = 0; k < K; ++k) {
          const int8_t v = cp[r * K + k];
          if (v < -1 || v > 1) {
            record_bad(bad, r * K + k);
            break;
          }
        }
      }
    }
  });
  if (bad.load() != kNoBad) {
    const int64_t i = bad.load();
    fail("codes must contain only -1, 0 and +1 (ternary); found ", static_cast<int>(cp[i]),
         " at flat index ", i);
  }
}

void unpack_ternary(const int64_t* packed, int64_t rows, int64_t K, int8_t* o) {
  TNA_CHECK(K >= 1, "K must be >= 1, got ", K);
  const int64_t KW = words_for(K);
  check_packed_rows(packed, rows, K, "packed");
  const uint64_t* wp = reinterpret_cast<const uint64_t*>(packed);
  parallel_for(0, rows, std::max<int64_t>(1, 32768 / K), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) decode_row(wp + r * 2 * KW, wp + r * 2 * KW + KW, K, o + r * K);
  });
}

// Packs along K (moved last in the output): spikes viewed as [A, K, P] (P = the elements after the
// packed axis). P == 1 packs each contiguous row; otherwise 64 planes of P contiguous values are
// OR-ed into P words at a time (vectorises over P), so NCHW inputs pack along C without a
// transpose copy.
void pack_spikes(const void* spikes, DType dtype, int64_t A, int64_t K, int64_t P, int64_t* out) {
  TNA_CHECK(K >= 1, "K must be >= 1, got ", K);
  dispatch_all(dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    pack_spikes_typed(static_cast<const scalar_t*>(spikes), A, K, P, reinterpret_cast<uint64_t*>(out));
  });
}

void unpack_spikes(const int64_t* bits, int64_t rows, int64_t K, uint8_t* o) {
  TNA_CHECK(K >= 1, "K must be >= 1, got ", K);
  const int64_t KW = words_for(K);
  const uint64_t* bp = reinterpret_cast<const uint64_t*>(bits);
  const uint64_t tail = (K % 64) ? ~((uint64_t(1) << (K % 64)) - 1) : 0;
  for (int64_t r = 0; r < rows; ++r) {
    TNA_CHECK((bp[r * KW + KW - 1] & tail) == 0, "bits row ", r, " has padding bits (k >= K = ", K,
              ") set; packed spikes must be zero-padded");
  }
  parallel_for(0, rows, std::max<int64_t>(1, 32768 / K), [&](int64_t s, int64_t e) {
    for (int64_t r = s; r < e; ++r) {
      // word by word: the inner loop has a fixed shift pattern and vectorises (~10x the per-bit loop)
      for (int64_t w = 0; w < KW; ++w) {
        const uint64_t word = bp[r * KW + w];
        uint8_t* dst = o + r * K + w * 64;
        const int64_t n = std::min<int64_t>(64, K - w * 64);
        for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<uint8_t>((word >> j) & 1);
      }
    }
  });
}

void ternarize(const void* w, DType dtype, int64_t N, int64_t R, Method method, bool per_channel,
               int64_t K_last, int8_t* codes, float* scale, int64_t* packed) {
  TNA_CHECK(N >= 1 && R >= 1, "w must have shape [out_channels, ...] with at least 2 dims and no "
            "empty dim, got ", N, " x ", R, " values");
  TNA_CHECK(method == Method::kTwn || method == Method::kAbsmean, "method index must be 0 (twn) or 1 "
            "(absmean), got ", static_cast<int>(method));
  std::vector<double> sc(N);
  dispatch_floating(dtype, "w", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    ternarize_typed(static_cast<const scalar_t*>(w), N, R, method == Method::kTwn, per_channel, codes,
                    sc);
  });
  for (int64_t r = 0; r < N; ++r) scale[r] = static_cast<float>(sc[r]);
  if (packed != nullptr) {
    TNA_CHECK(K_last >= 1 && (N * R) % K_last == 0, "K_last must divide the number of weights, got ",
              K_last);
    pack_ternary(codes, N * R / K_last, K_last, packed);
  }
}

void decode_codes(const int64_t* packed, int64_t rows, int64_t K, DType dtype, void* out) {
  const int64_t KW = words_for(K);
  const uint64_t* wp = reinterpret_cast<const uint64_t*>(packed);
  const auto run = [&](auto* o) {
    parallel_for(0, rows, std::max<int64_t>(1, 32768 / K), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) decode_row(wp + r * 2 * KW, wp + r * 2 * KW + KW, K, o + r * K);
    });
  };
  switch (dtype) {
    case DType::kFloat32: return run(static_cast<float*>(out));
    case DType::kFloat64: return run(static_cast<double*>(out));
    case DType::kInt8: return run(static_cast<int8_t*>(out));
    default: fail("decode_codes: dtype must be float32, float64 or int8, got ", dtype_name(dtype));
  }
}

void check_packed_rows(const int64_t* packed, int64_t rows, int64_t K, const char* name) {
  const uint64_t* wp = reinterpret_cast<const uint64_t*>(packed);
  const int64_t bad = first_bad_packed_row(wp, rows, K);
  TNA_CHECK(bad < 0, name, " is not valid format-v1 data: row ", bad,
            " has a bit set in both the P and N planes or a padding bit (k >= K) set");
}

void scale_bias_f32(float* yp, int64_t outer, int64_t N, int64_t inner, const float* sp,
                    const float* bp) {
  if (outer == 0 || N == 0 || inner == 0) return;
  if (inner == 1) {  // channels last: scale/bias vary along the contiguous axis
    parallel_for(0, outer, std::max<int64_t>(1, 262144 / N), [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        float* row = yp + o * N;
        if (bp != nullptr) {
          for (int64_t n = 0; n < N; ++n) row[n] = row[n] * sp[n] + bp[n];
        } else {
          for (int64_t n = 0; n < N; ++n) row[n] = row[n] * sp[n];
        }
      }
    });
    return;
  }
  parallel_for(0, outer * N, std::max<int64_t>(1, 262144 / inner), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r % N;
      epilogue_block(yp + r * inner, inner, sp[n], bp ? bp[n] : 0.f, bp != nullptr);
    }
  });
}

}  // namespace tna::ternary
