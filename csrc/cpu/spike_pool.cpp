// Max-pooling of 0/1 spikes that keeps its input bit-packed for backward (SpikeMaxPool2d in
// training, tna_kernels/nn/spiking.py); the reference is nn.MaxPool2d on the unpacked input.
//
// spike_max_pool2d: x [N, C, H, W] is packed into bits [N, ceil(C*H*W/64)] by tna::pack_spikes
// (the layout of pack_spikes(x.reshape(N, -1)); it rejects values other than 0 and 1; called from
// tna_kernels/ops/spike_pool.py), and pooled here (spike_max_pool2d below).
// spike_max_pool2d_backward: the gradient of each output goes where torch's max-pool sends it, the
// first maximum of the window in scan order (rows, then columns, padding skipped): the first spike,
// or the window's first element when it holds none. Read from the bits, so the float input, its
// int64 indices and an unpacked copy never exist. Unfused (pack_spikes, max_pool2d; then per
// chunk unpack_spikes, max_pool2d_with_indices and its backward), the [128, 64, 32, 32] layer of
// the training benchmark took 15.1 ms forward and 32 ms backward on this machine's two cores.
#include "spike_pool.h"

#if defined(TNA_AVX2_DISPATCH)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace tna {
namespace {

// torch's pooling_output_shape: with ceil_mode the last window must start inside the input or its
// left padding.
int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t num = in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;  // floor division
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

// First and one-past-last valid input index of a window starting at `start` (may be negative).
inline void window(int64_t start, int64_t k, int64_t d, int64_t in, int64_t& lo, int64_t& hi) {
  hi = std::min(start + (k - 1) * d + 1, in);
  lo = start;
  while (lo < 0) lo += d;
}

inline bool bit_at(const uint64_t* words, int64_t k) { return (words[k >> 6] >> (k & 63)) & 1; }

// 2x2 windows, stride 2, no padding or dilation (the spiking VGG's pools): y = the first maximum of
// each window, scanned like the generic loop below.
template <typename scalar_t>
TNA_MULTIVERSION void pool2x2_plane(const scalar_t* __restrict x, scalar_t* __restrict y, int64_t OH,
                                    int64_t OW, int64_t W) {
  for (int64_t oh = 0; oh < OH; ++oh) {
    const scalar_t* r0 = x + 2 * oh * W;
    const scalar_t* r1 = r0 + W;
    for (int64_t ow = 0; ow < OW; ++ow) {
      float a = static_cast<float>(r0[2 * ow]);
      const float b = static_cast<float>(r0[2 * ow + 1]), c = static_cast<float>(r1[2 * ow]),
                  d = static_cast<float>(r1[2 * ow + 1]);
      a = b > a ? b : a;
      a = c > a ? c : a;
      a = d > a ? d : a;
      y[oh * OW + ow] = static_cast<scalar_t>(a);
    }
  }
}

// Any geometry: acc[ow] = max over the window's rows and columns, replaced only by a larger value,
// as torch's max-pool does (the first maximum wins; -0.0 stays -0.0).
template <typename scalar_t>
void pool_plane(const scalar_t* x, scalar_t* y, int64_t H, int64_t W, int64_t OH, int64_t OW,
                const PoolGeometry& g, float* acc) {
  for (int64_t oh = 0; oh < OH; ++oh) {
    std::fill(acc, acc + OW, -std::numeric_limits<float>::infinity());
    int64_t h0, h1;
    window(oh * g.sh - g.ph, g.kh, g.dh, H, h0, h1);
    for (int64_t h = h0; h < h1; h += g.dh) {
      const scalar_t* row = x + h * W;
      for (int64_t ow = 0; ow < OW; ++ow) {
        int64_t w0, w1;
        window(ow * g.sw - g.pw, g.kw, g.dw, W, w0, w1);
        float a = acc[ow];
        for (int64_t w = w0; w < w1; w += g.dw) {
          const float v = static_cast<float>(row[w]);
          a = v > a ? v : a;
        }
        acc[ow] = a;
      }
    }
    for (int64_t ow = 0; ow < OW; ++ow) y[oh * OW + ow] = static_cast<scalar_t>(acc[ow]);
  }
}

bool is_2x2(const PoolGeometry& g, int64_t H, int64_t W) {
  return g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 && g.dh == 1 &&
         g.dw == 1 && H % 2 == 0 && W % 2 == 0;
}

// Bits k .. k + len - 1 (len <= 64) of the packed words, bit 0 first.
inline uint64_t bits_at(const uint64_t* words, int64_t k, int64_t len) {
  const int64_t i = k >> 6, s = k & 63;
  uint64_t v = words[i] >> s;
  if (s + len > 64) v |= words[i + 1] << (64 - s);
  return len == 64 ? v : v & ((uint64_t(1) << len) - 1);
}

// v where keep, else +0.0: a mask on the bits, no branch (which element of a window takes the
// gradient is data; with branches the backward took 2.5 instead of 1.0 ms on [128, 256, 8, 8]).
template <typename T>
inline T keep_if(T v, bool keep) {
  using U = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  U u;
  std::memcpy(&u, &v, sizeof u);
  u &= U(0) - U(keep);
  std::memcpy(&v, &u, sizeof u);
  return v;
}

// 0 + v in opmath_t: torch's max-pool backward adds each gradient onto a zeroed grad_x, so a
// routed -0.0 lands as +0.0 (NaN and everything else unchanged).
template <typename T>
inline T plus_zero(T v) {
  return static_cast<T>(static_cast<opmath_t<T>>(v) + opmath_t<T>(0));
}

// Which element of each 2x2 window takes its gradient, for windows o .. o + n - 1 (n <= 32) of
// the input rows starting at bits k0 and k1: bit e of m0 / m1 is set when input column 2o + e of
// the first / second row does (the first spike in scan order, or the window's first element).
inline void route2x2(const uint64_t* words, int64_t k0, int64_t k1, int64_t o, int64_t n, uint64_t& m0,
                     uint64_t& m1) {
  constexpr uint64_t kEven = 0x5555555555555555ull;
  const uint64_t r0 = bits_at(words, k0 + 2 * o, 2 * n), r1 = bits_at(words, k1 + 2 * o, 2 * n);
  // per window j, at bit 2j: its four bits, then which element takes the gradient
  const uint64_t e0 = r0 & kEven, o0 = (r0 >> 1) & kEven, e1 = r1 & kEven, o1 = (r1 >> 1) & kEven;
  const uint64_t first00 = e0 | (~(o0 | e1 | o1) & kEven), first01 = ~e0 & o0;
  const uint64_t first10 = ~e0 & ~o0 & e1, first11 = ~e0 & ~o0 & ~e1 & o1;
  m0 = first00 | (first01 << 1);
  m1 = first10 | (first11 << 1);
}

// Input columns 2o + e, e in [e0, 2n), of both rows: the window's gradient where routed, else +0.0.
template <typename scalar_t>
inline void unpool2x2_tail(const scalar_t* g, int64_t gsw, uint64_t m0, uint64_t m1, scalar_t* x0, scalar_t* x1,
                           int64_t o, int64_t e0, int64_t n) {
  for (int64_t e = e0; e < 2 * n; ++e) {
    const scalar_t v = plus_zero(g[(o + (e >> 1)) * gsw]);
    x0[2 * o + e] = keep_if(v, (m0 >> e) & 1);
    x1[2 * o + e] = keep_if(v, (m1 >> e) & 1);
  }
}

// The backward of pool2x2_plane: every input lies in exactly one window, so grad_x is written
// whole, each window's gradient at its first spike (or first element), zeros elsewhere. grad_y
// element (oh, ow) at gy[oh * gsh + ow * gsw]: read in place in any layout (the spike conv's
// channels-last gradient reaches an NCHW pool's backward).
template <typename scalar_t>
void unpool2x2_plane(const uint64_t* words, int64_t base, const scalar_t* gy, int64_t gsh, int64_t gsw,
                     scalar_t* __restrict gx, int64_t OH, int64_t OW, int64_t W) {
  for (int64_t oh = 0; oh < OH; ++oh) {
    const int64_t k0 = base + 2 * oh * W;
    scalar_t* x0 = gx + 2 * oh * W;
    for (int64_t o = 0; o < OW; o += 32) {
      const int64_t n = std::min<int64_t>(32, OW - o);
      uint64_t m0, m1;
      route2x2(words, k0, k0 + W, o, n, m0, m1);
      unpool2x2_tail(gy + oh * gsh, gsw, m0, m1, x0, x0 + W, o, 0, n);
    }
  }
}

#if defined(TNA_AVX2_DISPATCH)
// bits e .. e + 7 of m -> lane masks (lane l all ones when bit e + l is set)
__attribute__((target("avx2"))) inline __m256 spread8(uint64_t m, int64_t e) {
  const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i b = _mm256_and_si256(_mm256_set1_epi32(int((m >> e) & 0xff)), lane_bit);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, lane_bit));
}

// unpool2x2_plane for float on AVX2, four windows (eight input columns) per step: the four
// gradients duplicated pairwise into one vector, ANDed with each row's 8-bit routing mask spread
// over the lanes (v or +0.0, as keep_if). The scalar loop took 2.6 ms on [256, 16, 32, 32] (one
// thread), this one 1.3 ms.
__attribute__((target("avx2"))) void unpool2x2_plane_avx2(const uint64_t* words, int64_t base, const float* gy,
                                                          int64_t gsh, int64_t gsw, float* __restrict gx, int64_t OH,
                                                          int64_t OW, int64_t W) {
  for (int64_t oh = 0; oh < OH; ++oh) {
    const int64_t k0 = base + 2 * oh * W;
    float* x0 = gx + 2 * oh * W;
    float* x1 = x0 + W;
    const float* g = gy + oh * gsh;
    for (int64_t o = 0; o < OW; o += 32) {
      const int64_t n = std::min<int64_t>(32, OW - o);
      uint64_t m0, m1;
      route2x2(words, k0, k0 + W, o, n, m0, m1);
      int64_t j = 0;
      for (; j + 4 <= n; j += 4) {
        const float* gj = g + (o + j) * gsw;
        __m128 v = gsw == 1 ? _mm_loadu_ps(gj) : _mm_setr_ps(gj[0], gj[gsw], gj[2 * gsw], gj[3 * gsw]);
        v = _mm_add_ps(_mm_setzero_ps(), v);  // plus_zero
        const __m256 d = _mm256_set_m128(_mm_unpackhi_ps(v, v), _mm_unpacklo_ps(v, v));
        _mm256_storeu_ps(x0 + 2 * (o + j), _mm256_and_ps(d, spread8(m0, 2 * j)));
        _mm256_storeu_ps(x1 + 2 * (o + j), _mm256_and_ps(d, spread8(m1, 2 * j)));
      }
      unpool2x2_tail(g, gsw, m0, m1, x0, x1, o, 2 * j, n);
    }
  }
}

#endif

// unpool2x2_plane, on AVX2 for float when the CPU has it.
template <typename scalar_t>
void unpool2x2(const uint64_t* words, int64_t base, const scalar_t* gy, int64_t gsh, int64_t gsw, scalar_t* gx,
               int64_t OH, int64_t OW, int64_t W) {
#if defined(TNA_AVX2_DISPATCH)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (cpu_has_avx2()) return unpool2x2_plane_avx2(words, base, gy, gsh, gsw, gx, OH, OW, W);
  }
#endif
  unpool2x2_plane(words, base, gy, gsh, gsw, gx, OH, OW, W);
}

// Any geometry, onto a zeroed grad_x plane (overlapping windows add up).
template <typename scalar_t>
void unpool_plane(const uint64_t* words, int64_t base, const scalar_t* gy, scalar_t* gx, int64_t H,
                  int64_t W, int64_t OH, int64_t OW, const PoolGeometry& g) {
  for (int64_t oh = 0; oh < OH; ++oh) {
    int64_t h0, h1;
    window(oh * g.sh - g.ph, g.kh, g.dh, H, h0, h1);
    for (int64_t ow = 0; ow < OW; ++ow) {
      int64_t w0, w1;
      window(ow * g.sw - g.pw, g.kw, g.dw, W, w0, w1);
      // A window that lies wholly in the padding (possible with dilation) covers no input: no
      // gradient to route (its "first element" would be past the plane).
      if (h0 >= h1 || w0 >= w1) continue;
      int64_t arg = h0 * W + w0;  // no spike in the window: its first element
      bool found = false;
      for (int64_t h = h0; h < h1 && !found; h += g.dh) {
        for (int64_t w = w0; w < w1; w += g.dw) {
          if (bit_at(words, base + h * W + w)) {
            arg = h * W + w;
            found = true;
            break;
          }
        }
      }
      // in opmath_t, rounded once (c10::Half / BFloat16's +=)
      gx[arg] = static_cast<scalar_t>(static_cast<opmath_t<scalar_t>>(gx[arg]) +
                                      static_cast<opmath_t<scalar_t>>(gy[oh * OW + ow]));
    }
  }
}

// ---- Channels-last 2x2 pools (x [N, H, W, C] in memory; the spike conv's layout) ----------------
// y[n, oh, ow, :] = the first maximum of the window's four channel rows, as pool2x2_plane.
template <typename scalar_t>
TNA_MULTIVERSION void pool2x2_cl_row(const scalar_t* __restrict x, scalar_t* __restrict y, int64_t OW, int64_t W,
                                     int64_t C) {
  for (int64_t ow = 0; ow < OW; ++ow) {
    const scalar_t* r00 = x + 2 * ow * C;
    const scalar_t* r01 = r00 + C;
    const scalar_t* r10 = r00 + W * C;
    const scalar_t* r11 = r10 + C;
    scalar_t* out = y + ow * C;
    for (int64_t c = 0; c < C; ++c) {
      float a = static_cast<float>(r00[c]);
      const float b = static_cast<float>(r01[c]), d = static_cast<float>(r10[c]), e = static_cast<float>(r11[c]);
      a = b > a ? b : a;
      a = d > a ? d : a;
      a = e > a ? e : a;
      out[c] = static_cast<scalar_t>(a);
    }
  }
}

// The backward of pool2x2_cl_row for one output row: bits [H, W, CW] of one sample (pack_spikes
// along channels), grad_y element (c, ow) at gy[c * gsc + ow * gsp]; grad_x rows 2oh, 2oh + 1
// written whole.
template <typename scalar_t>
TNA_MULTIVERSION void unpool2x2_cl_row(const uint64_t* bits0, const uint64_t* bits1, const scalar_t* gy,
                                       int64_t gsc, int64_t gsp, scalar_t* __restrict gx0,
                                       scalar_t* __restrict gx1, int64_t OW, int64_t C, int64_t CW) {
  for (int64_t ow = 0; ow < OW; ++ow) {
    const uint64_t* w00 = bits0 + 2 * ow * CW;
    const uint64_t* w01 = w00 + CW;
    const uint64_t* w10 = bits1 + 2 * ow * CW;
    const uint64_t* w11 = w10 + CW;
    scalar_t* x00 = gx0 + 2 * ow * C;
    scalar_t* x01 = x00 + C;
    scalar_t* x10 = gx1 + 2 * ow * C;
    scalar_t* x11 = x10 + C;
    const scalar_t* g = gy + ow * gsp;
    for (int64_t k = 0; k < CW; ++k) {
      const uint64_t a = w00[k], b = w01[k], d = w10[k], e = w11[k];
      // which element takes each channel's gradient: the first spike, else the first element
      const uint64_t f00 = a | ~(b | d | e), f01 = ~a & b, f10 = ~a & ~b & d, f11 = ~a & ~b & ~d & e;
      const int64_t c0 = k * 64, n = std::min<int64_t>(64, C - c0);
      // 16 channels at a time on 32-bit masks (lane l tests bit l): vectorises as blends
      for (int64_t j0 = 0; j0 < n; j0 += 16) {
        const uint32_t m00 = uint32_t(f00 >> j0), m01 = uint32_t(f01 >> j0), m10 = uint32_t(f10 >> j0),
                       m11 = uint32_t(f11 >> j0);
        const int64_t len = std::min<int64_t>(16, n - j0), c = c0 + j0;
        for (int64_t l = 0; l < len; ++l) {
          const scalar_t v = plus_zero(g[(c + l) * gsc]), zero = scalar_t(0.0f);
          const uint32_t bit = uint32_t(1) << l;
          x00[c + l] = (m00 & bit) ? v : zero;
          x01[c + l] = (m01 & bit) ? v : zero;
          x10[c + l] = (m10 & bit) ? v : zero;
          x11[c + l] = (m11 & bit) ? v : zero;
        }
      }
    }
  }
}

// "[a, b, ...]", as torch prints a size list in its messages.
std::string list_str(const std::vector<int64_t>& v) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << ']';
  return os.str();
}

int64_t pair_at(const std::vector<int64_t>& v, const char* name, int64_t lo, size_t i) {
  TNA_CHECK(v.size() == 2, name, " must have two values, got ", list_str(v));
  TNA_CHECK(v[i] >= lo, name, " values must be >= ", lo, ", got ", list_str(v));
  return v[i];
}

}  // namespace

PoolGeometry pool_geometry(const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                           const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation) {
  PoolGeometry g{pair_at(kernel, "kernel_size", 1, 0), pair_at(kernel, "kernel_size", 1, 1),
                 pair_at(stride, "stride", 1, 0),      pair_at(stride, "stride", 1, 1),
                 pair_at(padding, "padding", 0, 0),    pair_at(padding, "padding", 0, 1),
                 pair_at(dilation, "dilation", 1, 0),  pair_at(dilation, "dilation", 1, 1)};
  TNA_CHECK(2 * g.ph <= g.kh && 2 * g.pw <= g.kw, "padding must be at most half the kernel size, got padding ",
            list_str(padding), " for kernel_size ", list_str(kernel));
  return g;
}

std::pair<int64_t, int64_t> pool_output_size(const std::vector<int64_t>& x_shape,
                                             const std::vector<int64_t>& kernel,
                                             const std::vector<int64_t>& stride,
                                             const std::vector<int64_t>& padding,
                                             const std::vector<int64_t>& dilation, bool ceil_mode) {
  TNA_CHECK(x_shape.size() == 4, "x must be [N, C, H, W], got shape ", list_str(x_shape));
  const PoolGeometry g = pool_geometry(kernel, stride, padding, dilation);
  const int64_t H = x_shape[2], W = x_shape[3];
  const int64_t OH = pooled_size(H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  const int64_t OW = pooled_size(W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
  TNA_CHECK(OH >= 1 && OW >= 1, "x of shape ", list_str(x_shape), " is too small for kernel_size ",
            list_str(kernel), " with padding ", list_str(padding), " and dilation ", list_str(dilation));
  return {OH, OW};
}

void spike_max_pool2d(DType dtype, const void* x, void* y, int64_t N, int64_t C, int64_t H, int64_t W,
                      const PoolGeometry& g, bool ceil_mode) {
  const int64_t OH = pooled_size(H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  const int64_t OW = pooled_size(W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
  TNA_CHECK(OH >= 1 && OW >= 1, "x is too small for the pooling window");
  const bool fast = is_2x2(g, H, W);
  dispatch_floating(dtype, "x", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const scalar_t* xp = static_cast<const scalar_t*>(x);
    scalar_t* yp = static_cast<scalar_t*>(y);
    parallel_for(0, N * C, std::max<int64_t>(1, 16384 / (H * W)), [&](int64_t p0, int64_t p1) {
      std::vector<float> acc(OW);
      for (int64_t p = p0; p < p1; ++p) {
        if (fast) {
          pool2x2_plane(xp + p * H * W, yp + p * OH * OW, OH, OW, W);
        } else {
          pool_plane(xp + p * H * W, yp + p * OH * OW, H, W, OH, OW, g, acc.data());
        }
      }
    });
  });
}

void spike_max_pool2d_backward(DType dtype, const void* grad_y, const uint64_t* bits, void* grad_x,
                               int64_t N, int64_t C, int64_t H, int64_t W, const PoolGeometry& g,
                               bool ceil_mode) {
  const int64_t K = C * H * W, KW = (K + 63) / 64;
  const int64_t OH = pooled_size(H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  const int64_t OW = pooled_size(W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
  if (is_2x2(g, H, W)) {  // contiguous grad_y
    spike_max_pool2d_2x2_backward(dtype, grad_y, C * OH * OW, OH * OW, OW, 1, bits, grad_x, N, C, H, W, false);
    return;
  }
  dispatch_floating(dtype, "grad_y", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const scalar_t* gyp = static_cast<const scalar_t*>(grad_y);
    scalar_t* gxp = static_cast<scalar_t*>(grad_x);
    // planes write disjoint parts of grad_x; overlapping windows add up, so each plane is zeroed first
    parallel_for(0, N * C, std::max<int64_t>(1, 16384 / (H * W)), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        std::fill(gxp + p * H * W, gxp + (p + 1) * H * W, scalar_t(0.0f));
        unpool_plane(bits + (p / C) * KW, (p % C) * H * W, gyp + p * OH * OW, gxp + p * H * W, H, W, OH, OW, g);
      }
    });
  });
}

void spike_max_pool2d_2x2_backward(DType dtype, const void* grad_y, int64_t gsn, int64_t gsc, int64_t gsh,
                                   int64_t gsw, const uint64_t* bits, void* grad_x, int64_t N, int64_t C, int64_t H,
                                   int64_t W, bool channels_last) {
  TNA_CHECK(H % 2 == 0 && W % 2 == 0, "the 2x2 pool's backward needs even H and W, got ", H, " x ", W);
  const int64_t OH = H / 2, OW = W / 2;
  dispatch_floating(dtype, "grad_y", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const scalar_t* gyp = static_cast<const scalar_t*>(grad_y);
    scalar_t* gxp = static_cast<scalar_t*>(grad_x);
    if (channels_last) {  // bits [N, H, W, CW], grad_x [N, H, W, C]: a pair of input rows per task
      const int64_t CW = (C + 63) / 64;
      parallel_for(0, N * OH, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t n = r / OH, oh = r % OH;
          const uint64_t* b0 = bits + ((n * H + 2 * oh) * W) * CW;
          scalar_t* x0 = gxp + ((n * H + 2 * oh) * W) * C;
          unpool2x2_cl_row(b0, b0 + W * CW, gyp + n * gsn + oh * gsh, gsc, gsw, x0, x0 + W * C, OW, C, CW);
        }
      });
      return;
    }
    // bits [N, KW], grad_x NCHW: a plane per task; planes of one sample are neighbours, so a
    // channels-last grad_y's lines are reused from cache
    const int64_t KW = (C * H * W + 63) / 64;
    parallel_for(0, N * C, std::max<int64_t>(1, 16384 / (H * W)), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = p / C, c = p % C;
        unpool2x2(bits + n * KW, c * H * W, gyp + n * gsn + c * gsc, gsh, gsw, gxp + p * H * W, OH, OW, W);
      }
    });
  });
}

void spike_max_pool2d_2x2_cl(DType dtype, const void* x, void* y, int64_t N, int64_t C, int64_t H, int64_t W) {
  TNA_CHECK(H % 2 == 0 && W % 2 == 0, "the channels-last 2x2 pool needs even H and W, got ", H, " x ", W);
  const int64_t OH = H / 2, OW = W / 2;
  dispatch_floating(dtype, "x", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const scalar_t* xp = static_cast<const scalar_t*>(x);
    scalar_t* yp = static_cast<scalar_t*>(y);
    parallel_for(0, N * OH, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / OH, oh = r % OH;
        pool2x2_cl_row(xp + ((n * H + 2 * oh) * W) * C, yp + r * OW * C, OW, W, C);
      }
    });
  });
}

}  // namespace tna
