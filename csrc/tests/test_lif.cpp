// C++ test (ctest): calls tna::lif_fwd / tna::lif_bwd through the dispatcher, as libtorch users
// would, and checks a hand-computed trajectory and gradient.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>

namespace {
int failures = 0;

void expect_near(double got, double want, const char* what) {
  if (std::abs(got - want) > 1e-6) {
    std::printf("FAIL %s: got %.9f, want %.9f\n", what, got, want);
    ++failures;
  }
}
}  // namespace

int main() {
  auto fwd = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("tna::lif_fwd", "")
                 .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                     const at::Tensor&, const std::optional<at::Tensor>&, double, bool, double, double, bool,
                     bool, c10::string_view, double, bool)>();
  auto bwd = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("tna::lif_bwd", "")
                 .typed<std::tuple<at::Tensor, at::Tensor>(
                     const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, double, bool, double,
                     double, bool, bool, c10::string_view, double)>();

  // One neuron, tau = 2, decay_input, threshold 1, hard reset to 0; x = 1.5, 1.5, 0.2.
  // h0 = 0.75 (no spike, v = 0.75); h1 = 0.75 + (1.5 - 0.75)/2 = 1.125 (spike, v = 0);
  // h2 = 0 + 0.2/2 = 0.1 (no spike).
  at::Tensor x = at::tensor({1.5f, 1.5f, 0.2f}).reshape({3, 1});
  at::Tensor v0 = at::zeros({1});
  auto [s, v_last, h] = fwd.call(x, v0, 2.0, true, 1.0, 0.0, false, false, "atan", 2.0, true);
  const float want_s[3] = {0, 1, 0};
  const float want_h[3] = {0.75f, 1.125f, 0.1f};
  for (int t = 0; t < 3; ++t) {
    expect_near(s[t][0].item<float>(), want_s[t], "spike");
    expect_near(h[t][0].item<float>(), want_h[t], "h");
  }
  expect_near(v_last[0].item<float>(), 0.1, "v_last");

  // Backward with rectangle surrogate (alpha = 1: sg = 1 for |h - 1| < 0.5, else 0), detach_reset,
  // dL/ds = (0, 0, 1), dL/dv_last = 0. At t = 2: sg(0.1 - 1) = 0, so every gradient is zero
  // except through the step at t = 2 itself: grad_x = 0 everywhere.
  at::Tensor gs = at::tensor({0.f, 0.f, 1.f}).reshape({3, 1});
  auto [gx, gv0] = bwd.call(gs, at::zeros({1}), h, 2.0, true, 1.0, 0.0, false, true, "rectangle",
                            1.0);
  for (int t = 0; t < 3; ++t) expect_near(gx[t][0].item<float>(), 0.0, "grad_x (zero)");
  // dL/ds = (1, 0, 0): at t = 0, sg(0.75 - 1) = 1 -> gh = 1, grad_x[0] = 1/2, grad_v0 = 1 - 1/2.
  gs = at::tensor({1.f, 0.f, 0.f}).reshape({3, 1});
  std::tie(gx, gv0) = bwd.call(gs, at::zeros({1}), h, 2.0, true, 1.0, 0.0, false, true,
                               "rectangle", 1.0);
  expect_near(gx[0][0].item<float>(), 0.5, "grad_x[0]");
  expect_near(gv0[0].item<float>(), 0.5, "grad_v0");

  std::printf(failures == 0 ? "test_lif: all checks passed\n" : "test_lif: %d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
