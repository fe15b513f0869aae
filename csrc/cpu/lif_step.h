// One LIF time step, shared by every CPU kernel that runs the neuron (lif.cpp, lif_pack.cpp and the
// fused conv epilogue), so their spikes agree bit for bit. Dynamics: csrc/cpu/lif.cpp.
#pragma once

namespace tna {

// Charge: h = v + (x - (v - vr)) / tau (decay_input) or v - (v - vr) / tau + x, with vr = v_reset
// (hard reset) or 0 (soft reset).
template <bool kDecayInput, typename acc_t>
inline __attribute__((always_inline)) acc_t lif_charge(acc_t x, acc_t v, acc_t vr, acc_t tau) {
  return kDecayInput ? v + (x - (v - vr)) / tau : v - (v - vr) / tau + x;
}

// Membrane after the spike decision: v_reset (hard) or h - v_th (soft) where it fired, else h.
template <bool kSoft, typename acc_t>
inline __attribute__((always_inline)) acc_t lif_reset(acc_t h, bool fire, acc_t v_th, acc_t v_reset) {
  if constexpr (kSoft) {
    return fire ? h - v_th : h;
  } else {
    return fire ? v_reset : h;
  }
}

}  // namespace tna
