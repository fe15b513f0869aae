// e^x for float32 in a few vector-friendly operations, shared by the twin loss (on vector lanes)
// and the LIF's sigmoid surrogate (the scalar form below, which GCC auto-vectorises; std::exp is a
// libm call per element and made that surrogate's backward ~4x slower than atan's).
//   x <- clamp(x, -88, 88);  t = x log2(e) + 1.5*2^23;  n = t - 1.5*2^23  (= round(x log2 e))
//   r = x - n ln2 (Cody-Waite: ln2 in two parts, |r| <= ln2/2)
//   p = degree-6 polynomial fit of e^r (c0 = c1 = 1), evaluated in Estrin's scheme (a short
//       dependency chain)
//   result = p * 2^n, with 2^n built in the exponent bits from t's low mantissa bits, and 0 when
//       n < -126 (x < ~-87.3: e^x is below the smallest normal float)
// Measured: relative error < 1.7e-7 on [-87, 0].
#pragma once
#include <bit>
#include <cstdint>

namespace tna::fast_exp {

constexpr float kC[7] = {1.0f, 1.0f, 0.49999991059303284f, 0.16666419804096222f,
                         0.04166822507977486f, 0.008374815806746483f, 0.0013836845755577087f};
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;  // few mantissa bits: n * kLn2Hi is exact
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
constexpr int32_t kRoundBits = 0x4B400000;
constexpr float kMin = -88.0f, kMax = 88.0f;

inline __attribute__((always_inline)) float exp(float x) {
  x = x > kMin ? x : kMin;
  x = x < kMax ? x : kMax;
  const float t = x * kLog2e + kRound;
  const float n = t - kRound;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  const float r2 = r * r;
  const float p = ((1.0f + r) + r2 * (kC[2] + kC[3] * r)) + (r2 * r2) * ((kC[4] + kC[5] * r) + r2 * kC[6]);
  int32_t e = std::bit_cast<int32_t>(t) - kRoundBits + 127;
  e = e > 0 ? e : 0;
  return p * std::bit_cast<float>(e << 23);
}

}  // namespace tna::fast_exp
