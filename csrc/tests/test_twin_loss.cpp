// C++ test (ctest): calls the twin loss and spike max-pool kernels through their raw-pointer entry
// points (csrc/cpu/twin_loss.h, spike_pool.h), no Python or torch, and checks hand-computed cases.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/spike_pool.h"
#include "cpu/twin_loss.h"

namespace {
int failures = 0;

void expect_near(double got, double want, const char* what, double tol = 1e-6) {
  if (!(std::abs(got - want) <= tol)) {
    std::printf("FAIL %s: got %.9f, want %.9f\n", what, got, want);
    ++failures;
  }
}

void expect_error(const char* what, const char* needle, void (*f)()) {
  try {
    f();
    std::printf("FAIL %s: no error\n", what);
    ++failures;
  } catch (const tna::Error& e) {
    if (std::string(e.what()).find(needle) == std::string::npos) {
      std::printf("FAIL %s: error '%s' lacks '%s'\n", what, e.what(), needle);
      ++failures;
    }
  }
}

// One row, two classes, target 0, weights 1, mse_reduction 'mean' (D = B*C = 2), no smoothing:
//   a = [0, 0]:  CE_a = log 2;                   dCE_a/da = softmax(a) - e_0 = [-1/2, 1/2]
//   b = [1, -1]: CE_b = log(1 + e^-2);           dCE_b/db = [s - 1, 1 - s], s = 1 / (1 + e^-2)
//   d = a - b = [-1, 1]: MSE = 2 / 2 = 1;        dMSE/da = 2 d / 2 = d = -dMSE/db
void hand_case(tna::DType dtype) {
  using T = float;
  const T a[2] = {0.0f, 0.0f}, b[2] = {1.0f, -1.0f};
  const int64_t y[1] = {0};
  T loss = 0, parts[3] = {}, ga[2] = {}, gb[2] = {};
  tna::twin_loss_fwd(dtype, a, b, y, 1, 2, 1.0, 1.0, 1.0, 0, 0.0, -100, &loss, parts, ga, gb);
  const double s = 1.0 / (1.0 + std::exp(-2.0));
  const double ce_a = std::log(2.0), ce_b = std::log1p(std::exp(-2.0));
  expect_near(parts[0], ce_a, "CE_a");
  expect_near(parts[1], ce_b, "CE_b");
  expect_near(parts[2], 1.0, "MSE");
  expect_near(loss, ce_a + ce_b + 1.0, "loss");
  expect_near(ga[0], -0.5 - 1.0, "grad_base[0]");
  expect_near(ga[1], 0.5 + 1.0, "grad_base[1]");
  expect_near(gb[0], (s - 1.0) + 1.0, "grad_twin[0]");
  expect_near(gb[1], (1.0 - s) - 1.0, "grad_twin[1]");

  // backward: grad_loss = -2 scales both gradients
  const T go = -2.0f;
  T oa[2] = {}, ob[2] = {};
  tna::twin_loss_bwd(dtype, &go, ga, gb, 2, 2, oa, ob);
  expect_near(oa[1], -2.0 * ga[1], "bwd grad_base[1]");
  expect_near(ob[0], -2.0 * gb[0], "bwd grad_twin[0]");
}

// Three rows of nine equal logits (the vector path with an overlapping last vector), the middle row
// ignored: CE = log 9 over the N = 2 valid rows; dL/da = (1/9 - [j = y]) / N on valid rows, 0 on
// the ignored one; no MSE (a = b). The twin gradient is not requested (null).
void ignored_row_case() {
  const int64_t B = 3, C = 9;
  std::vector<float> a(B * C, 0.0f), ga(B * C, 42.0f);
  const int64_t y[3] = {3, -100, 8};
  float loss = 0, parts[3] = {};
  tna::twin_loss_fwd(tna::DType::kFloat32, a.data(), a.data(), y, B, C, 1.0, 0.5, 0.3, 1, 0.0, -100, &loss,
                     parts, ga.data(), nullptr);
  expect_near(parts[0], std::log(9.0), "CE_a (ignored row)");
  expect_near(parts[2], 0.0, "MSE (a = b)");
  expect_near(loss, 1.5 * std::log(9.0), "loss (ignored row)");
  expect_near(ga[0 * C + 0], (1.0 / 9.0) / 2.0, "grad row 0, j != y");
  expect_near(ga[0 * C + 3], (1.0 / 9.0 - 1.0) / 2.0, "grad row 0, j = y");
  expect_near(ga[1 * C + 5], 0.0, "grad of the ignored row");
  expect_near(ga[2 * C + 8], (1.0 / 9.0 - 1.0) / 2.0, "grad row 2, j = y (last column)");
}

// 2x2 max-pool of one 4x4 plane of spikes, and its backward from the packed bits: each window's
// gradient goes to its first spike, or to its first element when it has none.
void pool_case() {
  const float x[16] = {0, 0, 0, 1,  //
                       0, 0, 1, 1,  //
                       0, 0, 0, 0,  //
                       0, 1, 0, 0};
  uint64_t bits = 0;
  for (int k = 0; k < 16; ++k) bits |= uint64_t(x[k] != 0) << k;
  const tna::PoolGeometry g = tna::pool_geometry({2, 2}, {2, 2}, {0, 0}, {1, 1});
  const auto [OH, OW] = tna::pool_output_size({1, 1, 4, 4}, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false);
  expect_near(OH * 10 + OW, 22, "pooled size");
  float y[4] = {};
  tna::spike_max_pool2d(tna::DType::kFloat32, x, y, 1, 1, 4, 4, g, false);
  const float want_y[4] = {0, 1, 1, 0};
  for (int i = 0; i < 4; ++i) expect_near(y[i], want_y[i], "pool y");
  const float gy[4] = {1, 2, 3, 4};
  float gx[16];
  std::memset(gx, 0xff, sizeof gx);  // NaN: the kernel must write every element
  tna::spike_max_pool2d_backward(tna::DType::kFloat32, gy, &bits, gx, 1, 1, 4, 4, g, false);
  float want[16] = {};
  want[0] = 1;       // window (0, 0): no spike, first element
  want[3] = 2;       // window (0, 1): first spike at (0, 3)
  want[13] = 3;      // window (1, 0): spike at (3, 1)
  want[10] = 4;      // window (1, 1): no spike, first element (2, 2)
  for (int k = 0; k < 16; ++k) expect_near(gx[k], want[k], "pool grad_x");
}

}  // namespace

int main() {
  tna::ThreadsScope threads(2);
  hand_case(tna::DType::kFloat32);
  ignored_row_case();
  pool_case();
  expect_error("target out of range", "target[0] = 5", [] {
    const float a[2] = {0, 0};
    const int64_t y[1] = {5};
    float loss, parts[3];
    tna::twin_loss_fwd(tna::DType::kFloat32, a, a, y, 1, 2, 1.0, 1.0, 0.0, 0, 0.0, -100, &loss, parts,
                       nullptr, nullptr);
  });
  expect_error("mse_reduction", "mse_reduction must be 0", [] {
    const float a[2] = {0, 0};
    const int64_t y[1] = {0};
    float loss, parts[3];
    tna::twin_loss_fwd(tna::DType::kFloat32, a, a, y, 1, 2, 1.0, 1.0, 0.0, 2, 0.0, -100, &loss, parts,
                       nullptr, nullptr);
  });
  expect_error("pool padding", "padding must be at most half the kernel size",
               [] { tna::pool_geometry({2, 2}, {2, 2}, {2, 2}, {1, 1}); });
  if (failures == 0) std::printf("test_twin_loss: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
