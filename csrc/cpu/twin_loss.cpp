// Fused twin loss, CPU (tna_kernels/reference.py::twin_loss is the spec).
//
// Inputs: logits a = logits_base [B, C], b = logits_twin [B, C] (same dtype), target y [B] int64
// (a class in [0, C) or ignore_index). V = {i : y_i != ignore_index}, N = |V|, eps = label
// smoothing, wa / wb / lam = the CE(base) / CE(twin) / MSE weights, D = B*C (mse_reduction 0,
// "mean", torch's F.mse_loss) or D = B (mse_reduction 1, "sum_over_batch", the authors' sum/B).
//
// Forward, per row i (float accumulation for float/bf16/half, double for double):
//   m     = max_j x_ij;  e_ij = exp(x_ij - m);  s = sum_j e_ij;  lse = m + log s
//   ce_i  = lse - (1 - eps) x_{i,y_i} - eps/C sum_j x_ij          (torch's label smoothing)
//   d_ij  = a_ij - b_ij;  mse_i = sum_j d_ij^2                     (every row, ignored ones too)
//   CE_a  = sum_{i in V} ce_i(a) / N, and 0 when N = 0 (all rows ignored: defined, no NaN);
//   same for CE_b;  MSE = sum_i mse_i / D;   loss = wa CE_a + wb CE_b + lam MSE
//   parts = (CE_a, CE_b, MSE), unweighted, for logging.
// Three sweeps per row pair, both rows at once, all in L1: (1) the two maxima, (2) e = exp(x - m)
// kept in a per-thread scratch row, s, sum x, sum d^2, (3) the gradients from the kept e (exp
// runs once per element). Gradient for grad_output = 1:
//   dL/da_ij = [i in V] wa/N (e_ij/s - (1 - eps) 1[j = y_i] - eps/C) + 2 lam/D d_ij
//   dL/db_ij = [i in V] wb/N (e_ij/s - (1 - eps) 1[j = y_i] - eps/C) - 2 lam/D d_ij
// The gradients are new buffers in the logits' dtype (the caller's logits are never written);
// autograd saves them (nothing else) and backward (tna::twin_loss_bwd) only multiplies them by
// grad_output. need_grad_base / need_grad_twin = false skips that gradient (an empty tensor).
//
// Layout and order: a serial pass over target validates it (range or ignore_index) and counts N
// first, so the gradients can be scaled in the same parallel sweep. Rows are split across threads
// with at::parallel_for; each row writes its three partial sums to a [B, 3] buffer that one
// thread adds in row order, so the result does not depend on the number of threads. In-row sums
// use 8 independent lanes (fixed order, vectorisable without -ffast-math) and a short polynomial
// exp (see exp_nonpos), so the row loops vectorise in the AVX2 clone.
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

// exp(d) for d <= 0 (every argument here is x - max(x)), in few vector instructions:
//   d <- max(d, -88);  t = d log2(e) + 1.5*2^23;  n = t - 1.5*2^23  (= round(d log2 e))
//   r = d - n ln2 (Cody-Waite: ln2 in two parts, |r| <= ln2/2)
//   p = degree-6 polynomial fit of e^r (c0 = c1 = 1), evaluated in Estrin's scheme (a short
//       dependency chain)
//   result = p * 2^n, with 2^n built in the exponent bits from t's low mantissa bits, and 0 when
//       n < -126 (d < ~-87.3: e^d is below the smallest normal float)
// Measured: relative error < 1.7e-7 on [-87, 0]. Scalar and vector forms compute the same
// operations, so the tail of a row rounds like its body.
constexpr float kExpC[7] = {1.0f, 1.0f, 0.49999991059303284f, 0.16666419804096222f,
                            0.04166822507977486f, 0.008374815806746483f, 0.0013836845755577087f};
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;  // few mantissa bits: n * kLn2Hi is exact
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
constexpr int32_t kRoundBits = 0x4B400000;

inline float exp_nonpos(float d) {
  d = d > -88.0f ? d : -88.0f;
  const float t = d * kLog2e + kRound;
  const float n = t - kRound;
  const float r = (d - n * kLn2Hi) - n * kLn2Lo;
  const float r2 = r * r;
  const float p = ((1.0f + r) + r2 * (kExpC[2] + kExpC[3] * r)) +
                  (r2 * r2) * ((kExpC[4] + kExpC[5] * r) + r2 * kExpC[6]);
  int32_t tb;
  std::memcpy(&tb, &t, sizeof(tb));
  int32_t e = tb - kRoundBits + 127;
  e = e > 0 ? e : 0;
  const int32_t bits = e << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline double exp_nonpos(double x) { return std::exp(x); }

// Lanes of kLanes accumulators, as a GCC/Clang vector type: the float max reduction only
// vectorises this way (without -ffast-math), and the fixed lane order keeps results identical
// between the AVX2 and the portable clone.
// The helpers that take or return vector types are force-inlined into each clone: an out-of-line
// copy would be compiled for the portable target and called with the AVX2 clone's vector ABI.
#define TNA_VEC_INLINE inline __attribute__((always_inline))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // hence no vector-typed value crosses a call boundary
#endif
template <typename acc_t>
struct LanesOf;
template <>
struct LanesOf<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct LanesOf<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double))));
};
template <typename acc_t>
using Lanes = typename LanesOf<acc_t>::type;

template <typename scalar_t, typename acc_t>
TNA_VEC_INLINE Lanes<acc_t> load_lanes(const scalar_t* __restrict x) {
  Lanes<acc_t> v;
  for (int64_t k = 0; k < kLanes; ++k) v[k] = static_cast<acc_t>(x[k]);
  return v;
}

// The first `rest` (< kLanes) elements of x, the other lanes set to `pad`.
template <typename scalar_t, typename acc_t>
TNA_VEC_INLINE Lanes<acc_t> load_tail(const scalar_t* __restrict x, int64_t rest, acc_t pad) {
  acc_t tmp[kLanes];
  for (int64_t k = 0; k < kLanes; ++k) tmp[k] = k < rest ? static_cast<acc_t>(x[k]) : pad;
  Lanes<acc_t> v;
  std::memcpy(&v, tmp, sizeof(v));
  return v;
}

// Horizontal max / sum as a pairwise tree (depth 3, a fixed order).
template <typename acc_t>
TNA_VEC_INLINE acc_t lanes_max(Lanes<acc_t> v) {
  static_assert(kLanes == 8, "the reduction trees are written for 8 lanes");
  const auto mx = [](acc_t x, acc_t y) { return y > x ? y : x; };
  return mx(mx(mx(v[0], v[4]), mx(v[1], v[5])), mx(mx(v[2], v[6]), mx(v[3], v[7])));
}

template <typename acc_t>
TNA_VEC_INLINE acc_t lanes_sum(Lanes<acc_t> v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

typedef int32_t IntLanes __attribute__((vector_size(kLanes * sizeof(int32_t))));

// exp_nonpos on kLanes floats at once (same operations as the scalar form).
TNA_VEC_INLINE Lanes<float> exp_nonpos(Lanes<float> d) {
  const Lanes<float> lo = Lanes<float>{} - 88.0f;
  d = d > lo ? d : lo;
  const Lanes<float> t = d * kLog2e + kRound;
  const Lanes<float> n = t - kRound;
  const Lanes<float> r = (d - n * kLn2Hi) - n * kLn2Lo;
  const Lanes<float> r2 = r * r;
  const Lanes<float> p = ((1.0f + r) + r2 * (kExpC[2] + kExpC[3] * r)) +
                         (r2 * r2) * ((kExpC[4] + kExpC[5] * r) + r2 * kExpC[6]);
  IntLanes e = (IntLanes)t - kRoundBits + 127;
  e = e > 0 ? e : 0;
  return p * (Lanes<float>)(e << 23);
}

TNA_VEC_INLINE Lanes<double> exp_nonpos(Lanes<double> d) {
  for (int64_t k = 0; k < kLanes; ++k) d[k] = std::exp(d[k]);
  return d;
}

// Sweep 1: the maxima of both rows.
template <typename scalar_t, typename acc_t>
TNA_VEC_INLINE void rows_max(const scalar_t* __restrict a, const scalar_t* __restrict b, int64_t C,
                             acc_t* ma, acc_t* mb) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  Lanes<acc_t> la = {}, lb = {};
  la += kNegInf;
  lb += kNegInf;
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes) {
    const Lanes<acc_t> va = load_lanes<scalar_t, acc_t>(a + j);
    const Lanes<acc_t> vb = load_lanes<scalar_t, acc_t>(b + j);
    la = va > la ? va : la;
    lb = vb > lb ? vb : lb;
  }
  if (j < C) {
    const Lanes<acc_t> va = load_tail<scalar_t, acc_t>(a + j, C - j, kNegInf);
    const Lanes<acc_t> vb = load_tail<scalar_t, acc_t>(b + j, C - j, kNegInf);
    la = va > la ? va : la;
    lb = vb > lb ? vb : lb;
  }
  *ma = lanes_max<acc_t>(la);
  *mb = lanes_max<acc_t>(lb);
}

// Sweep 2: e = exp(x - m) for both rows (kept in the scratch rows ea / eb), their sums, the row
// sums of x (label smoothing) and sum (a - b)^2. out = {s_a, s_b, sum a, sum b, sum d^2}.
template <typename scalar_t, typename acc_t>
TNA_VEC_INLINE void rows_exp_sums(const scalar_t* __restrict a, const scalar_t* __restrict b,
                                  int64_t C, acc_t ma, acc_t mb, acc_t* __restrict ea,
                                  acc_t* __restrict eb, acc_t* __restrict out) {
  Lanes<acc_t> sa = {}, sb = {}, xa = {}, xb = {}, sq = {};
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes) {
    const Lanes<acc_t> va = load_lanes<scalar_t, acc_t>(a + j);
    const Lanes<acc_t> vb = load_lanes<scalar_t, acc_t>(b + j);
    const Lanes<acc_t> e1 = exp_nonpos(va - ma);
    const Lanes<acc_t> e2 = exp_nonpos(vb - mb);
    std::memcpy(ea + j, &e1, sizeof(e1));
    std::memcpy(eb + j, &e2, sizeof(e2));
    sa += e1;
    sb += e2;
    xa += va;
    xb += vb;
    const Lanes<acc_t> d = va - vb;
    sq += d * d;
  }
  if (j < C) {  // the last C % kLanes columns as one padded vector (not kLanes scalar exps)
    const int64_t rest = C - j;
    constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
    // va / vb padded with 0 (for the sums), pa / pb with -inf (exp gives exactly 0 there)
    const Lanes<acc_t> va = load_tail<scalar_t, acc_t>(a + j, rest, acc_t(0));
    const Lanes<acc_t> vb = load_tail<scalar_t, acc_t>(b + j, rest, acc_t(0));
    const Lanes<acc_t> pa = load_tail<scalar_t, acc_t>(a + j, rest, kNegInf);
    const Lanes<acc_t> pb = load_tail<scalar_t, acc_t>(b + j, rest, kNegInf);
    const Lanes<acc_t> e1 = exp_nonpos(pa - ma);  // exactly 0 in the padding
    const Lanes<acc_t> e2 = exp_nonpos(pb - mb);
    std::memcpy(ea + j, &e1, rest * sizeof(acc_t));
    std::memcpy(eb + j, &e2, rest * sizeof(acc_t));
    sa += e1;
    sb += e2;
    xa += va;
    xb += vb;
    const Lanes<acc_t> d = va - vb;
    sq += d * d;
  }
  const acc_t r[5] = {lanes_sum<acc_t>(sa), lanes_sum<acc_t>(sb), lanes_sum<acc_t>(xa),
                      lanes_sum<acc_t>(xb), lanes_sum<acc_t>(sq)};
  for (int k = 0; k < 5; ++k) out[k] = r[k];
}

// Sweep 3: g = p * e + c + k * (a - b), then g[y] gets the one-hot term (y < 0: none). Either
// output may be null (gradient not needed).
template <typename scalar_t, typename acc_t>
TNA_VEC_INLINE void rows_grad(const acc_t* __restrict ea, const acc_t* __restrict eb,
                              const scalar_t* __restrict a, const scalar_t* __restrict b,
                              scalar_t* __restrict ga, scalar_t* __restrict gb, int64_t C, acc_t pa,
                              acc_t ca, acc_t pb, acc_t cb, acc_t k, int64_t y, acc_t hot_a,
                              acc_t hot_b) {
  if (ga != nullptr && gb != nullptr) {
    for (int64_t j = 0; j < C; ++j) {
      const acc_t d = k * (static_cast<acc_t>(a[j]) - static_cast<acc_t>(b[j]));
      ga[j] = static_cast<scalar_t>(pa * ea[j] + ca + d);
      gb[j] = static_cast<scalar_t>(pb * eb[j] + cb - d);
    }
  } else if (ga != nullptr) {
    for (int64_t j = 0; j < C; ++j) {
      const acc_t d = k * (static_cast<acc_t>(a[j]) - static_cast<acc_t>(b[j]));
      ga[j] = static_cast<scalar_t>(pa * ea[j] + ca + d);
    }
  } else if (gb != nullptr) {
    for (int64_t j = 0; j < C; ++j) {
      const acc_t d = k * (static_cast<acc_t>(a[j]) - static_cast<acc_t>(b[j]));
      gb[j] = static_cast<scalar_t>(pb * eb[j] + cb - d);
    }
  }
  if (y >= 0) {
    const acc_t d = k * (static_cast<acc_t>(a[y]) - static_cast<acc_t>(b[y]));
    if (ga != nullptr) ga[y] = static_cast<scalar_t>(pa * ea[y] + ca + d + hot_a);
    if (gb != nullptr) gb[y] = static_cast<scalar_t>(pb * eb[y] + cb - d + hot_b);
  }
}

template <typename acc_t>
struct RowParams {
  int64_t C, ignore_index;
  acc_t eps, smooth, wa, wb, k_mse;  // wa / wb: CE weights already divided by N
};

// Rows [begin, end): the three sweeps of each row (one clone dispatch per chunk of rows, the
// sweeps inlined). ea / eb: scratch rows of C accumulators each.
template <typename scalar_t, typename acc_t>
TNA_MULTIVERSION void twin_rows(const scalar_t* __restrict ap, const scalar_t* __restrict bp,
                                const int64_t* __restrict yp, scalar_t* gap, scalar_t* gbp,
                                acc_t* __restrict rp, acc_t* __restrict ea, acc_t* __restrict eb,
                                int64_t begin, int64_t end, const RowParams<acc_t>& prm) {
  const int64_t C = prm.C;
  const acc_t eps = prm.eps, smooth = prm.smooth, wa = prm.wa, wb = prm.wb, k_mse = prm.k_mse;
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t* ar = ap + i * C;
    const scalar_t* br = bp + i * C;
    const int64_t t = yp[i];
    const bool valid = t != prm.ignore_index;
    acc_t ma, mb, sums[5];
    rows_max<scalar_t, acc_t>(ar, br, C, &ma, &mb);
    rows_exp_sums<scalar_t, acc_t>(ar, br, C, ma, mb, ea, eb, sums);
    const acc_t sa = sums[0], sb = sums[1];
    acc_t* r = rp + 3 * i;
    if (valid) {
      const acc_t xa = static_cast<acc_t>(ar[t]);
      const acc_t xb = static_cast<acc_t>(br[t]);
      r[0] = ma + std::log(sa) - (acc_t(1) - eps) * xa - smooth * sums[2];
      r[1] = mb + std::log(sb) - (acc_t(1) - eps) * xb - smooth * sums[3];
    } else {
      r[0] = r[1] = acc_t(0);
    }
    r[2] = sums[4];
    if (gap != nullptr || gbp != nullptr) {
      const acc_t w1 = valid ? wa : acc_t(0);
      const acc_t w2 = valid ? wb : acc_t(0);
      rows_grad<scalar_t, acc_t>(ea, eb, ar, br, gap == nullptr ? nullptr : gap + i * C,
                                 gbp == nullptr ? nullptr : gbp + i * C, C, w1 / sa,
                                 -w1 * smooth, w2 / sb, -w2 * smooth, k_mse, valid ? t : -1,
                                 -w1 * (acc_t(1) - eps), -w2 * (acc_t(1) - eps));
    }
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
  TORCH_CHECK(logits_base.dim() == 2,
              "logits_base must be a 2-D [batch, classes] tensor, got shape ",
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

  const auto dtype = a.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "twin_loss_fwd_cpu", [&] {
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
    const RowParams<acc_t> prm{C, ignore_index, eps, smooth, wa, wb, k_mse};

    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(2 * C);
      acc_t* ea = scratch.data();
      acc_t* eb = scratch.data() + C;
      twin_rows<scalar_t, acc_t>(ap, bp, yp, gap, gbp, rp, ea, eb, begin, end, prm);
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

template <typename scalar_t, typename acc_t>
TNA_MULTIVERSION void scale_block(const scalar_t* __restrict g, scalar_t* __restrict out,
                                  int64_t n, acc_t scale) {
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<scalar_t>(static_cast<acc_t>(g[j]) * scale);
}

// Backward: (grad_loss * grad_base, grad_loss * grad_twin), computed in the accumulation dtype
// and rounded once to the logits' dtype; an empty saved gradient gives an empty result. One
// parallel region for both tensors (this is the whole backward of the fused loss).
std::tuple<at::Tensor, at::Tensor> twin_loss_bwd_cpu(const at::Tensor& grad_loss,
                                                     const at::Tensor& grad_base,
                                                     const at::Tensor& grad_twin) {
  TNA_CHECK_CPU(grad_loss);
  TNA_CHECK_CPU(grad_base);
  TNA_CHECK_CPU(grad_twin);
  TORCH_CHECK(grad_loss.dim() == 0, "grad_loss must be a 0-dim tensor, got shape ",
              grad_loss.sizes());
  TNA_CHECK_FLOATING(grad_base);
  TNA_CHECK_DTYPE(grad_twin, grad_base.scalar_type());
  TNA_CHECK_DTYPE(grad_loss, at::toOpMathType(grad_base.scalar_type()));
  const at::Tensor ga = grad_base.contiguous();
  const at::Tensor gb = grad_twin.contiguous();
  at::Tensor out_a = at::empty_like(ga);
  at::Tensor out_b = at::empty_like(gb);
  const int64_t na = ga.numel();
  const int64_t nb = gb.numel();
  const auto dtype = ga.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "twin_loss_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = *grad_loss.const_data_ptr<acc_t>();  // CPU memory: a plain read
    const scalar_t* pa = ga.const_data_ptr<scalar_t>();
    const scalar_t* pb = gb.const_data_ptr<scalar_t>();
    scalar_t* qa = out_a.mutable_data_ptr<scalar_t>();
    scalar_t* qb = out_b.mutable_data_ptr<scalar_t>();
    // Both tensors as one index space [0, na + nb).
    at::parallel_for(0, na + nb, 4 * kGrainElems, [&](int64_t begin, int64_t end) {
      if (begin < na) {
        scale_block<scalar_t, acc_t>(pa + begin, qa + begin, std::min(end, na) - begin, scale);
      }
      if (end > na) {
        const int64_t lo = std::max(begin, na) - na;
        scale_block<scalar_t, acc_t>(pb + lo, qb + lo, end - na - lo, scale);
      }
    });
  });
  return {out_a, out_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(tna, CPU, m) {
  m.impl("twin_loss_fwd", &twin_loss_fwd_cpu);
  m.impl("twin_loss_bwd", &twin_loss_bwd_cpu);
}

}  // namespace tna
