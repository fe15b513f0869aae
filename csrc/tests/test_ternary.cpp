// C++ tests of the ternary kernels of the native core, on raw pointers (ctest, no Python, no torch):
// the golden packing example of docs/FORMAT.md, spike x ternary against a naive integer loop on
// every kernel path this CPU has (TNA_TERNARY_ISA x TNA_TERNARY_ALGO), linear and conv, and the
// error messages of bad input.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "cpu/ternary.h"

namespace {

namespace tt = tna::ternary;

int failures = 0;

#define EXPECT(cond)                                                                   \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::cerr << __FILE__ << ":" << __LINE__ << ": EXPECT(" #cond ") failed\n";      \
      ++failures;                                                                      \
    }                                                                                  \
  } while (0)

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const tna::Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

std::vector<int64_t> pack_ternary(const std::vector<int8_t>& c, int64_t rows, int64_t K) {
  std::vector<int64_t> w(static_cast<size_t>(rows * 2 * tt::words_for(K)));
  tt::pack_ternary(c.data(), rows, K, w.data());
  return w;
}

std::vector<int64_t> pack_spikes(const std::vector<float>& s, int64_t rows, int64_t K) {
  std::vector<int64_t> bits(static_cast<size_t>(rows * tt::words_for(K)));
  tt::pack_spikes(s.data(), tna::DType::kFloat32, rows, K, 1, bits.data());
  return bits;
}

std::mt19937 rng(0);
std::vector<int8_t> rand_codes(int64_t n) {
  std::uniform_int_distribution<int> d(-1, 1);
  std::vector<int8_t> c(static_cast<size_t>(n));
  for (auto& v : c) v = static_cast<int8_t>(d(rng));
  return c;
}
std::vector<float> rand_spikes(int64_t n, double density) {
  std::bernoulli_distribution d(density);
  std::vector<float> s(static_cast<size_t>(n));
  for (auto& v : s) v = d(rng) ? 1.f : 0.f;
  return s;
}
std::vector<float> rand_floats(int64_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// Runs f(isa, algo) on every kernel path this CPU has; returns how many ran.
template <typename F>
int for_each_path(F&& f) {
  int paths = 0;
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    setenv("TNA_TERNARY_ISA", isa, 1);
    if (!error_of([] { tt::select_isa(); }).empty()) continue;  // not on this CPU
    EXPECT(std::string(tt::isa_name(tt::select_isa())) == isa);
    for (const char* algo : {"popcount", "event"}) {
      setenv("TNA_TERNARY_ALGO", algo, 1);
      if (std::string(isa) == "scalar" && std::string(algo) == "event") continue;
      f(isa, algo);
      ++paths;
    }
  }
  unsetenv("TNA_TERNARY_ISA");
  unsetenv("TNA_TERNARY_ALGO");
  return paths;
}

void test_golden_packing() {
  std::vector<int8_t> c(2 * 65, 0);
  c[0] = c[3] = c[63] = 1;
  c[1] = c[64] = -1;
  for (int k = 0; k < 65; ++k) c[65 + k] = 1;
  const std::vector<int64_t> w = pack_ternary(c, 2, 65);  // [2, 2, 2]
  EXPECT(static_cast<uint64_t>(w[0]) == ((1ull << 0) | (1ull << 3) | (1ull << 63)));
  EXPECT(w[1] == 0);
  EXPECT(w[2] == 2 && w[3] == 1);
  EXPECT(w[4] == -1 && w[5] == 1 && w[6] == 0 && w[7] == 0);
  std::vector<int8_t> back(c.size());
  tt::unpack_ternary(w.data(), 2, 65, back.data());
  EXPECT(back == c);
  std::vector<float> s(2 * 65, 0.f);
  s[0] = s[2] = s[64] = 1.f;
  const std::vector<int64_t> bits = pack_spikes(s, 2, 65);
  EXPECT(bits == std::vector<int64_t>({5, 1, 0, 0}));
  std::vector<uint8_t> sb(s.size());
  tt::unpack_spikes(bits.data(), 2, 65, sb.data());
  for (size_t i = 0; i < s.size(); ++i) EXPECT(sb[i] == static_cast<uint8_t>(s[i]));
}

void test_spike_linear_all_paths() {
  const int64_t M = 37, N = 70, K = 300;
  const std::vector<int8_t> c = rand_codes(N * K);
  const std::vector<float> s = rand_spikes(M * K, 0.15);
  const std::vector<float> scale = rand_floats(N, 0.1f, 1.1f), bias = rand_floats(N, -2.f, 2.f);
  // Naive reference: exact integer sums, then the float32 epilogue in the same order.
  std::vector<float> ref(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      int64_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += s[m * K + k] == 1.f ? c[n * K + k] : 0;
      const float y = static_cast<float>(acc) * scale[n];
      ref[m * N + n] = y + bias[n];
    }
  }
  const std::vector<int64_t> w = pack_ternary(c, N, K), bits = pack_spikes(s, M, K);
  std::vector<int8_t> km(static_cast<size_t>(tt::words_for(K) * 64 * tt::kmajor_ld(N)));
  tt::ternary_kmajor(w.data(), N, 1, K, km.data());
  const int paths = for_each_path([&](const char*, const char*) {
    for (const int8_t* cached : {static_cast<const int8_t*>(nullptr), static_cast<const int8_t*>(km.data())}) {
      std::vector<float> y(ref.size(), -7.f);
      tt::spike_ternary_linear(bits.data(), M, w.data(), N, K, scale.data(), bias.data(), cached, y.data());
      EXPECT(y == ref);
    }
  });
  EXPECT(paths >= 1);
  setenv("TNA_TERNARY_ISA", "scalar", 1);
  setenv("TNA_TERNARY_ALGO", "event", 1);
  std::vector<float> y(ref.size());
  EXPECT(contains(error_of([&] {
                    tt::spike_ternary_linear(bits.data(), M, w.data(), N, K, scale.data(), nullptr,
                                             nullptr, y.data());
                  }),
                  "TNA_TERNARY_ALGO=event needs the avx2 or avx512 kernels"));
  unsetenv("TNA_TERNARY_ISA");
  unsetenv("TNA_TERNARY_ALGO");
}

void test_spike_conv_all_paths() {
  // spikes [B, H, W, C] packed along C; weight [N, kh, kw, C]; stride 2, padding 1, dilation 1.
  const int64_t B = 2, H = 7, W = 6, C = 70, N = 5, kh = 3, kw = 3;
  const tt::ConvShape g{B, H, W, C, N, kh, kw, 2, 2, 1, 1, 1, 1};
  const int64_t OH = tt::conv_out_size(H, kh, 2, 1, 1), OW = tt::conv_out_size(W, kw, 2, 1, 1);
  const std::vector<int8_t> c = rand_codes(N * kh * kw * C);
  const std::vector<float> s = rand_spikes(B * H * W * C, 0.1);
  const std::vector<float> scale = rand_floats(N, 0.1f, 1.1f);
  std::vector<float> ref(static_cast<size_t>(B * OH * OW * N));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        for (int64_t n = 0; n < N; ++n) {
          int64_t acc = 0;
          for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) {
              const int64_t ih = oh * 2 - 1 + i, iw = ow * 2 - 1 + j;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              for (int64_t ch = 0; ch < C; ++ch)
                acc += s[((b * H + ih) * W + iw) * C + ch] == 1.f ? c[((n * kh + i) * kw + j) * C + ch] : 0;
            }
          ref[((b * OH + oh) * OW + ow) * N + n] = static_cast<float>(acc) * scale[n];
        }
  const std::vector<int64_t> w = pack_ternary(c, N * kh * kw, C), bits = pack_spikes(s, B * H * W, C);
  const int paths = for_each_path([&](const char*, const char*) {
    std::vector<float> y(ref.size(), -7.f);
    tt::spike_ternary_conv2d(g, bits.data(), w.data(), scale.data(), nullptr, nullptr, y.data());
    EXPECT(y == ref);
  });
  EXPECT(paths >= 1);
  tt::ConvShape tiny = g;
  tiny.H = 1;
  tiny.ph = 0;
  std::vector<float> y(ref.size());
  EXPECT(contains(error_of([&] {
                    tt::spike_ternary_conv2d(tiny, bits.data(), w.data(), scale.data(), nullptr, nullptr,
                                             y.data());
                  }),
                  "too small for kernel 3x3"));
}

void test_float_linear_direct() {
  const int64_t M = 3, N = 9, K = 130;
  const std::vector<int8_t> c = rand_codes(N * K);
  const std::vector<float> x = rand_floats(M * K, -1.f, 1.f);
  const std::vector<int64_t> w = pack_ternary(c, N, K);
  std::vector<float> ref(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += double(x[m * K + k]) * c[n * K + k];
      ref[m * N + n] = static_cast<float>(acc);
    }
  for_each_path([&](const char*, const char* algo) {
    if (std::string(algo) == "event") return;
    std::vector<float> y(ref.size());
    tt::ternary_linear_direct(x.data(), M, K, w.data(), N, nullptr, nullptr, y.data());
    for (size_t i = 0; i < y.size(); ++i) EXPECT(std::abs(y[i] - ref[i]) < 1e-4f);
  });
  // decode_codes and decode_block_f32 give the codes back exactly
  std::vector<float> d(static_cast<size_t>(N * K));
  tt::decode_codes(w.data(), N, K, tna::DType::kFloat32, d.data());
  for (size_t i = 0; i < d.size(); ++i) EXPECT(d[i] == c[i]);
  std::vector<float> blk(static_cast<size_t>(N * 64));
  tt::decode_block_f32(w.data(), N, K, 64, 128, blk.data(), 64);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < 64; ++k) EXPECT(blk[n * 64 + k] == c[n * K + 64 + k]);
}

void test_errors() {
  std::vector<int8_t> c(3 * 10, 0);
  c[14] = 2;
  std::vector<int64_t> w(3 * 2);
  EXPECT(contains(error_of([&] { tt::pack_ternary(c.data(), 3, 10, w.data()); }),
                  "codes must contain only -1, 0 and +1 (ternary); found 2 at flat index 14"));
  EXPECT(contains(error_of([] { tt::check_version(2); }),
                  "version: this build reads packed ternary format v1 only, got v2"));
  c[14] = 0;
  tt::pack_ternary(c.data(), 3, 10, w.data());
  w[2] |= 1;  // row 1: bit 0 in P
  w[3] |= 1;  // ... and in N
  EXPECT(contains(error_of([&] { tt::check_packed_rows(w.data(), 3, 10, "packed_w"); }),
                  "packed_w is not valid format-v1 data: row 1 has a bit set in both the P and N planes"));
  std::vector<float> s(2 * 10, 0.f);
  s[13] = 0.5f;
  std::vector<int64_t> bits(2);
  EXPECT(contains(error_of([&] { tt::pack_spikes(s.data(), tna::DType::kFloat32, 2, 10, 1, bits.data()); }),
                  "spikes must contain only 0 and 1; found 0.5 at flat index 13"));
  setenv("TNA_TERNARY_ISA", "sse9", 1);
  EXPECT(contains(error_of([] { tt::select_isa(); }), "TNA_TERNARY_ISA must be one of auto, scalar"));
  unsetenv("TNA_TERNARY_ISA");
}

}  // namespace

int main() {
  test_golden_packing();
  test_spike_linear_all_paths();
  test_spike_conv_all_paths();
  test_float_linear_direct();
  test_errors();
  if (failures) {
    std::cerr << failures << " check(s) failed\n";
    return 1;
  }
  std::cout << "test_ternary: all checks passed\n";
  return 0;
}
