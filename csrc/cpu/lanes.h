// Lane types, so that the LIF step arithmetic is written once for one neuron (float, double) and for
// eight float32 neurons at a time (a 32-byte GCC vector: one ymm register in AVX2 code, two xmm
// registers in portable x86-64 code). Vector and scalar forms do the same IEEE operations in the
// same order, so they agree bit for bit.
#pragma once
#include <cstdint>
#include <type_traits>

namespace tna {

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

template <typename L>
struct LaneTraits {  // a scalar lane
  using elem = L;
  using bits = std::conditional_t<sizeof(L) == 4, int32_t, int64_t>;
};
template <>
struct LaneTraits<f32x8> {
  using elem = float;
  using bits = i32x8;
};

// Every lane set to s.
template <typename L>
inline __attribute__((always_inline)) L splat(typename LaneTraits<L>::elem s) {
  if constexpr (std::is_arithmetic_v<L>) {
    return s;
  } else {
    return L{} + s;
  }
}

// |x| by lanes (-0.0 stays -0.0: every use here multiplies or compares it, where the sign of a zero
// does not matter).
template <typename L>
inline __attribute__((always_inline)) L lane_abs(L x) {
  return x < splat<L>(0) ? -x : x;
}

}  // namespace tna
