// Fused twin loss, CPU (tna_kernels/reference.py::twin_loss is the spec).
//
// Inputs: logits a = logits_base [B, C], b = logits_twin [B, C] (same dtype), target y [B] int64
// (a class in [0, C) or ignore_index). V = {i : y_i != ignore_index}, N = |V|, eps = label
// smoothing, wa / wb / lam = the CE(base) / CE(twin) / MSE weights, D = B*C (mse_reduction 0,
// "mean", torch's F.mse_loss) or D = B (mse_reduction 1, "sum_over_batch", the authors' sum/B).
//
// Forward, per row i (one sweep per tensor, float accumulation for bf16/half, double for double):
//   m     = max_j x_ij;  e_ij = exp(x_ij - m);  s = sum_j e_ij;  lse = m + log s
//   ce_i  = lse - (1 - eps) x_{i,y_i} - eps/C sum_j x_ij          (torch's label smoothing)
//   d_ij  = a_ij - b_ij;  mse_i = sum_j d_ij^2                     (every row, ignored ones too)
//   CE_a  = sum_{i in V} ce_i(a) / N, and 0 when N = 0 (all rows ignored: defined, no NaN);
//   same for CE_b;  MSE = sum_i mse_i / D;   loss = wa CE_a + wb CE_b + lam MSE
//   parts = (CE_a, CE_b, MSE), unweighted, for logging.
// Gradient for grad_output = 1 (written in a second sweep of the row while it is still in L1,
// reusing the e_ij kept in a per-thread scratch row, so exp runs once per element):
//   dL/da_ij = [i in V] wa/N (e_ij/s - (1 - eps) 1[j = y_i] - eps/C) + 2 lam/D d_ij
//   dL/db_ij = [i in V] wb/N (e_ij/s - (1 - eps) 1[j = y_i] - eps/C) - 2 lam/D d_ij
// The gradients are new buffers in the logits' dtype (the caller's logits are never written);
// autograd saves them and backward only multiplies by grad_output. need_grad_base/twin = false
// skips that tensor's gradient (returned as an empty tensor).
//
// Layout and order: a serial pass over target validates it (range or ignore_index) and counts N
// first, so the gradients can be scaled in the same parallel sweep. Rows are split across threads
// with at::parallel_for; each row writes its three partial sums to a [B, 3] buffer that one
// thread adds in row order, so the result does not depend on the number of threads. In-row sums
// use 8 independent lanes (fixed order, vectorisable without -ffast-math) and a polynomial expf
// (Cephes, < 2 ulp on the range used), so the row loops vectorise in the AVX2 clone.
#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../common.h"

namespace tna {
namespace {

constexpr int64_t kLanes = 8;
constexpr int64_t kGrainElems = 16384;  // elements per thread chunk (rows * C)

// exp(x) for x <= 0 (all arguments here are x - max). Cephes expf: round x*log2(e) to n with the
// 1.5*2^23 trick, r = x - n ln2 in two parts, degree-6 polynomial, scale by 2^n through the
// exponent bits. Below -87 (e^-87 ~ 1.6e-38, the float normal limit) it returns exactly 0.
inline float exp_nonpos(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float t = xc * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : p * scale;
}

inline double exp_nonpos(double x) { return std::exp(x); }

template <typename scalar_t, typename acc_t>
TNA_MULTIVERSION acc_t row_max(const scalar_t* __restrict x, int64_t C) {
  acc_t lane[kLanes];
  for (int64_t k = 0; k < kLanes; ++k) lane[k] = -std::numeric_limits<acc_t>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      const acc_t v = static_cast<acc_t>(x[j + k]);
      lane[k] = v > lane[k] ? v : lane[k];
    }
  }
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (; j < C; ++j) {
    const acc_t v = static_cast<acc_t>(x[j]);
    m = v > m ? v : m;
  }
  for (int64_t k = 0; k < kLanes; ++k) m = lane[k] > m ? lane[k] : m;
  return m;
}

// e[j] = exp(x[j] - m); returns sum_j e[j] and, through sum_x, sum_j x[j].
template <typename scalar_t, typename acc_t>
TNA_MULTIVERSION acc_t row_exp_sum(const scalar_t* __restrict x, int64_t C, acc_t m,
                                   acc_t* __restrict e, acc_t* sum_x) {
  acc_t se[kLanes] = {}, sx[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      const acc_t v = static_cast<acc_t>(x[j + k]);
      const acc_t ev = exp_nonpos(v - m);
      e[j + k] = ev;
      se[k] += ev;
      sx[k] += v;
    }
  }
  acc_t s = 0, t = 0;
  for (; j < C; ++j) {
    const acc_t v = static_cast<acc_t>(x[j]);
    const acc_t ev = exp_nonpos(v - m);
    e[j] = ev;
    s += ev;
    t += v;
  }
  for (int64_t k = 0; k < kLanes; ++k) {
    s += se[k];
    t += sx[k];
  }
  *sum_x = t;
  return s;
}

template <typename scalar_t, typename acc_t>
TNA_MULTIVERSION acc_t row_sq_diff(const scalar_t* __restrict a, const scalar_t* __restrict b,
                                   int64_t C) {
  acc_t lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      const acc_t d = static_cast<acc_t>(a[j + k]) - static_cast<acc_t>(b[j + k]);
      lane[k] += d * d;
    }
  }
  acc_t s = 0;
  for (; j < C; ++j) {
    const acc_t d = static_cast<acc_t>(a[j]) - static_cast<acc_t>(b[j]);
    s += d * d;
  }
  for (int64_t k = 0; k < kLanes; ++k) s += lane[k];
  return s;
}

// g[j] = p * e[j] + c + k * (a[j] - b[j]), then g[y] gets the one-hot term (y < 0: none).
template <typename scalar_t, typename acc_t>
TNA_MULTIVERSION void row_grad(const acc_t* __restrict e, const scalar_t* __restrict a,
                               const scalar_t* __restrict b, scalar_t* __restrict g, int64_t C,
                               acc_t p, acc_t c, acc_t k, int64_t y, acc_t hot) {
  for (int64_t j = 0; j < C; ++j) {
    const acc_t d = static_cast<acc_t>(a[j]) - static_cast<acc_t>(b[j]);
    g[j] = static_cast<scalar_t>(p * e[j] + c + k * d);
  }
  if (y >= 0) {
    const acc_t d = static_cast<acc_t>(a[y]) - static_cast<acc_t>(b[y]);
    g[y] = static_cast<scalar_t>(p * e[y] + c + k * d + hot);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> twin_loss_fwd_cpu(
    const at::Tensor& logits_base, const at::Tensor& logits_twin, const at::Tensor& target,
    double ce_weight_base, double ce_weight_twin, double mse_weight, int64_t mse_reduction,
    double label_smoothing, int64_t ignore_index, bool need_grad_base, bool need_grad_twin) {
  TNA_CHECK_CPU(logits_base);
  TNA_CHECK_CPU(logits_twin);
  TNA_CHECK_CPU(target);
  TNA_CHECK_FLOATING(logits_base);
  TORCH_CHECK(logits_base.dim() == 2, "logits_base must be a 2-D [batch, classes] tensor, got shape ",
              logits_base.sizes());
  TORCH_CHECK(logits_base.size(1) >= 1, "logits_base must have at least one class, got shape ",
              logits_base.sizes());
  TNA_CHECK_DTYPE(logits_twin, logits_base.scalar_type());
  TNA_CHECK_SHAPE(logits_twin, logits_base.sizes());
  TNA_CHECK_DTYPE(target, at::kLong);
  TNA_CHECK_SHAPE(target, {logits_base.size(0)});
  TORCH_CHECK(std::isfinite(ce_weight_base), "ce_weight_base must be finite, got ", ce_weight_base);
  TORCH_CHECK(std::isfinite(ce_weight_twin), "ce_weight_twin must be finite, got ", ce_weight_twin);
  TORCH_CHECK(std::isfinite(mse_weight), "mse_weight must be finite, got ", mse_weight);
  TORCH_CHECK(mse_reduction == 0 || mse_reduction == 1,
              "mse_reduction must be 0 ('mean') or 1 ('sum_over_batch'), got ", mse_reduction);
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
              "label_smoothing must be in [0, 1], got ", label_smoothing);

  const at::Tensor a = logits_base.contiguous();
  const at::Tensor b = logits_twin.contiguous();
  const at::Tensor y = target.contiguous();
  const int64_t B = a.size(0);
  const int64_t C = a.size(1);

  // Count pass (serial, B int64 reads): validates every target and counts the rows that count.
  const int64_t* yp = y.const_data_ptr<int64_t>();
  int64_t n_valid = 0;
  for (int64_t i = 0; i < B; ++i) {
    const int64_t t = yp[i];
    if (t == ignore_index) continue;
    TORCH_CHECK(t >= 0 && t < C, "target must hold class indices in [0, ", C,
                ") or ignore_index (", ignore_index, "); target[", i, "] = ", t);
    ++n_valid;
  }

  const auto acc_type = at::toOpMathType(a.scalar_type());
  const auto acc_opts = a.options().dtype(acc_type);
  at::Tensor loss = at::empty({}, acc_opts);
  at::Tensor parts = at::empty({3}, acc_opts);
  at::Tensor grad_a = at::empty(need_grad_base ? a.sizes() : at::IntArrayRef{0}, a.options());
  at::Tensor grad_b = at::empty(need_grad_twin ? a.sizes() : at::IntArrayRef{0}, a.options());
  at::Tensor rows = at::empty({B, 3}, acc_opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "twin_loss_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* gap = need_grad_base ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gbp = need_grad_twin ? grad_b.mutable_data_ptr<scalar_t>() : nullptr;
    acc_t* rp = rows.mutable_data_ptr<acc_t>();
    const acc_t eps = static_cast<acc_t>(label_smoothing);
    const acc_t inv_n = n_valid > 0 ? acc_t(1) / static_cast<acc_t>(n_valid) : acc_t(0);
    const acc_t denom = mse_reduction == 0 ? static_cast<acc_t>(B) * static_cast<acc_t>(C)
                                           : static_cast<acc_t>(B);
    const acc_t k_mse = B > 0 ? acc_t(2) * static_cast<acc_t>(mse_weight) / denom : acc_t(0);
    const acc_t wa = static_cast<acc_t>(ce_weight_base) * inv_n;
    const acc_t wb = static_cast<acc_t>(ce_weight_twin) * inv_n;
    const acc_t smooth = eps / static_cast<acc_t>(C);
    const int64_t grain = std::max<int64_t>(1, kGrainElems / C);

    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(2 * C);
      acc_t* ea = scratch.data();
      acc_t* eb = scratch.data() + C;
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* ar = ap + i * C;
        const scalar_t* br = bp + i * C;
        const int64_t t = yp[i];
        const bool valid = t != ignore_index;
        acc_t sxa, sxb;
        const acc_t ma = row_max<scalar_t, acc_t>(ar, C);
        const acc_t sa = row_exp_sum<scalar_t, acc_t>(ar, C, ma, ea, &sxa);
        const acc_t mb = row_max<scalar_t, acc_t>(br, C);
        const acc_t sb = row_exp_sum<scalar_t, acc_t>(br, C, mb, eb, &sxb);
        const acc_t lsea = ma + std::log(sa);
        const acc_t lseb = mb + std::log(sb);
        acc_t* r = rp + 3 * i;
        if (valid) {
          const acc_t xa = static_cast<acc_t>(ar[t]);
          const acc_t xb = static_cast<acc_t>(br[t]);
          r[0] = lsea - (acc_t(1) - eps) * xa - smooth * sxa;
          r[1] = lseb - (acc_t(1) - eps) * xb - smooth * sxb;
        } else {
          r[0] = r[1] = acc_t(0);
        }
        r[2] = row_sq_diff<scalar_t, acc_t>(ar, br, C);
        const int64_t hot_at = valid ? t : -1;
        if (gap != nullptr) {
          const acc_t w = valid ? wa : acc_t(0);
          row_grad<scalar_t, acc_t>(ea, ar, br, gap + i * C, C, w / sa, -w * smooth, k_mse,
                                    hot_at, -w * (acc_t(1) - eps));
        }
        if (gbp != nullptr) {
          const acc_t w = valid ? wb : acc_t(0);
          row_grad<scalar_t, acc_t>(eb, ar, br, gbp + i * C, C, w / sb, -w * smooth, -k_mse,
                                    hot_at, -w * (acc_t(1) - eps));
        }
      }
    });

    acc_t ce_a = 0, ce_b = 0, sq = 0;
    for (int64_t i = 0; i < B; ++i) {
      ce_a += rp[3 * i];
      ce_b += rp[3 * i + 1];
      sq += rp[3 * i + 2];
    }
    ce_a *= inv_n;
    ce_b *= inv_n;
    const acc_t mse = B > 0 ? sq / denom : acc_t(0);
    acc_t* pp = parts.mutable_data_ptr<acc_t>();
    pp[0] = ce_a;
    pp[1] = ce_b;
    pp[2] = mse;
    *loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(ce_weight_base) * ce_a +
                                      static_cast<acc_t>(ce_weight_twin) * ce_b +
                                      static_cast<acc_t>(mse_weight) * mse;
  });
  return {loss, parts, grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(tna, CPU, m) { m.impl("twin_loss_fwd", &twin_loss_fwd_cpu); }

}  // namespace tna
