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
// row-major [B*OH*OW, N]), so no transpose pass is needed.
// Float input: decoded codes * scale -> at::conv2d (oneDNN) with the bias: the same computation
// as torch's conv2d on the dequantised weight; backward w.r.t. the input is the transposed
// convolution of grad_y * scale with the codes.
#include <torch/library.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "../common.h"
#include "ternary.h"

namespace tna::ternary {
namespace {

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

at::Tensor spike_ternary_conv2d_cpu(const at::Tensor& spike_bits, const at::Tensor& packed_w,
                                    const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                                    int64_t C, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t version,
                                    const std::optional<at::Tensor>& kmajor) {
  const ConvGeom g = check_conv_weight(packed_w, C, scale, bias, stride, padding, dilation, version);
  TNA_CHECK_CPU(spike_bits);
  TORCH_CHECK(spike_bits.scalar_type() == at::kLong,
              "spike_bits must be int64 packed spike words (pack_spikes along channels), got ",
              spike_bits.scalar_type());
  TORCH_CHECK(spike_bits.dim() == 4 && spike_bits.size(3) == g.CW,
              "spike_bits must have shape [B, H, W, ", g.CW, "] (channels packed last, C = ", C,
              "), got ", spike_bits.sizes());
  const int64_t B = spike_bits.size(0), H = spike_bits.size(1), Wd = spike_bits.size(2);
  const int64_t OH = out_size(H, g.kh, stride[0], padding[0], dilation[0]);
  const int64_t OW = out_size(Wd, g.kw, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(OH >= 1 && OW >= 1, "the input ", H, "x", Wd, " is too small for kernel ", g.kh, "x",
              g.kw, " with this padding/dilation (output would be ", OH, "x", OW, ")");
  const at::Tensor S = spike_bits.contiguous();
  const at::Tensor Wc = packed_w.contiguous();
  const int64_t taps = g.kh * g.kw, CW = g.CW, KW = taps * CW, N = g.N;
  check_packed_rows(Wc, N * taps, C, "packed_w");

  const std::vector<uint64_t> wbuf =
      regroup_taps(reinterpret_cast<const uint64_t*>(Wc.const_data_ptr<int64_t>()), N, taps, CW);

  at::Tensor y = at::empty({B, N, OH, OW}, S.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t M = B * OH * OW;
  if (M == 0 || N == 0) return y;
  const Isa isa = select_isa();
  const auto* sp = reinterpret_cast<const uint64_t*>(S.const_data_ptr<int64_t>());
  const float* scp = scale.contiguous().const_data_ptr<float>();
  const at::Tensor bb = bias.has_value() ? bias->contiguous() : at::Tensor();
  const float* bp = bias.has_value() ? bb.const_data_ptr<float>() : nullptr;
  float* yp = y.mutable_data_ptr<float>();  // channels-last: row m = (b, oh, ow), N floats
  if (kmajor.has_value()) check_kmajor(*kmajor, KW, N);
  const Algo algo =
      select_algo(isa, KW, N, spike_density(sp, S.numel(), B * H * Wd * C), kmajor.has_value());
  const at::Tensor wk = algo != Algo::kEvent ? at::Tensor()
                        : kmajor.has_value() ? *kmajor
                                             : kmajor_codes(wbuf.data(), N, KW);
  const int64_t ldk = wk.defined() ? wk.size(1) : 0;
  const int64_t tm = 64;
  const int64_t tiles = (M + tm - 1) / tm;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint64_t> col(static_cast<size_t>(tm * KW));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = t * tm, mc = std::min(tm, M - m0);
      for (int64_t r = 0; r < mc; ++r) {
        const int64_t m = m0 + r, ow = m % OW, oh = (m / OW) % OH, b = m / (OW * OH);
        uint64_t* dst = col.data() + r * KW;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh * stride[0] - padding[0] + i * dilation[0];
          for (int64_t j = 0; j < g.kw; ++j, dst += CW) {
            const int64_t iw = ow * stride[1] - padding[1] + j * dilation[1];
            if (ih < 0 || ih >= H || iw < 0 || iw >= Wd) {
              std::memset(dst, 0, CW * sizeof(uint64_t));
            } else {
              std::memcpy(dst, sp + ((b * H + ih) * Wd + iw) * CW, CW * sizeof(uint64_t));
            }
          }
        }
      }
      if (algo == Algo::kEvent) {
        event_gemm_rows(isa, col.data(), KW, mc, wk.const_data_ptr<int8_t>(), ldk, KW, N, scp, bp,
                        yp + m0 * N, N);
      } else {
        spike_gemm_tile(isa, col.data(), KW, mc, wbuf.data(), KW, 0, N, scp, bp, yp + m0 * N, N);
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(tna, CPU, m) {
  m.impl("ternary_conv2d", &ternary_conv2d_cpu);
  m.impl("ternary_conv2d_grad_input", &ternary_conv2d_grad_input_cpu);
  m.impl("spike_ternary_conv2d", &spike_ternary_conv2d_cpu);
  m.impl("ternary_kmajor", &ternary_kmajor_cpu);
}

}  // namespace tna::ternary
