// C++ test (ctest): calls the LIF entry points (csrc/cpu/lif.h, lif_pack.h) on raw buffers, as a
// C++ user of the native core would, and checks a hand-computed trajectory and gradient, the
// recompute backward against the saved-membrane one, the packed LIF, and the argument checks.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/lif.h"
#include "cpu/lif_pack.h"

namespace {
int failures = 0;

void expect_near(double got, double want, const char* what) {
  if (std::abs(got - want) > 1e-6) {
    std::printf("FAIL %s: got %.9f, want %.9f\n", what, got, want);
    ++failures;
  }
}

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL %s\n", what);
    ++failures;
  }
}

template <typename F>
void expect_error(F&& f, const char* contains) {
  try {
    f();
  } catch (const tna::Error& e) {
    if (std::string(e.what()).find(contains) == std::string::npos) {
      std::printf("FAIL error '%s' does not contain '%s'\n", e.what(), contains);
      ++failures;
    }
    return;
  }
  std::printf("FAIL no error (expected '%s')\n", contains);
  ++failures;
}

int surrogate(const char* name) {
  for (int i = 0; i < tna::kNumLifSurrogates; ++i) {
    if (std::strcmp(tna::kLifSurrogates[i], name) == 0) return i;
  }
  return -1;
}

// tau = 2, decay_input, threshold 1, hard reset to 0.
tna::LifHyper hyper(const char* sur, double alpha, bool detach) {
  return {2.0, true, 1.0, 0.0, false, detach, surrogate(sur), alpha};
}
}  // namespace

int main() {
  tna::ThreadsScope threads(2);
  const auto f32 = tna::DType::kFloat32;

  // One neuron; x = 1.5, 1.5, 0.2.
  // h0 = 0.75 (no spike, v = 0.75); h1 = 0.75 + (1.5 - 0.75)/2 = 1.125 (spike, v = 0);
  // h2 = 0 + 0.2/2 = 0.1 (no spike).
  const float x[3] = {1.5f, 1.5f, 0.2f};
  const float v0[1] = {0.0f};
  float s[3], h[3], v_last[1];
  tna::lif_fwd(f32, x, 1, v0, 3, 1, hyper("atan", 2.0, false), s, v_last, h);
  const float want_s[3] = {0, 1, 0};
  const float want_h[3] = {0.75f, 1.125f, 0.1f};
  for (int t = 0; t < 3; ++t) {
    expect_near(s[t], want_s[t], "spike");
    expect_near(h[t], want_h[t], "h");
  }
  expect_near(v_last[0], 0.1, "v_last");

  // Backward with rectangle surrogate (alpha = 1: sg = 1 for |h - 1| < 0.5, else 0), detach_reset,
  // dL/ds = (0, 0, 1), dL/dv_last = 0. At t = 2: sg(0.1 - 1) = 0, so every gradient is zero
  // except through the step at t = 2 itself: grad_x = 0 everywhere.
  const float zero[1] = {0.0f};
  float gx[3], gv0[1];
  const float gs1[3] = {0.f, 0.f, 1.f};
  tna::lif_bwd(f32, gs1, zero, h, 3, 1, hyper("rectangle", 1.0, true), gx, gv0);
  for (int t = 0; t < 3; ++t) expect_near(gx[t], 0.0, "grad_x (zero)");
  // dL/ds = (1, 0, 0): at t = 0, sg(0.75 - 1) = 1 -> gh = 1, grad_x[0] = 1/2, grad_v0 = 1 - 1/2.
  const float gs2[3] = {1.f, 0.f, 0.f};
  tna::lif_bwd(f32, gs2, zero, h, 3, 1, hyper("rectangle", 1.0, true), gx, gv0);
  expect_near(gx[0], 0.5, "grad_x[0]");
  expect_near(gv0[0], 0.5, "grad_v0");
  // The recompute backward from x and v0 gives the same bits (null grad_v_last: zero).
  float gx_r[3], gv0_r[1];
  tna::lif_bwd_recompute(f32, gs2, 1, nullptr, x, 1, v0, 3, 1, hyper("rectangle", 1.0, true), gx_r,
                         gv0_r);
  expect(std::memcmp(gx, gx_r, sizeof gx) == 0 && gv0[0] == gv0_r[0], "recompute == saved h");

  // Many neurons over several threads, blocks and tiles, every dtype path agreeing with float64
  // on the spikes; an input repeated over time (row step 0) equals its materialised copy.
  {
    const int64_t T = 4, N = 3000;
    std::vector<float> xs(T * N), xr(T * N);
    std::vector<double> xd(T * N);
    for (int64_t i = 0; i < T * N; ++i) {
      xs[i] = static_cast<float>(0.6 + 1.5 * std::sin(0.37 * double(i)));
      xd[i] = xs[i];
    }
    for (int64_t t = 0; t < T; ++t) std::memcpy(&xr[t * N], xs.data(), N * sizeof(float));
    std::vector<float> sf(T * N), vf(N), sr(T * N), vr(N);
    std::vector<double> sd(T * N), vd(N);
    const tna::LifHyper p = hyper("sigmoid", 2.0, false);
    tna::lif_fwd(f32, xs.data(), N, nullptr, T, N, p, sf.data(), vf.data(), nullptr);
    tna::lif_fwd(tna::DType::kFloat64, xd.data(), N, nullptr, T, N, p, sd.data(), vd.data(), nullptr);
    bool same = true;
    for (int64_t i = 0; i < T * N; ++i) same &= sf[i] == static_cast<float>(sd[i]);
    expect(same, "float32 spikes == float64 spikes");
    tna::lif_fwd(f32, xs.data(), 0, nullptr, T, N, p, sf.data(), vf.data(), nullptr);
    tna::lif_fwd(f32, xr.data(), N, nullptr, T, N, p, sr.data(), vr.data(), nullptr);
    expect(sf == sr && vf == vr, "row step 0 == materialised repeat");
  }

  // Packed LIF: 70 channels -> 2 words per row, bit n of word n / 64.
  {
    const int64_t T = 2, rows = 3, C = 70, NW = 2;
    std::vector<float> xs(T * rows * C, 0.0f);
    xs[0 * rows * C + 1 * C + 65] = 3.0f;  // t = 0, row 1, channel 65 fires
    xs[1 * rows * C + 2 * C + 3] = 3.0f;   // t = 1, row 2, channel 3 fires
    std::vector<uint64_t> out(T * rows * NW, ~uint64_t(0));
    tna::lif_pack(xs.data(), T, rows, C, {2.0f, 1.0f, 0.0f, true, false}, out.data());
    for (int64_t i = 0; i < T * rows * NW; ++i) {
      const uint64_t want = i == 0 * rows * NW + 1 * NW + 1 ? uint64_t(1) << 1
                            : i == 1 * rows * NW + 2 * NW + 0 ? uint64_t(1) << 3
                                                              : 0;
      expect(out[i] == want, "lif_pack word");
    }
  }

  // Argument checks name the argument.
  expect_error([&] { tna::lif_fwd(f32, x, 1, v0, 3, 1, {0.0, true, 1.0, 0.0, false, false, 0, 2.0}, s, v_last, h); },
               "tau must be a finite number > 0");
  expect_error([&] { tna::lif_fwd(f32, x, 1, v0, 3, 1, hyper("nope", 2.0, false), s, v_last, h); },
               "surrogate must be one of");
  expect_error([&] { tna::lif_fwd(f32, x, 1, v0, 0, 1, hyper("atan", 2.0, false), s, v_last, h); },
               "x_seq must be [T, ...]");
  expect_error([&] { tna::lif_fwd(tna::DType::kInt32, x, 1, v0, 3, 1, hyper("atan", 2.0, false), s, v_last, h); },
               "x_seq must be a floating-point tensor");
  expect_error([&] { tna::lif_bwd(f32, gs2, zero, h, 3, 1, hyper("atan", 0.0, false), gx, gv0); },
               "alpha must be");
  expect_error([&] {
    uint64_t w[1];
    tna::lif_pack(x, 3, 1, 1, {-1.0f, 1.0f, 0.0f, true, false}, w);
  }, "tau must be");

  std::printf(failures == 0 ? "test_lif: all checks passed\n" : "test_lif: %d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
