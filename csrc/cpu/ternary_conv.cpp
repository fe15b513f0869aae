// Ternary conv2d, CPU: bit-packed spikes x ternary (implicit GEMM over bit-packed channels).
// Float x ternary conv (groups = 1) is torch's conv on the decoded codes, run from
// tna_kernels/ops/ternary.py (decode_codes here, then conv2d / conv_transpose2d in torch).
//
// Maths (reference.py is the spec), with codes c[n, i, j, ch], taps (i, j) of a kh x kw kernel:
//   acc[b, n, oh, ow] = sum_{i, j, ch} s[b, ch, oh*sh - ph + i*dh, ow*sw - pw + j*dw] c[n, i, j, ch]
//                       (out-of-range input pixels are zero padding)
//   y = float(acc) * scale[n] + bias[n]                                 (exact acc, 2 roundings)
// Layout: spikes packed along channels, bits [B, H, W, CW] (CW = ceil(C/64), NHWC-bit); weights in
// the canonical format packed along channels per tap, [N, kh, kw, 2, CW]. The kernel regroups the
// weights once per call into [N, 2, kh*kw*CW] (all taps of a plane contiguous), gathers each tile
// of output pixels into an im2col buffer of kh*kw*CW words per pixel (zero words for padding), and
// runs the same micro-kernels as the linear layer (ternary_linear.cpp): popcount, or for sparse
// spikes the event-driven loop over set bits (chosen by input density). T timesteps are
// folded into B by the caller. The output is [B, N, OH, OW] in channels-last memory (the GEMM's
// row-major [B*OH*OW, N]), so no transpose pass is needed. spike_ternary_conv2d_lif runs the
// same GEMM tile by tile with the LIF (lif_pack.cpp) as its epilogue and returns packed spikes.
#include <cstring>
#include <vector>

#include "lif_pack.h"
#include "ternary.h"

namespace tna::ternary {
namespace {

using tna::LifPackParams;
using tna::check_lif_pack_params;
using tna::lif_pack_rows;

// [N, taps, 2, CW] -> [N, 2, conv_row_words]: each plane's taps contiguous, as the micro-kernels
// read. With C <= 32 channels several taps share a word (tap t's C bits at bit (t % per) * C of
// word t / per, per = 64 / C): a 16-channel 3x3 row is 3 words, not 9 words of 16 used bits, so
// the popcount kernels read a third as many words and the event loop leaves a third as many words
// (a mispredicted branch each). The gathered input rows use the same layout (SpikeConv::gather).
std::vector<uint64_t> regroup_taps(const uint64_t* w, int64_t N, int64_t taps, int64_t C) {
  const int64_t CW = words_for(C), KW = conv_row_words(C, taps), per = taps_per_word(C, taps);
  std::vector<uint64_t> out(static_cast<size_t>(N * 2 * KW), 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t pl = 0; pl < 2; ++pl) {
        const uint64_t* src = w + ((n * taps + t) * 2 + pl) * CW;
        uint64_t* dst = &out[(n * 2 + pl) * KW];
        if (per > 1) {
          dst[t / per] |= src[0] << ((t % per) * C);
        } else {
          std::memcpy(dst + t * CW, src, CW * sizeof(uint64_t));
        }
      }
  return out;
}

void check_geometry(const ConvShape& g) {
  TNA_CHECK(g.C >= 1, "the input must have at least one channel, got C = ", g.C);
  TNA_CHECK(g.kh >= 1 && g.kw >= 1, "packed_w kernel size must be >= 1, got ", g.kh, "x", g.kw);
  TNA_CHECK(g.sh >= 1 && g.sw >= 1, "stride must be two integers >= 1, got [", g.sh, ", ", g.sw, "]");
  TNA_CHECK(g.ph >= 0 && g.pw >= 0, "padding must be two integers >= 0, got [", g.ph, ", ", g.pw, "]");
  TNA_CHECK(g.dh >= 1 && g.dw >= 1, "dilation must be two integers >= 1, got [", g.dh, ", ", g.dw,
            "]");
  TNA_CHECK(g.B >= 0 && g.H >= 0 && g.W >= 0 && g.N >= 0, "spike_bits / packed_w sizes must be >= 0");
}

// What both spike conv ops share: checked geometry, the regrouped weight, the chosen micro-kernel,
// the im2col gather of one output pixel and the GEMM of a tile of gathered pixels.
struct SpikeConv {
  ConvShape g;
  int64_t CW, OH, OW, KW, per;
  const uint64_t* S;
  const float* scale;
  const float* bias;
  const int8_t* wk = nullptr;
  KmajorBuffer wk_own;
  std::vector<uint64_t> wbuf;
  Isa isa;
  Algo algo;

  SpikeConv(const ConvShape& shape, const int64_t* spikes, const int64_t* packed_w, const float* sc,
            const float* b, const int8_t* kmajor)
      : g(shape), S(reinterpret_cast<const uint64_t*>(spikes)), scale(sc), bias(b) {
    check_geometry(g);
    CW = words_for(g.C);
    OH = conv_out_size(g.H, g.kh, g.sh, g.ph, g.dh);
    OW = conv_out_size(g.W, g.kw, g.sw, g.pw, g.dw);
    TNA_CHECK(OH >= 1 && OW >= 1, "the input ", g.H, "x", g.W, " is too small for kernel ", g.kh, "x",
              g.kw, " with this padding/dilation (output would be ", OH, "x", OW, ")");
    const int64_t taps = g.kh * g.kw;
    KW = conv_row_words(g.C, taps);
    per = taps_per_word(g.C, taps);
    check_packed_rows(packed_w, g.N * taps, g.C, "packed_w");
    wbuf = regroup_taps(reinterpret_cast<const uint64_t*>(packed_w), g.N, taps, g.C);
    isa = select_isa();
    algo = select_algo(isa, KW, g.N, spike_density(S, g.B * g.H * g.W * CW, g.B * g.H * g.W * g.C),
                       kmajor != nullptr);
    if (algo == Algo::kEvent) wk = kmajor != nullptr ? kmajor : wk_own.build(wbuf.data(), g.N, KW);
  }

  // The KW words of output pixel (oh, ow) of image b: per tap, the CW words of its input pixel
  // (zero words for padding), or with several taps per word (regroup_taps) their C bits shifted
  // into place. The padding bits of a spike word are zero (the packed-format contract), so taps
  // OR together without masking.
  void gather(uint64_t* dst, int64_t b, int64_t oh, int64_t ow) const {
    if (CW == 1) {  // up to 64 channels (the small layers, where this loop is a real part of the cost)
      uint64_t word = 0;
      int64_t slot = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.ph + i * g.dh;
        const bool row_in = ih >= 0 && ih < g.H;
        const uint64_t* src = row_in ? S + (b * g.H + ih) * g.W : S;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = ow * g.sw - g.pw + j * g.dw;
          word |= ((row_in && iw >= 0 && iw < g.W) ? src[iw] : 0) << (slot * g.C);
          if (++slot == per) {
            *dst++ = word;
            word = 0;
            slot = 0;
          }
        }
      }
      if (slot != 0) *dst = word;
      return;
    }
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.sh - g.ph + i * g.dh;
      for (int64_t j = 0; j < g.kw; ++j, dst += CW) {
        const int64_t iw = ow * g.sw - g.pw + j * g.dw;
        if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) {
          std::memset(dst, 0, CW * sizeof(uint64_t));
        } else {
          std::memcpy(dst, S + ((b * g.H + ih) * g.W + iw) * CW, CW * sizeof(uint64_t));
        }
      }
    }
  }

  // out[r * ldo + n] for the mc gathered rows of col (KW words each), every output channel n.
  void gemm(const uint64_t* col, int64_t mc, float* out, int64_t ldo) const {
    if (algo == Algo::kEvent) {
      event_gemm_rows(isa, col, KW, mc, wk, kmajor_ld(g.N), KW, g.N, scale, bias, out, ldo);
    } else {
      spike_gemm_tile(isa, col, KW, mc, wbuf.data(), KW, 0, g.N, scale, bias, out, ldo);
    }
  }
};

}  // namespace

int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

// K-major int8 copy of a packed linear [N, 2, KW] or conv [N, kh, kw, 2, CW] weight, for the
// event-driven spike kernels (cache it next to the weight; never serialised).
void ternary_kmajor(const int64_t* W, int64_t N, int64_t taps, int64_t K, int8_t* out) {
  TNA_CHECK(K >= 1, "K must be >= 1, got ", K);
  TNA_CHECK(taps >= 1, "taps must be >= 1, got ", taps);
  const int64_t CW = words_for(K);
  check_packed_rows(W, N * taps, K, "packed_w");
  const auto* wp = reinterpret_cast<const uint64_t*>(W);
  if (N == 0) return;
  if (taps == 1) return kmajor_codes(wp, N, CW, out);
  const std::vector<uint64_t> g = regroup_taps(wp, N, taps, K);
  kmajor_codes(g.data(), N, conv_row_words(K, taps), out);
}

void spike_ternary_conv2d(const ConvShape& shape, const int64_t* spikes, const int64_t* packed_w,
                          const float* scale, const float* bias, const int8_t* kmajor, float* yp) {
  const SpikeConv c(shape, spikes, packed_w, scale, bias, kmajor);
  const int64_t N = c.g.N, OH = c.OH, OW = c.OW, KW = c.KW;
  const int64_t M = c.g.B * OH * OW;
  if (M == 0 || N == 0) return;
  // yp: channels-last [B, N, OH, OW], so row m = (b, oh, ow) holds N floats
  const int64_t tm = 64;
  const int64_t tiles = (M + tm - 1) / tm;
  parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint64_t> col(static_cast<size_t>(tm * KW));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = t * tm, mc = std::min(tm, M - m0);
      for (int64_t r = 0; r < mc; ++r) {
        const int64_t m = m0 + r;
        c.gather(col.data() + r * KW, m / (OW * OH), (m / OW) % OH, m % OW);
      }
      c.gemm(col.data(), mc, yp + m0 * N, N);
    }
  });
}

// The conv + LIF of packed inference. Output pixels are tiled by position p = (b, oh, ow) of one
// time step; a tile gathers the same positions at all T steps (rows t * tp + i), runs one GEMM
// into a per-thread float tile, and the LIF epilogue walks each position through time and writes
// its spikes packed along channels. The float current never leaves the tile (L2).
void spike_ternary_conv2d_lif(const ConvShape& shape, const int64_t* spikes, const int64_t* packed_w,
                              const float* scale, const float* bias, int64_t T,
                              const LifPackParams& lif, const int8_t* kmajor, int64_t* out) {
  check_lif_pack_params(lif);
  const SpikeConv c(shape, spikes, packed_w, scale, bias, kmajor);
  TNA_CHECK(T >= 1 && c.g.B % T == 0, "T must be >= 1 and divide the leading dimension of spike_bits (",
            c.g.B, " = T * batch, time-major), got T = ", T);
  const int64_t B = c.g.B, N = c.g.N, NW = words_for(N), OH = c.OH, OW = c.OW, KW = c.KW;
  const int64_t P = B / T * OH * OW;  // output positions per time step
  if (P == 0) return;
  auto* op = reinterpret_cast<uint64_t*>(out);
  const int64_t tp = std::max<int64_t>(1, 64 / T);  // positions per tile: ~64 GEMM rows
  const int64_t tiles = (P + tp - 1) / tp;
  parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint64_t> col(static_cast<size_t>(T * tp * KW));
    std::vector<float> cur(static_cast<size_t>(T * tp * N));
    std::vector<float> v(static_cast<size_t>(N));
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t p0 = tile * tp, pc = std::min(tp, P - p0);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < pc; ++i) {
          const int64_t p = p0 + i;
          c.gather(col.data() + (t * pc + i) * KW, t * (B / T) + p / (OW * OH), (p / OW) % OH, p % OW);
        }
      }
      c.gemm(col.data(), T * pc, cur.data(), N);
      lif_pack_rows(cur.data(), pc * N, pc, N, T, lif, op + p0 * NW, P * NW, v.data());
    }
  });
}

}  // namespace tna::ternary
