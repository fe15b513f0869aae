// One LIF time step, forward and backward, shared by every CPU kernel that runs the neuron (lif.cpp,
// lif_tiles.h, lif_pack.cpp and the fused conv epilogue), so their spikes and gradients agree bit for
// bit. Dynamics: csrc/cpu/lif.cpp. Written for a lane type L (lanes.h): one neuron (float, double)
// or eight float32 neurons; hyper-parameters come in as lanes too.
#pragma once
#include <cmath>
#include <type_traits>

#include "fast_exp.h"
#include "lanes.h"

namespace tna {

enum class Surrogate { kATan, kSigmoid, kFastSigmoid, kTriangle, kRectangle };

// Charge: h = v + (x - (v - vr)) / tau (decay_input) or v - (v - vr) / tau + x, with vr = v_reset
// (hard reset) or 0 (soft reset).
template <bool kDecayInput, typename acc_t>
inline __attribute__((always_inline)) acc_t lif_charge(acc_t x, acc_t v, acc_t vr, acc_t tau) {
  return kDecayInput ? v + (x - (v - vr)) / tau : v - (v - vr) / tau + x;
}

// Membrane after the spike decision: v_reset (hard) or h - v_th (soft) where it fired, else h.
// fire: a bool, or a lane mask (h >= v_th on vectors).
template <bool kSoft, typename acc_t, typename mask_t>
inline __attribute__((always_inline)) acc_t lif_reset(acc_t h, mask_t fire, acc_t v_th, acc_t v_reset) {
  if constexpr (kSoft) {
    return fire ? h - v_th : h;
  } else {
    return fire ? v_reset : h;
  }
}

// One forward step: returns h[t] and moves the membrane v on.
template <bool kDecayInput, bool kSoft, typename L>
inline __attribute__((always_inline)) L lif_h(L x, L& v, L vr, L tau, L v_th, L v_reset) {
  const L h = lif_charge<kDecayInput>(x, v, vr, tau);
  v = lif_reset<kSoft>(h, h >= v_th, v_th, v_reset);
  return h;
}

// d spike / d h evaluated at x = h - v_th, sharpness alpha (formulas documented in reference.py).
template <Surrogate S, typename L>
inline __attribute__((always_inline)) L surrogate_grad(L x, L alpha) {
  const L one = splat<L>(1), zero = splat<L>(0);
  if constexpr (S == Surrogate::kATan) {
    const L u = splat<L>(M_PI / 2) * alpha * x;
    return alpha / (splat<L>(2) * (one + u * u));
  } else if constexpr (S == Surrogate::kSigmoid) {
    L e;
    if constexpr (std::is_same_v<L, double>) {
      e = std::exp(-alpha * x);
    } else {
      e = fast_exp::exp(-alpha * x);  // vectorises; within 2e-7 of std::exp
    }
    const L sg = one / (one + e);
    return alpha * sg * (one - sg);
  } else if constexpr (S == Surrogate::kFastSigmoid) {
    const L d = one + alpha * lane_abs(x);
    return one / (d * d);
  } else if constexpr (S == Surrogate::kTriangle) {
    const L r = one - alpha * lane_abs(x);
    return r > zero ? alpha * r : zero;
  } else {
    return lane_abs(x) < splat<L>(0.5) / alpha ? alpha : zero;
  }
}

// dL/dh[t] from the spike's gradient gs and the carry gv = dL/dv[t].
template <Surrogate S, bool kSoft, bool kDetach, typename L>
inline __attribute__((always_inline)) L lif_grad_h(L gs, L h, L gv, L v_th, L vr, L alpha) {
  const L one = splat<L>(1);
  const L sg = surrogate_grad<S>(h - v_th, alpha);
  const L s = h >= v_th ? one : splat<L>(0);
  L dv_dh;
  if constexpr (kSoft) {
    dv_dh = kDetach ? one : one - v_th * sg;
  } else {
    dv_dh = kDetach ? one - s : (one - s) + (vr - h) * sg;
  }
  return gs * sg + gv * dv_dh;
}

// One backward step at t: returns dL/dx[t] and moves the carry gv to dL/dv[t-1].
template <Surrogate S, bool kDecayInput, bool kSoft, bool kDetach, typename L>
inline __attribute__((always_inline)) L lif_grad_x(L gs, L h, L& gv, L v_th, L vr, L alpha,
                                                   L inv_tau) {
  const L gh = lif_grad_h<S, kSoft, kDetach>(gs, h, gv, v_th, vr, alpha);
  const L gq = gh * inv_tau;
  gv = gh - gq;
  return kDecayInput ? gq : gh;
}

}  // namespace tna
