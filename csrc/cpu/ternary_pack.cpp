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
#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "../common.h"
#include "ternary.h"

namespace tna::ternary {

void check_packed(const at::Tensor& packed_w, const char* name) {
  TORCH_CHECK(packed_w.device().is_cpu(), name, " must be a CPU tensor, got ", packed_w.device());
  TORCH_CHECK(packed_w.scalar_type() == at::kLong, name,
              " must be int64 packed ternary words (format v1), got ", packed_w.scalar_type());
  TORCH_CHECK(packed_w.dim() >= 3 && packed_w.size(-2) == 2, name,
              " must have shape [N, ..., 2, KW] (P and N bit-planes), got ", packed_w.sizes());
}

void check_scale_bias(const at::Tensor& scale, const std::optional<at::Tensor>& bias, int64_t N) {
  TORCH_CHECK(scale.device().is_cpu(), "scale must be a CPU tensor, got ", scale.device());
  TORCH_CHECK(scale.scalar_type() == at::kFloat, "scale must be float32 (one per output channel), got ",
              scale.scalar_type());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == N, "scale must have shape [", N,
              "] (one per output channel), got ", scale.sizes());
  if (bias.has_value()) {
    TORCH_CHECK(bias->device().is_cpu(), "bias must be a CPU tensor, got ", bias->device());
    TORCH_CHECK(bias->scalar_type() == at::kFloat, "bias must be float32, got ", bias->scalar_type());
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "bias must have shape [", N, "], got ",
                bias->sizes());
  }
}

namespace {

constexpr int64_t kNoBad = std::numeric_limits<int64_t>::max();

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TNA_HAVE_PACK_AVX2 1
#include <immintrin.h>

bool has_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
  }();
  return yes;
}

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
// float32 row, packing along the contiguous axis: `words` full 64-element words, 8 lanes per
// compare + movemask. Returns false on a value other than 0 and 1.
__attribute__((target("avx2"))) bool pack_f32_row_avx2(const float* src, int64_t words, uint64_t* out) {
  const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
  int bad = 0;
  for (int64_t i = 0; i < words; ++i) {
    uint64_t w = 0;
    for (int g = 0; g < 8; ++g) {
      const __m256 v = _mm256_loadu_ps(src + i * 64 + g * 8);
      const __m256 is1 = _mm256_cmp_ps(v, one, _CMP_EQ_OQ);
      const __m256 is0 = _mm256_cmp_ps(v, zero, _CMP_EQ_OQ);
      bad |= _mm256_movemask_ps(_mm256_or_ps(is0, is1)) ^ 0xff;
      w |= uint64_t(_mm256_movemask_ps(is1)) << (8 * g);
    }
    out[i] = w;
  }
  return bad == 0;
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
  at::parallel_for(0, rows, std::max<int64_t>(256, 262144 / KW), [&](int64_t b, int64_t e) {
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

TNA_MULTIVERSION void pack_codes_row(const int8_t* __restrict c, int64_t K, uint64_t* __restrict p,
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

std::vector<int64_t> packed_shape(at::IntArrayRef codes_shape, int64_t planes) {
  std::vector<int64_t> shape(codes_shape.begin(), codes_shape.end() - 1);
  if (planes) shape.push_back(planes);
  shape.push_back(words_for(codes_shape.back()));
  return shape;
}

at::Tensor pack_ternary_cpu(const at::Tensor& codes) {
  TNA_CHECK_CPU(codes);
  TORCH_CHECK(codes.scalar_type() == at::kChar,
              "codes must be int8 ternary codes in {-1, 0, +1}, got dtype ", codes.scalar_type());
  TORCH_CHECK(codes.dim() >= 1 && codes.size(-1) >= 1,
              "codes must have shape [..., K] with K >= 1 (packing runs along the last axis), got ",
              codes.sizes());
  const at::Tensor c = codes.contiguous();
  const int64_t K = c.size(-1), rows = c.numel() / K, KW = words_for(K);
  at::Tensor out = at::empty(packed_shape(c.sizes(), 2), c.options().dtype(at::kLong));
  const int8_t* cp = c.const_data_ptr<int8_t>();
  uint64_t* op = reinterpret_cast<uint64_t*>(out.mutable_data_ptr<int64_t>());
  std::atomic<int64_t> bad{kNoBad};
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / K), [&](int64_t b, int64_t e) {
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
    TORCH_CHECK(false, "codes must contain only -1, 0 and +1 (ternary); found ",
                static_cast<int>(cp[i]), " at flat index ", i);
  }
  return out;
}

at::Tensor unpack_ternary_cpu(const at::Tensor& packed, int64_t K, int64_t version) {
  check_version(version);
  check_packed(packed, "packed");
  TORCH_CHECK(K >= 1, "K must be >= 1, got ", K);
  TORCH_CHECK(packed.size(-1) == words_for(K), "packed must have ", words_for(K),
              " words per plane for K = ", K, " (ceil(K/64)), got shape ", packed.sizes());
  const at::Tensor pk = packed.contiguous();
  const int64_t KW = words_for(K), rows = pk.numel() / (2 * KW);
  const uint64_t* wp = reinterpret_cast<const uint64_t*>(pk.const_data_ptr<int64_t>());
  const int64_t bad = first_bad_packed_row(wp, rows, K);
  TORCH_CHECK(bad < 0, "packed is not valid format-v1 data: row ", bad,
              " has a bit set in both the P and N planes or a padding bit (k >= K) set");
  std::vector<int64_t> shape(pk.sizes().begin(), pk.sizes().end() - 2);
  shape.push_back(K);
  at::Tensor out = at::empty(shape, pk.options().dtype(at::kChar));
  int8_t* o = out.mutable_data_ptr<int8_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / K), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) decode_row(wp + r * 2 * KW, wp + r * 2 * KW + KW, K, o + r * K);
  });
  return out;
}

template <typename T>
bool is_binary(T v) {
  return v == T(0) || v == T(1);
}

// Packs along `dim` (moved last in the output): spikes viewed as [A, K, P] (P = the elements after
// dim). P == 1 packs each contiguous row; otherwise 64 planes of P contiguous values are OR-ed into
// P words at a time (vectorises over P), so NCHW inputs pack along C without a transpose copy.
at::Tensor pack_spikes_cpu(const at::Tensor& spikes, int64_t dim) {
  TNA_CHECK_CPU(spikes);
  TORCH_CHECK(spikes.dim() >= 1, "spikes must have at least one dimension");
  TORCH_CHECK(dim >= -spikes.dim() && dim < spikes.dim(), "dim must be in [", -spikes.dim(), ", ",
              spikes.dim() - 1, "], got ", dim);
  if (dim < 0) dim += spikes.dim();
  TORCH_CHECK(spikes.size(dim) >= 1, "spikes must have a non-empty packing axis (dim ", dim,
              "), got shape ", spikes.sizes());
  TORCH_CHECK(!spikes.is_complex(), "spikes must be a real or bool tensor of 0/1 values, got ",
              spikes.scalar_type());
  const at::Tensor s = spikes.contiguous();
  const int64_t K = s.size(dim), KW = words_for(K);
  int64_t A = 1, P = 1;
  std::vector<int64_t> shape;
  for (int64_t d = 0; d < s.dim(); ++d) {
    if (d < dim) A *= s.size(d);
    if (d > dim) P *= s.size(d);
    if (d != dim) shape.push_back(s.size(d));
  }
  shape.push_back(KW);
  at::Tensor out = at::empty(shape, s.options().dtype(at::kLong));
  uint64_t* op = reinterpret_cast<uint64_t*>(out.mutable_data_ptr<int64_t>());
  std::atomic<int64_t> bad{kNoBad};
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, s.scalar_type(), "pack_spikes", [&] {
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    if (P == 1) {
      at::parallel_for(0, A, std::max<int64_t>(1, 32768 / K), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const scalar_t* row = sp + r * K;
          int64_t i0 = 0;
#ifdef TNA_HAVE_PACK_AVX2
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (has_avx2()) {
              i0 = K / 64;  // full words; the tail word goes through the generic loop
              if (!pack_f32_row_avx2(reinterpret_cast<const float*>(row), i0, op + r * KW)) {
                record_bad(bad, r * K);
              }
            }
          }
#endif
          for (int64_t i = i0; i < KW; ++i) {
            const int64_t len = std::min<int64_t>(64, K - i * 64);
            uint64_t word = 0;
            bool ok = true;
            for (int64_t j = 0; j < len; ++j) {
              const scalar_t v = row[i * 64 + j];
              ok &= is_binary(v);
              word |= uint64_t(v == scalar_t(1)) << j;
            }
            op[r * KW + i] = word;
            if (!ok) record_bad(bad, r * K + i * 64);
          }
        }
      });
    } else {
      constexpr int64_t kBlockP = 512;
      const int64_t pb = (P + kBlockP - 1) / kBlockP;
      at::parallel_for(0, A * KW * pb, 1, [&](int64_t b, int64_t e) {
        uint64_t buf[kBlockP];
        for (int64_t t = b; t < e; ++t) {
          const int64_t a = t / (KW * pb), i = (t / pb) % KW, p0 = (t % pb) * kBlockP;
          const int64_t np = std::min(kBlockP, P - p0);
          const int64_t len = std::min<int64_t>(64, K - i * 64);
          for (int64_t p = 0; p < np; ++p) buf[p] = 0;
          bool ok = true;
          int64_t done = 0;  // pixels handled by the AVX2 float path
#ifdef TNA_HAVE_PACK_AVX2
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (has_avx2()) {
              done = np / 8 * 8;
              ok = pack_f32_planes_avx2(reinterpret_cast<const float*>(sp) + (a * K + i * 64) * P + p0,
                                        P, len, done, buf);
            }
          }
#endif
          for (int64_t j = 0; j < len && done < np; ++j) {
            const scalar_t* src = sp + (a * K + i * 64 + j) * P + p0;
            for (int64_t p = done; p < np; ++p) {
              ok &= is_binary(src[p]);
              buf[p] |= uint64_t(src[p] == scalar_t(1)) << j;
            }
          }
          for (int64_t p = 0; p < np; ++p) op[(a * P + p0 + p) * KW + i] = buf[p];
          if (!ok) record_bad(bad, (a * K + i * 64) * P + p0);
        }
      });
    }
    if (bad.load() != kNoBad) {
      // Locate the first offending element (in memory order) for the message.
      const int64_t n = s.numel();
      for (int64_t i = 0; i < n; ++i) {
        if (!is_binary(sp[i])) {
          TORCH_CHECK(false, "spikes must contain only 0 and 1; found ", static_cast<double>(sp[i]),
                      " at flat index ", i);
        }
      }
    }
  });
  return out;
}

at::Tensor unpack_spikes_cpu(const at::Tensor& bits, int64_t K) {
  TNA_CHECK_CPU(bits);
  TORCH_CHECK(bits.scalar_type() == at::kLong, "bits must be int64 packed spike words, got ",
              bits.scalar_type());
  TORCH_CHECK(K >= 1, "K must be >= 1, got ", K);
  TORCH_CHECK(bits.dim() >= 1 && bits.size(-1) == words_for(K), "bits must have shape [..., ",
              words_for(K), "] for K = ", K, " (ceil(K/64) words), got ", bits.sizes());
  const at::Tensor b = bits.contiguous();
  const int64_t KW = words_for(K), rows = b.numel() / KW;
  const uint64_t* bp = reinterpret_cast<const uint64_t*>(b.const_data_ptr<int64_t>());
  const uint64_t tail = (K % 64) ? ~((uint64_t(1) << (K % 64)) - 1) : 0;
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK((bp[r * KW + KW - 1] & tail) == 0, "bits row ", r,
                " has padding bits (k >= K = ", K, ") set; packed spikes must be zero-padded");
  }
  std::vector<int64_t> shape(b.sizes().begin(), b.sizes().end() - 1);
  shape.push_back(K);
  at::Tensor out = at::empty(shape, b.options().dtype(at::kByte));
  uint8_t* o = out.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / K), [&](int64_t s, int64_t e) {
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
  return out;
}

// ---- ternariser -------------------------------------------------------------------------------

template <typename T>
double row_abs_sum(const T* w, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::abs(static_cast<double>(w[i]));
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ternarize_cpu(const at::Tensor& w,
                                                             std::string_view method,
                                                             bool per_channel, bool pack) {
  TNA_CHECK_CPU(w);
  TNA_CHECK_FLOATING(w);
  TORCH_CHECK(w.dim() >= 2 && w.numel() > 0,
              "w must have shape [out_channels, ...] with at least 2 dims and no empty dim, got ",
              w.sizes());
  const bool twn = method == "twn";
  TORCH_CHECK(twn || method == "absmean", "method must be 'twn' or 'absmean', got '",
              std::string(method), "'");
  const at::Tensor x = w.contiguous();
  const int64_t N = x.size(0), R = x.numel() / N;  // R weights per output channel
  at::Tensor codes = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({N}, x.options().dtype(at::kFloat));
  std::vector<double> thr(N), sc(N);  // per row: threshold (twn) or g + eps (absmean), and scale

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ternarize", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    std::vector<double> mean(N);
    at::parallel_for(0, N, std::max<int64_t>(1, 65536 / R), [&](int64_t b, int64_t e) {
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
      TORCH_CHECK(std::isfinite(mean[r]), "w must be finite (found inf or NaN in output channel ", r, ")");
      mean[r] /= count;
    }
    if (twn) {
      std::vector<double> above(N), cnt(N);
      at::parallel_for(0, N, std::max<int64_t>(1, 65536 / R), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const double delta = 0.7 * mean[r];
          double s = 0, c = 0;
          for (int64_t i = 0; i < R; ++i) {
            const double a = std::abs(static_cast<double>(xp[r * R + i]));
            if (a > delta) {
              s += a;
              c += 1;
            }
          }
          above[r] = s;
          cnt[r] = c;
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
    int8_t* cp = codes.mutable_data_ptr<int8_t>();
    at::parallel_for(0, N, std::max<int64_t>(1, 65536 / R), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const double t = thr[r];
        for (int64_t i = 0; i < R; ++i) {
          const double v = static_cast<double>(xp[r * R + i]);
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
  });
  float* sp = scale.mutable_data_ptr<float>();
  for (int64_t r = 0; r < N; ++r) sp[r] = static_cast<float>(sc[r]);
  at::Tensor packed = pack ? pack_ternary_cpu(codes) : at::empty({0}, x.options().dtype(at::kLong));
  return {codes, scale, packed};
}

}  // namespace

void decode_codes(const at::Tensor& packed, int64_t rows, int64_t K, at::Tensor& dst) {
  const int64_t KW = words_for(K);
  const uint64_t* wp = reinterpret_cast<const uint64_t*>(packed.const_data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kChar, dst.scalar_type(), "decode_codes", [&] {
    scalar_t* o = dst.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / K), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) decode_row(wp + r * 2 * KW, wp + r * 2 * KW + KW, K, o + r * K);
    });
  });
}

void check_packed_rows(const at::Tensor& packed, int64_t rows, int64_t K, const char* name) {
  const uint64_t* wp = reinterpret_cast<const uint64_t*>(packed.const_data_ptr<int64_t>());
  const int64_t bad = first_bad_packed_row(wp, rows, K);
  TORCH_CHECK(bad < 0, name, " is not valid format-v1 data: row ", bad,
              " has a bit set in both the P and N planes or a padding bit (k >= K) set");
}

namespace {
TNA_MULTIVERSION void epilogue_block(float* __restrict y, int64_t inner, float s, float b, bool has_b) {
  if (has_b) {
    for (int64_t i = 0; i < inner; ++i) y[i] = y[i] * s + b;  // two roundings (-ffp-contract=off)
  } else {
    for (int64_t i = 0; i < inner; ++i) y[i] = y[i] * s;
  }
}
}  // namespace

void scale_bias_(at::Tensor& y, int64_t channel_dim, const at::Tensor& scale,
                 const std::optional<at::Tensor>& bias) {
  const int64_t N = y.size(channel_dim);
  if (y.scalar_type() != at::kFloat || !y.is_contiguous()) {
    std::vector<int64_t> shape(y.dim(), 1);
    shape[channel_dim] = N;
    y.mul_(scale.to(y.scalar_type()).view(shape));
    if (bias.has_value()) y.add_(bias->to(y.scalar_type()).view(shape));
    return;
  }
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < channel_dim; ++d) outer *= y.size(d);
  for (int64_t d = channel_dim + 1; d < y.dim(); ++d) inner *= y.size(d);
  float* yp = y.mutable_data_ptr<float>();
  const at::Tensor sc = scale.contiguous();
  const at::Tensor bb = bias.has_value() ? bias->contiguous() : at::Tensor();
  const float* sp = sc.const_data_ptr<float>();
  const float* bp = bias.has_value() ? bb.const_data_ptr<float>() : nullptr;
  if (inner == 1) {  // channels last: scale/bias vary along the contiguous axis
    at::parallel_for(0, outer, std::max<int64_t>(1, 262144 / N), [&](int64_t o0, int64_t o1) {
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
  at::parallel_for(0, outer * N, std::max<int64_t>(1, 262144 / inner), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r % N;
      epilogue_block(yp + r * inner, inner, sp[n], bp ? bp[n] : 0.f, bp != nullptr);
    }
  });
}

TORCH_LIBRARY_IMPL(tna, CPU, m) {
  m.impl("pack_ternary", &pack_ternary_cpu);
  m.impl("unpack_ternary", &unpack_ternary_cpu);
  m.impl("pack_spikes", &pack_spikes_cpu);
  m.impl("unpack_spikes", &unpack_spikes_cpu);
  m.impl("ternarize", &ternarize_cpu);
}

}  // namespace tna::ternary
