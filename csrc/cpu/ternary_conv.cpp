// Ternary conv2d, CPU: bit-packed spikes x ternary (implicit GEMM over bit-packed channels) and
// float x ternary (groups = 1).
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
// Float input: decoded codes * scale -> at::conv2d (oneDNN) with the bias: the same computation
// as torch's conv2d on the dequantised weight; backward w.r.t. the input is the transposed
// convolution of grad_y * scale with the codes.
#include <torch/library.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "../common.h"
#include "lif_pack.h"
#include "output_alloc.h"
#include "ternary.h"

namespace tna::ternary {
namespace {

using tna::LifPackParams;
using tna::check_lif_pack_params;
using tna::lif_pack_rows;

struct ConvGeom {
  int64_t N, kh, kw, CW, C;
};

ConvGeom check_conv_weight(const at::Tensor& packed_w, int64_t C, const at::Tensor& scale,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t version) {
  check_version(version);
  check_packed(packed_w, "packed_w");
  TORCH_CHECK(packed_w.dim() == 5,
              "packed_w must have shape [N, kh, kw, 2, CW] for conv2d (codes [N, kh, kw, C] "
              "packed along C), got ", packed_w.sizes());
  TORCH_CHECK(C >= 1, "the input must have at least one channel, got C = ", C);
  TORCH_CHECK(packed_w.size(4) == words_for(C), "packed_w has ", packed_w.size(4),
              " words per plane but the input has C = ", C, " channels (needs ceil(C/64) = ",
              words_for(C), ")");
  TORCH_CHECK(packed_w.size(1) >= 1 && packed_w.size(2) >= 1, "packed_w kernel size must be >= 1, got ",
              packed_w.sizes());
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1,
              "stride must be two integers >= 1, got ", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0,
              "padding must be two integers >= 0, got ", padding);
  TORCH_CHECK(dilation.size() == 2 && dilation[0] >= 1 && dilation[1] >= 1,
              "dilation must be two integers >= 1, got ", dilation);
  check_scale_bias(scale, bias, packed_w.size(0));
  return {packed_w.size(0), packed_w.size(1), packed_w.size(2), packed_w.size(4), C};
}

// [N, taps, 2, CW] -> [N, 2, taps * CW]: each plane's taps contiguous, as the micro-kernels read.
std::vector<uint64_t> regroup_taps(const uint64_t* w, int64_t N, int64_t taps, int64_t CW) {
  std::vector<uint64_t> out(static_cast<size_t>(N * 2 * taps * CW));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t pl = 0; pl < 2; ++pl)
        std::memcpy(&out[(n * 2 + pl) * taps * CW + t * CW], w + ((n * taps + t) * 2 + pl) * CW,
                    CW * sizeof(uint64_t));
  return out;
}

// K-major int8 copy of a packed linear [N, 2, KW] or conv [N, kh, kw, 2, CW] weight, for the
// event-driven spike kernels (cache it next to the weight; never serialised).
at::Tensor ternary_kmajor_cpu(const at::Tensor& packed_w, int64_t K, int64_t version) {
  check_version(version);
  check_packed(packed_w, "packed_w");
  TORCH_CHECK(packed_w.dim() == 3 || packed_w.dim() == 5,
              "packed_w must be [N, 2, KW] (linear) or [N, kh, kw, 2, CW] (conv2d), got ", packed_w.sizes());
  TORCH_CHECK(K >= 1 && packed_w.size(-1) == words_for(K), "packed_w has ", packed_w.size(-1),
              " words per plane but K = ", K, " needs ceil(K/64) = ", words_for(K));
  const at::Tensor w = packed_w.contiguous();
  const int64_t N = w.size(0), taps = w.dim() == 5 ? w.size(1) * w.size(2) : 1, CW = w.size(-1);
  check_packed_rows(w, N * taps, K, "packed_w");
  const auto* wp = reinterpret_cast<const uint64_t*>(w.const_data_ptr<int64_t>());
  if (taps == 1) return kmajor_codes(wp, N, CW);
  const std::vector<uint64_t> g = regroup_taps(wp, N, taps, CW);
  return kmajor_codes(g.data(), N, taps * CW);
}

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

// Decoded codes as a torch conv weight [N, C, kh, kw] in `dtype`.
at::Tensor decode_conv(const at::Tensor& pw, const ConvGeom& g, at::ScalarType dtype) {
  at::Tensor d = at::empty({g.N, g.kh, g.kw, g.C}, pw.options().dtype(dtype));
  decode_codes(pw, g.N * g.kh * g.kw, g.C, d);
  return d.permute({0, 3, 1, 2}).contiguous();
}

at::Tensor ternary_conv2d_cpu(const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& scale,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t version) {
  TNA_CHECK_CPU(x);
  TNA_CHECK_FLOATING(x);
  TORCH_CHECK(x.dim() == 4, "x must have shape [B, C, H, W], got ", x.sizes());
  const ConvGeom g = check_conv_weight(packed_w, x.size(1), scale, bias, stride, padding, dilation, version);
  const at::Tensor Wt = packed_w.contiguous();
  check_packed_rows(Wt, g.N * g.kh * g.kw, g.C, "packed_w");
  const at::ScalarType acc_t = at::toOpMathType(x.scalar_type());
  // The per-channel scale is folded into the decoded weight (code * scale is exact) and the bias
  // goes to the convolution, so oneDNN runs exactly torch's conv2d with no extra output pass.
  const at::Tensor w = decode_conv(Wt, g, acc_t) * scale.to(acc_t).view({-1, 1, 1, 1});
  const std::optional<at::Tensor> b =
      bias.has_value() ? std::optional<at::Tensor>(bias->to(acc_t)) : std::nullopt;
  at::Tensor y = at::conv2d(x.to(acc_t), w, b, stride, padding, dilation);
  return y.to(x.scalar_type());
}

at::Tensor ternary_conv2d_grad_input_cpu(const at::Tensor& grad_y, const at::Tensor& packed_w,
                                         const at::Tensor& scale, at::IntArrayRef input_size,
                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation, int64_t version) {
  TNA_CHECK_CPU(grad_y);
  TNA_CHECK_FLOATING(grad_y);
  TORCH_CHECK(input_size.size() == 4, "input_size must be [B, C, H, W], got ", input_size);
  const ConvGeom g = check_conv_weight(packed_w, input_size[1], scale, std::nullopt, stride, padding,
                                       dilation, version);
  const int64_t OH = out_size(input_size[2], g.kh, stride[0], padding[0], dilation[0]);
  const int64_t OW = out_size(input_size[3], g.kw, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == input_size[0] && grad_y.size(1) == g.N &&
                  grad_y.size(2) == OH && grad_y.size(3) == OW,
              "grad_y must have shape [", input_size[0], ", ", g.N, ", ", OH, ", ", OW, "], got ",
              grad_y.sizes());
  const at::ScalarType acc_t = at::toOpMathType(grad_y.scalar_type());
  const at::Tensor gs = grad_y.to(acc_t) * scale.to(acc_t).view({1, -1, 1, 1});
  // Rows/cols of the input that no output reads are recovered with output_padding.
  const int64_t op_h = input_size[2] - ((OH - 1) * stride[0] - 2 * padding[0] + dilation[0] * (g.kh - 1) + 1);
  const int64_t op_w = input_size[3] - ((OW - 1) * stride[1] - 2 * padding[1] + dilation[1] * (g.kw - 1) + 1);
  at::Tensor gx = at::conv_transpose2d(gs, decode_conv(packed_w.contiguous(), g, acc_t), {}, stride,
                                       padding, {op_h, op_w}, 1, dilation);
  return gx.to(grad_y.scalar_type());
}

// What both spike conv ops share: checked geometry, the regrouped weight, the chosen micro-kernel,
// the im2col gather of one output pixel and the GEMM of a tile of gathered pixels.
struct SpikeConv {
  ConvGeom g;
  int64_t B, H, Wd, OH, OW, KW;
  int64_t sh, sw, ph, pw, dh, dw;
  at::Tensor S, scale, bias, wk;
  std::vector<uint64_t> wbuf;
  Isa isa;
  Algo algo;

  // The KW words of output pixel (oh, ow) of image b: per tap, the CW words of its input pixel
  // (zero words for padding).
  void gather(uint64_t* dst, int64_t b, int64_t oh, int64_t ow) const {
    const auto* sp = reinterpret_cast<const uint64_t*>(S.const_data_ptr<int64_t>());
    const int64_t CW = g.CW;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * sh - ph + i * dh;
      for (int64_t j = 0; j < g.kw; ++j, dst += CW) {
        const int64_t iw = ow * sw - pw + j * dw;
        if (ih < 0 || ih >= H || iw < 0 || iw >= Wd) {
          std::memset(dst, 0, CW * sizeof(uint64_t));
        } else {
          std::memcpy(dst, sp + ((b * H + ih) * Wd + iw) * CW, CW * sizeof(uint64_t));
        }
      }
    }
  }

  // out[r * ldo + n] for the mc gathered rows of col (KW words each), every output channel n.
  void gemm(const uint64_t* col, int64_t mc, float* out, int64_t ldo) const {
    const float* scp = scale.const_data_ptr<float>();
    const float* bp = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
    if (algo == Algo::kEvent) {
      event_gemm_rows(isa, col, KW, mc, wk.const_data_ptr<int8_t>(), wk.size(1), KW, g.N, scp, bp,
                      out, ldo);
    } else {
      spike_gemm_tile(isa, col, KW, mc, wbuf.data(), KW, 0, g.N, scp, bp, out, ldo);
    }
  }
};

SpikeConv plan_spike_conv(const at::Tensor& spike_bits, const at::Tensor& packed_w,
                          const at::Tensor& scale, const std::optional<at::Tensor>& bias, int64_t C,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                          int64_t version, const std::optional<at::Tensor>& kmajor) {
  SpikeConv c;
  c.g = check_conv_weight(packed_w, C, scale, bias, stride, padding, dilation, version);
  const ConvGeom& g = c.g;
  TNA_CHECK_CPU(spike_bits);
  TORCH_CHECK(spike_bits.scalar_type() == at::kLong,
              "spike_bits must be int64 packed spike words (pack_spikes along channels), got ",
              spike_bits.scalar_type());
  TORCH_CHECK(spike_bits.dim() == 4 && spike_bits.size(3) == g.CW,
              "spike_bits must have shape [B, H, W, ", g.CW, "] (channels packed last, C = ", C,
              "), got ", spike_bits.sizes());
  c.B = spike_bits.size(0), c.H = spike_bits.size(1), c.Wd = spike_bits.size(2);
  c.OH = out_size(c.H, g.kh, stride[0], padding[0], dilation[0]);
  c.OW = out_size(c.Wd, g.kw, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(c.OH >= 1 && c.OW >= 1, "the input ", c.H, "x", c.Wd, " is too small for kernel ", g.kh,
              "x", g.kw, " with this padding/dilation (output would be ", c.OH, "x", c.OW, ")");
  c.sh = stride[0], c.sw = stride[1], c.ph = padding[0], c.pw = padding[1], c.dh = dilation[0],
  c.dw = dilation[1];
  c.S = spike_bits.contiguous();
  const at::Tensor Wc = packed_w.contiguous();
  const int64_t taps = g.kh * g.kw;
  c.KW = taps * g.CW;
  check_packed_rows(Wc, g.N * taps, C, "packed_w");
  c.wbuf = regroup_taps(reinterpret_cast<const uint64_t*>(Wc.const_data_ptr<int64_t>()), g.N, taps, g.CW);
  c.scale = scale.contiguous();
  if (bias.has_value()) c.bias = bias->contiguous();
  c.isa = select_isa();
  if (kmajor.has_value()) check_kmajor(*kmajor, c.KW, g.N);
  const auto* sp = reinterpret_cast<const uint64_t*>(c.S.const_data_ptr<int64_t>());
  c.algo = select_algo(c.isa, c.KW, g.N, spike_density(sp, c.S.numel(), c.B * c.H * c.Wd * C),
                       kmajor.has_value());
  if (c.algo == Algo::kEvent) c.wk = kmajor.has_value() ? *kmajor : kmajor_codes(c.wbuf.data(), g.N, c.KW);
  return c;
}

at::Tensor spike_ternary_conv2d_cpu(const at::Tensor& spike_bits, const at::Tensor& packed_w,
                                    const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                                    int64_t C, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t version,
                                    const std::optional<at::Tensor>& kmajor) {
  const SpikeConv c =
      plan_spike_conv(spike_bits, packed_w, scale, bias, C, stride, padding, dilation, version, kmajor);
  const int64_t N = c.g.N, OH = c.OH, OW = c.OW, KW = c.KW;
  at::Tensor y = empty_output({c.B, N, OH, OW}, c.S.options().dtype(at::kFloat),
                              at::MemoryFormat::ChannelsLast);
  const int64_t M = c.B * OH * OW;
  if (M == 0 || N == 0) return y;
  float* yp = y.mutable_data_ptr<float>();  // channels-last: row m = (b, oh, ow), N floats
  const int64_t tm = 64;
  const int64_t tiles = (M + tm - 1) / tm;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
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
  return y;
}

// The conv + LIF of packed inference. Output pixels are tiled by position p = (b, oh, ow) of one
// time step; a tile gathers the same positions at all T steps (rows t * tp + i), runs one GEMM
// into a per-thread float tile, and the LIF epilogue walks each position through time and writes
// its spikes packed along channels. The float current never leaves the tile (L2).
at::Tensor spike_ternary_conv2d_lif_cpu(const at::Tensor& spike_bits, const at::Tensor& packed_w,
                                        const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                                        int64_t C, at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, int64_t version, int64_t T,
                                        double tau, bool decay_input, double v_threshold,
                                        double v_reset, bool soft_reset,
                                        const std::optional<at::Tensor>& kmajor) {
  const LifPackParams lif{static_cast<float>(tau), static_cast<float>(v_threshold),
                          static_cast<float>(v_reset), decay_input, soft_reset};
  check_lif_pack_params(lif);
  const SpikeConv c =
      plan_spike_conv(spike_bits, packed_w, scale, bias, C, stride, padding, dilation, version, kmajor);
  TORCH_CHECK(T >= 1 && c.B % T == 0, "T must be >= 1 and divide the leading dimension of spike_bits (",
              c.B, " = T * batch, time-major), got T = ", T);
  const int64_t N = c.g.N, NW = words_for(N), OH = c.OH, OW = c.OW, KW = c.KW;
  const int64_t P = c.B / T * OH * OW;  // output positions per time step
  at::Tensor out = empty_output({c.B, OH, OW, NW}, c.S.options());
  if (P == 0) return out;
  auto* op = reinterpret_cast<uint64_t*>(out.mutable_data_ptr<int64_t>());
  const int64_t tp = std::max<int64_t>(1, 64 / T);  // positions per tile: ~64 GEMM rows
  const int64_t tiles = (P + tp - 1) / tp;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint64_t> col(static_cast<size_t>(T * tp * KW));
    std::vector<float> cur(static_cast<size_t>(T * tp * N));
    std::vector<float> v(static_cast<size_t>(N));
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t p0 = tile * tp, pc = std::min(tp, P - p0);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < pc; ++i) {
          const int64_t p = p0 + i;
          c.gather(col.data() + (t * pc + i) * KW, t * (c.B / T) + p / (OW * OH), (p / OW) % OH, p % OW);
        }
      }
      c.gemm(col.data(), T * pc, cur.data(), N);
      lif_pack_rows(cur.data(), pc * N, pc, N, T, lif, op + p0 * NW, P * NW, v.data());
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tna, CPU, m) {
  m.impl("ternary_conv2d", &ternary_conv2d_cpu);
  m.impl("ternary_conv2d_grad_input", &ternary_conv2d_grad_input_cpu);
  m.impl("spike_ternary_conv2d", &spike_ternary_conv2d_cpu);
  m.impl("spike_ternary_conv2d_lif", &spike_ternary_conv2d_lif_cpu);
  m.impl("ternary_kmajor", &ternary_kmajor_cpu);
}

}  // namespace tna::ternary
