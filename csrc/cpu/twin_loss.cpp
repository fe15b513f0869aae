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
// Sweeps per row pair, all in L1: (1) both rows at once: the two maxima, sum x, sum d^2; (2) per
// row: e = exp(x - m) kept in a per-thread scratch row, and s; (3) the gradients from the kept e
// (exp runs once per element). Gradient for grad_output = 1:
//   dL/da_ij = [i in V] wa/N (e_ij/s - (1 - eps) 1[j = y_i] - eps/C) + 2 lam/D d_ij
//   dL/db_ij = [i in V] wb/N (e_ij/s - (1 - eps) 1[j = y_i] - eps/C) - 2 lam/D d_ij
// The gradients are new buffers in the logits' dtype (the caller's logits are never written);
// autograd saves them (nothing else) and backward (tna::twin_loss_bwd) only multiplies them by
// grad_output. A null grad_base / grad_twin pointer (need_grad_* = false) skips that gradient.
//
// Layout and order: a serial pass over target validates it (range or ignore_index) and counts N
// first, so the gradients can be scaled in the same parallel sweep. Rows are split across threads
// with tna::parallel_for; each row writes its three partial sums to a [B, 3] buffer that one
// thread adds in row order, so the result does not depend on the number of threads. In-row sums
// use 8 independent lanes (fixed order, vectorisable without -ffast-math) and a short polynomial
// exp (see exp_nonpos), so the row loops vectorise in the x86-64-v3 (AVX2 + FMA) clone.
#include "twin_loss.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "fast_exp.h"

TNA_ALLOW_FMA  // a * b + c may round once (FMA clone); the kernel is not bit-matched to torch

namespace tna {
namespace {

constexpr int64_t kLanes = 8;
constexpr int64_t kGrainElems = 16384;  // elements per thread chunk (rows * C)

// exp(d) for d <= 0 (every argument here is x - max(x)): fast_exp.h's operations on vector lanes
// (no upper clamp needed). The last vector of a row overlaps the one before (see fresh_lanes), so
// every column goes through the same vector code.
using fast_exp::kC, fast_exp::kLog2e, fast_exp::kLn2Hi, fast_exp::kLn2Lo, fast_exp::kRound,
    fast_exp::kRoundBits;

// Lanes of kLanes accumulators, as a GCC/Clang vector type: the float max reduction only
// vectorises this way (without -ffast-math), and the fixed lane order keeps results independent
// of the thread count. (The x86-64-v3 clone fuses a * b + c, so its last bits may differ from the
// portable clone's.)
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
  const Lanes<float> p = ((1.0f + r) + r2 * (kC[2] + kC[3] * r)) +
                         (r2 * r2) * ((kC[4] + kC[5] * r) + r2 * kC[6]);
  IntLanes e = (IntLanes)t - kRoundBits + 127;
  e = e > 0 ? e : 0;
  return p * (Lanes<float>)(e << 23);
}

TNA_VEC_INLINE Lanes<double> exp_nonpos(Lanes<double> d) {
  for (int64_t k = 0; k < kLanes; ++k) d[k] = std::exp(d[k]);
  return d;
}

// Lane k of the last vector of a row of C >= kLanes columns, read at C - kLanes (it overlaps the
// previous vector): true where the column was not covered yet. A masked overlapping load instead
// of a padded copy: building a vector from scalar stores stalls store-to-load forwarding, which
// cost more than the whole row at C = 10.
template <typename acc_t>
TNA_VEC_INLINE auto fresh_lanes(int64_t rest) {
  const Lanes<acc_t> idx = {0, 1, 2, 3, 4, 5, 6, 7};
  return idx >= static_cast<acc_t>(kLanes - rest);
}

// Sweep 1 over both rows: the two maxima, the row sums of x (label smoothing) and sum (a - b)^2.
// out = {max a, max b, sum a, sum b, sum d^2}.
template <typename acc_t>
struct StatLanes {
  Lanes<acc_t> la, lb, xa = {}, xb = {}, sq = {};
  // ma / mb: the values for the maxima (overlap is harmless: max is idempotent); sa / sb: for the
  // sums (0 where a lane is not a new column)
  TNA_VEC_INLINE void add(const Lanes<acc_t>& ma, const Lanes<acc_t>& mb, const Lanes<acc_t>& sa,
                          const Lanes<acc_t>& sb) {
    la = ma > la ? ma : la;
    lb = mb > lb ? mb : lb;
    xa += sa;
    xb += sb;
    const Lanes<acc_t> d = sa - sb;
    sq += d * d;
  }
};

// The row sweeps work on R rows (pairs) at once: R independent dependency chains per loop, and the
// latency at each sweep boundary (a horizontal max or sum that the next sweep waits for) paid once
// per R rows. One row at a time, those boundaries cost about as much as the sweeps at C = 100.
#define TNA_UNROLL _Pragma("GCC unroll 8")

template <int R, typename scalar_t, typename acc_t>
TNA_VEC_INLINE void rows_stats(const scalar_t* const* a, const scalar_t* const* b, int64_t C,
                               acc_t (*out)[5]) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  StatLanes<acc_t> st[R];
  TNA_UNROLL for (int r = 0; r < R; ++r) {
    st[r].la = Lanes<acc_t>{} + kNegInf;
    st[r].lb = st[r].la;
  }
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes) {
    TNA_UNROLL for (int r = 0; r < R; ++r) {
      const Lanes<acc_t> va = load_lanes<scalar_t, acc_t>(a[r] + j);
      const Lanes<acc_t> vb = load_lanes<scalar_t, acc_t>(b[r] + j);
      st[r].add(va, vb, va, vb);
    }
  }
  if (j < C && C >= kLanes) {  // the overlapping last vector
    const auto fresh = fresh_lanes<acc_t>(C - j);
    const Lanes<acc_t> zero = {};
    TNA_UNROLL for (int r = 0; r < R; ++r) {
      const Lanes<acc_t> va = load_lanes<scalar_t, acc_t>(a[r] + C - kLanes);
      const Lanes<acc_t> vb = load_lanes<scalar_t, acc_t>(b[r] + C - kLanes);
      st[r].add(va, vb, fresh ? va : zero, fresh ? vb : zero);
    }
  } else if (j < C) {  // C < kLanes: one padded vector
    TNA_UNROLL for (int r = 0; r < R; ++r) {
      st[r].add(load_tail<scalar_t, acc_t>(a[r], C, kNegInf), load_tail<scalar_t, acc_t>(b[r], C, kNegInf),
                load_tail<scalar_t, acc_t>(a[r], C, acc_t(0)), load_tail<scalar_t, acc_t>(b[r], C, acc_t(0)));
    }
  }
  TNA_UNROLL for (int r = 0; r < R; ++r) {
    out[r][0] = lanes_max<acc_t>(st[r].la);
    out[r][1] = lanes_max<acc_t>(st[r].lb);
    out[r][2] = lanes_sum<acc_t>(st[r].xa);
    out[r][3] = lanes_sum<acc_t>(st[r].xb);
    out[r][4] = lanes_sum<acc_t>(st[r].sq);
  }
}

// Sweep 2 over R rows: e = exp(x - m), kept in the scratch rows e, and s = sum e.
template <int R, typename scalar_t, typename acc_t>
TNA_VEC_INLINE void rows_exp(const scalar_t* const* x, int64_t C, const acc_t* m, acc_t* const* e,
                             acc_t* s) {
  Lanes<acc_t> acc[R] = {};
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes) {
    TNA_UNROLL for (int r = 0; r < R; ++r) {
      const Lanes<acc_t> v = exp_nonpos(load_lanes<scalar_t, acc_t>(x[r] + j) - m[r]);
      std::memcpy(e[r] + j, &v, sizeof(v));
      acc[r] += v;
    }
  }
  if (j < C && C >= kLanes) {  // the overlapping last vector: rewrites equal values, sums the new
    const auto fresh = fresh_lanes<acc_t>(C - j);
    const Lanes<acc_t> zero = {};
    TNA_UNROLL for (int r = 0; r < R; ++r) {
      const Lanes<acc_t> v = exp_nonpos(load_lanes<scalar_t, acc_t>(x[r] + C - kLanes) - m[r]);
      std::memcpy(e[r] + C - kLanes, &v, sizeof(v));
      acc[r] += fresh ? v : zero;
    }
  } else if (j < C) {  // C < kLanes: padded with -inf, whose exp is exactly 0
    constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
    TNA_UNROLL for (int r = 0; r < R; ++r) {
      const Lanes<acc_t> v = exp_nonpos(load_tail<scalar_t, acc_t>(x[r], C, kNegInf) - m[r]);
      std::memcpy(e[r], &v, C * sizeof(acc_t));
      acc[r] += v;
    }
  }
  TNA_UNROLL for (int r = 0; r < R; ++r) s[r] = lanes_sum<acc_t>(acc[r]);
}

template <typename scalar_t, typename acc_t>
TNA_VEC_INLINE void store_lanes(scalar_t* __restrict x, const Lanes<acc_t>& v) {
  for (int64_t k = 0; k < kLanes; ++k) x[k] = static_cast<scalar_t>(v[k]);
}

// Sweep 3 on the kLanes columns from j: g = p * e + c +- k * (a - b). Either output may be null.
template <typename scalar_t, typename acc_t>
TNA_VEC_INLINE void grad_lanes(int64_t j, const acc_t* __restrict ea, const acc_t* __restrict eb,
                               const scalar_t* __restrict a, const scalar_t* __restrict b,
                               scalar_t* __restrict ga, scalar_t* __restrict gb, acc_t pa, acc_t ca,
                               acc_t pb, acc_t cb, acc_t k) {
  const Lanes<acc_t> d = k * (load_lanes<scalar_t, acc_t>(a + j) - load_lanes<scalar_t, acc_t>(b + j));
  Lanes<acc_t> e;
  if (ga != nullptr) {
    std::memcpy(&e, ea + j, sizeof(e));
    store_lanes<scalar_t, acc_t>(ga + j, pa * e + ca + d);
  }
  if (gb != nullptr) {
    std::memcpy(&e, eb + j, sizeof(e));
    store_lanes<scalar_t, acc_t>(gb + j, pb * e + cb - d);
  }
}

// One row pair's sweep-3 operands: g = p * e + c +- k (a - b), plus hot at column y (y < 0: none).
template <typename scalar_t, typename acc_t>
struct GradRow {
  const acc_t *ea, *eb;
  const scalar_t *a, *b;
  scalar_t *ga, *gb;  // either may be null (gradient not needed)
  acc_t pa, ca, pb, cb, hot_a, hot_b;
  int64_t y;
};

// Sweep 3 over R row pairs, then each g[y] gets its one-hot term.
template <int R, typename scalar_t, typename acc_t>
TNA_VEC_INLINE void rows_grad(const GradRow<scalar_t, acc_t>* g, int64_t C, acc_t k) {
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes) {
    TNA_UNROLL for (int r = 0; r < R; ++r) {
      const auto& q = g[r];
      grad_lanes<scalar_t, acc_t>(j, q.ea, q.eb, q.a, q.b, q.ga, q.gb, q.pa, q.ca, q.pb, q.cb, k);
    }
  }
  TNA_UNROLL for (int r = 0; r < R; ++r) {
    const auto& q = g[r];
    if (j < C && C >= kLanes) {  // the overlapping last vector rewrites equal values
      grad_lanes<scalar_t, acc_t>(C - kLanes, q.ea, q.eb, q.a, q.b, q.ga, q.gb, q.pa, q.ca, q.pb, q.cb, k);
    } else {  // C < kLanes
      for (int64_t jj = j; jj < C; ++jj) {
        const acc_t d = k * (static_cast<acc_t>(q.a[jj]) - static_cast<acc_t>(q.b[jj]));
        if (q.ga != nullptr) q.ga[jj] = static_cast<scalar_t>(q.pa * q.ea[jj] + q.ca + d);
        if (q.gb != nullptr) q.gb[jj] = static_cast<scalar_t>(q.pb * q.eb[jj] + q.cb - d);
      }
    }
    if (q.y >= 0) {
      const int64_t y = q.y;
      const acc_t d = k * (static_cast<acc_t>(q.a[y]) - static_cast<acc_t>(q.b[y]));
      if (q.ga != nullptr) q.ga[y] = static_cast<scalar_t>(q.pa * q.ea[y] + q.ca + d + q.hot_a);
      if (q.gb != nullptr) q.gb[y] = static_cast<scalar_t>(q.pb * q.eb[y] + q.cb - d + q.hot_b);
    }
  }
}

template <typename acc_t>
struct RowParams {
  int64_t C, ignore_index;
  acc_t eps, smooth, wa, wb, k_mse;  // wa / wb: CE weights already divided by N
};

// Rows i .. i + R - 1: the three sweeps, R row pairs at a time. scratch: 2R rows of C accumulators.
template <int R, typename scalar_t, typename acc_t>
TNA_VEC_INLINE void twin_group(const scalar_t* ap, const scalar_t* bp, const int64_t* yp, scalar_t* gap,
                               scalar_t* gbp, acc_t* rp, acc_t* scratch, int64_t i,
                               const RowParams<acc_t>& prm) {
  const int64_t C = prm.C;
  const acc_t eps = prm.eps, smooth = prm.smooth;
  const scalar_t* x[2 * R];  // the R rows of a, then the R rows of b
  acc_t* e[2 * R];
  TNA_UNROLL for (int r = 0; r < R; ++r) {
    x[r] = ap + (i + r) * C;
    x[R + r] = bp + (i + r) * C;
    e[r] = scratch + r * C;
    e[R + r] = scratch + (R + r) * C;
  }
  acc_t st[R][5], m[2 * R], s[2 * R];
  rows_stats<R, scalar_t, acc_t>(x, x + R, C, st);
  TNA_UNROLL for (int r = 0; r < R; ++r) {
    m[r] = st[r][0];
    m[R + r] = st[r][1];
  }
  rows_exp<2 * R, scalar_t, acc_t>(x, C, m, e, s);
  GradRow<scalar_t, acc_t> g[R];
  TNA_UNROLL for (int r = 0; r < R; ++r) {
    const int64_t t = yp[i + r];
    const bool valid = t != prm.ignore_index;
    acc_t* out = rp + 3 * (i + r);
    if (valid) {
      out[0] = m[r] + std::log(s[r]) - (acc_t(1) - eps) * static_cast<acc_t>(x[r][t]) - smooth * st[r][2];
      out[1] = m[R + r] + std::log(s[R + r]) - (acc_t(1) - eps) * static_cast<acc_t>(x[R + r][t]) -
               smooth * st[r][3];
    } else {
      out[0] = out[1] = acc_t(0);
    }
    out[2] = st[r][4];
    const acc_t w1 = valid ? prm.wa : acc_t(0);
    const acc_t w2 = valid ? prm.wb : acc_t(0);
    g[r] = {e[r], e[R + r], x[r], x[R + r], gap == nullptr ? nullptr : gap + (i + r) * C,
            gbp == nullptr ? nullptr : gbp + (i + r) * C, w1 / s[r], -w1 * smooth, w2 / s[R + r],
            -w2 * smooth, -w1 * (acc_t(1) - eps), -w2 * (acc_t(1) - eps), valid ? t : -1};
  }
  if (gap != nullptr || gbp != nullptr) rows_grad<R, scalar_t, acc_t>(g, C, prm.k_mse);
}

constexpr int kGroup = 2;  // row pairs per group (see rows_stats)

// Rows [begin, end) in groups of kGroup, the rest one by one (one clone dispatch per chunk of rows,
// the sweeps inlined). scratch: 2 kGroup rows of C accumulators.
template <typename scalar_t, typename acc_t>
TNA_MULTIVERSION_FMA void twin_rows(const scalar_t* __restrict ap, const scalar_t* __restrict bp,
                                    const int64_t* __restrict yp, scalar_t* gap, scalar_t* gbp,
                                    acc_t* __restrict rp, acc_t* __restrict scratch, int64_t begin,
                                    int64_t end, const RowParams<acc_t>& prm) {
  int64_t i = begin;
  for (; i + kGroup <= end; i += kGroup) twin_group<kGroup>(ap, bp, yp, gap, gbp, rp, scratch, i, prm);
  for (; i < end; ++i) twin_group<1>(ap, bp, yp, gap, gbp, rp, scratch, i, prm);
}

template <typename scalar_t, typename acc_t>
TNA_MULTIVERSION void scale_block(const scalar_t* __restrict g, scalar_t* __restrict out,
                                  int64_t n, acc_t scale) {
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<scalar_t>(static_cast<acc_t>(g[j]) * scale);
}

}  // namespace

void twin_loss_fwd(DType dtype, const void* logits_base, const void* logits_twin,
                   const int64_t* target, int64_t B, int64_t C, double ce_weight_base,
                   double ce_weight_twin, double mse_weight, int64_t mse_reduction,
                   double label_smoothing, int64_t ignore_index, void* loss, void* parts,
                   void* grad_base, void* grad_twin) {
  TNA_CHECK(B >= 0 && C >= 1, "logits_base must have at least one class, got shape [", B, ", ",
            C, "]");
  TNA_CHECK(std::isfinite(ce_weight_base), "ce_weight_base must be finite, got ", ce_weight_base);
  TNA_CHECK(std::isfinite(ce_weight_twin), "ce_weight_twin must be finite, got ", ce_weight_twin);
  TNA_CHECK(std::isfinite(mse_weight), "mse_weight must be finite, got ", mse_weight);
  TNA_CHECK(mse_reduction == 0 || mse_reduction == 1,
            "mse_reduction must be 0 ('mean') or 1 ('sum_over_batch'), got ", mse_reduction);
  TNA_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
            "label_smoothing must be in [0, 1], got ", label_smoothing);

  // Count pass (serial, B int64 reads): validates every target and counts the rows that count.
  const int64_t* yp = target;
  int64_t n_valid = 0;
  for (int64_t i = 0; i < B; ++i) {
    const int64_t t = yp[i];
    if (t == ignore_index) continue;
    TNA_CHECK(t >= 0 && t < C, "target must hold class indices in [0, ", C, ") or ignore_index (",
              ignore_index, "); target[", i, "] = ", t);
    ++n_valid;
  }

  dispatch_floating(dtype, "logits_base", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* ap = static_cast<const scalar_t*>(logits_base);
    const scalar_t* bp = static_cast<const scalar_t*>(logits_twin);
    scalar_t* gap = static_cast<scalar_t*>(grad_base);
    scalar_t* gbp = static_cast<scalar_t*>(grad_twin);
    std::vector<acc_t> rows(3 * B);  // per-row (ce_a, ce_b, sum d^2), added in row order below
    acc_t* rp = rows.data();
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

    parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(2 * kGroup * C);
      twin_rows<scalar_t, acc_t>(ap, bp, yp, gap, gbp, rp, scratch.data(), begin, end, prm);
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
    acc_t* pp = static_cast<acc_t*>(parts);
    pp[0] = ce_a;
    pp[1] = ce_b;
    pp[2] = mse;
    *static_cast<acc_t*>(loss) = static_cast<acc_t>(ce_weight_base) * ce_a +
                                 static_cast<acc_t>(ce_weight_twin) * ce_b +
                                 static_cast<acc_t>(mse_weight) * mse;
  });
}

void twin_loss_bwd(DType dtype, const void* grad_loss, const void* grad_base,
                   const void* grad_twin, int64_t na, int64_t nb, void* out_base,
                   void* out_twin) {
  dispatch_floating(dtype, "grad_base", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = opmath_t<scalar_t>;
    const acc_t scale = *static_cast<const acc_t*>(grad_loss);
    const scalar_t* pa = static_cast<const scalar_t*>(grad_base);
    const scalar_t* pb = static_cast<const scalar_t*>(grad_twin);
    scalar_t* qa = static_cast<scalar_t*>(out_base);
    scalar_t* qb = static_cast<scalar_t*>(out_twin);
    // Both tensors as one index space [0, na + nb).
    parallel_for(0, na + nb, 4 * kGrainElems, [&](int64_t begin, int64_t end) {
      if (begin < na) {
        scale_block<scalar_t, acc_t>(pa + begin, qa + begin, std::min(end, na) - begin, scale);
      }
      if (end > na) {
        const int64_t lo = std::max(begin, na) - na;
        scale_block<scalar_t, acc_t>(pb + lo, qb + lo, end - na - lo, scale);
      }
    });
  });
}

}  // namespace tna
