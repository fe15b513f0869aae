// Python bindings of the ternary family (csrc/cpu/ternary.h): packed format v1, ternariser, spike x
// ternary linear / conv2d (+ LIF epilogue), the float x ternary pieces (direct small-M kernel,
// decoding, epilogue) and the K-major copy. Tensors come as data_ptr() integers of contiguous
// tensors that tna_kernels/ops/ternary.py checked and allocated; `threads` is last.
#include "../bindings.h"
#include "../cpu/ternary.h"

namespace {

using tna::as_ptr;
using tna::ThreadsScope;
namespace tt = tna::ternary;

}  // namespace

TNA_BINDINGS(ternary) {
  namespace py = pybind11;
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.attr("TERNARY_FORMAT_VERSION") = tt::kFormatVersion;
  py::tuple methods(tt::kNumMethods);
  for (int i = 0; i < tt::kNumMethods; ++i) methods[i] = tt::kMethodNames[i];
  m.attr("TERNARY_METHODS") = methods;
  m.attr("TERNARY_DIRECT_MAX_M") = tt::kDirectMaxM;

  // Queries (no kernel runs, so no thread count).
  m.def("ternary_cpu_isa", [] { return std::string(tt::isa_name(tt::select_isa())); });
  m.def("ternary_gemm_block_cols", &tt::gemm_block_cols, py::arg("N"), py::arg("K"));
  m.def("conv_row_words", &tt::conv_row_words, py::arg("C"), py::arg("taps"));

  m.def(
      "pack_ternary",
      [](uintptr_t codes, int64_t rows, int64_t K, uintptr_t out, int threads) {
        ThreadsScope scope(threads);
        tt::pack_ternary(as_ptr<const int8_t>(codes), rows, K, as_ptr<int64_t>(out));
      },
      nogil);
  m.def(
      "unpack_ternary",
      [](uintptr_t packed, int64_t rows, int64_t K, uintptr_t out, int threads) {
        ThreadsScope scope(threads);
        tt::unpack_ternary(as_ptr<const int64_t>(packed), rows, K, as_ptr<int8_t>(out));
      },
      nogil);
  m.def(
      "pack_spikes",
      [](uintptr_t spikes, int dtype, int64_t A, int64_t K, int64_t P, uintptr_t out, int threads) {
        ThreadsScope scope(threads);
        tt::pack_spikes(as_ptr<const void>(spikes), tna::to_dtype(dtype), A, K, P, as_ptr<int64_t>(out));
      },
      nogil);
  m.def(
      "unpack_spikes",
      [](uintptr_t bits, int64_t rows, int64_t K, uintptr_t out, int threads) {
        ThreadsScope scope(threads);
        tt::unpack_spikes(as_ptr<const int64_t>(bits), rows, K, as_ptr<uint8_t>(out));
      },
      nogil);
  m.def(
      "ternarize",
      [](uintptr_t w, int dtype, int64_t N, int64_t R, int method, bool per_channel, int64_t K_last,
         uintptr_t codes, uintptr_t scale, uintptr_t packed, int threads) {
        ThreadsScope scope(threads);
        tt::ternarize(as_ptr<const void>(w), tna::to_dtype(dtype), N, R, static_cast<tt::Method>(method),
                      per_channel, K_last, as_ptr<int8_t>(codes), as_ptr<float>(scale),
                      as_ptr<int64_t>(packed));
      },
      nogil);
  m.def(
      "ternary_decode",
      [](uintptr_t packed, int64_t rows, int64_t K, int dtype, uintptr_t out, int threads) {
        ThreadsScope scope(threads);
        tt::decode_codes(as_ptr<const int64_t>(packed), rows, K, tna::to_dtype(dtype), as_ptr<void>(out));
      },
      nogil);
  m.def(
      "ternary_check_packed_rows",
      [](uintptr_t packed, int64_t rows, int64_t K, const std::string& name, int threads) {
        ThreadsScope scope(threads);
        tt::check_packed_rows(as_ptr<const int64_t>(packed), rows, K, name.c_str());
      },
      nogil);
  m.def(
      "ternary_scale_bias_f32",
      [](uintptr_t y, int64_t outer, int64_t N, int64_t inner, uintptr_t scale, uintptr_t bias,
         int threads) {
        ThreadsScope scope(threads);
        tt::scale_bias_f32(as_ptr<float>(y), outer, N, inner, as_ptr<const float>(scale),
                           as_ptr<const float>(bias));
      },
      nogil);
  m.def(
      "ternary_linear_direct",
      [](uintptr_t x, int64_t M, int64_t K, uintptr_t w, int64_t N, uintptr_t scale, uintptr_t bias,
         uintptr_t y, int threads) {
        ThreadsScope scope(threads);
        tt::ternary_linear_direct(as_ptr<const float>(x), M, K, as_ptr<const int64_t>(w), N,
                                  as_ptr<const float>(scale), as_ptr<const float>(bias), as_ptr<float>(y));
      },
      nogil);
  m.def(
      "ternary_decode_block_f32",
      [](uintptr_t w, int64_t N, int64_t K, int64_t k0, int64_t k1, uintptr_t out, int64_t ldo,
         int threads) {
        ThreadsScope scope(threads);
        tt::decode_block_f32(as_ptr<const int64_t>(w), N, K, k0, k1, as_ptr<float>(out), ldo);
      },
      nogil);
  m.def(
      "spike_ternary_linear",
      [](uintptr_t spikes, int64_t M, uintptr_t w, int64_t N, int64_t K, uintptr_t scale, uintptr_t bias,
         uintptr_t kmajor, uintptr_t y, int threads) {
        ThreadsScope scope(threads);
        tt::spike_ternary_linear(as_ptr<const int64_t>(spikes), M, as_ptr<const int64_t>(w), N, K,
                                 as_ptr<const float>(scale), as_ptr<const float>(bias),
                                 as_ptr<const int8_t>(kmajor), as_ptr<float>(y));
      },
      nogil);
  m.def(
      "spike_ternary_conv2d",
      [](uintptr_t spikes, int64_t B, int64_t H, int64_t W, int64_t C, uintptr_t w, int64_t N, int64_t kh,
         int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
         uintptr_t scale, uintptr_t bias, uintptr_t kmajor, uintptr_t y, int threads) {
        ThreadsScope scope(threads);
        const tt::ConvShape g{B, H, W, C, N, kh, kw, sh, sw, ph, pw, dh, dw};
        tt::spike_ternary_conv2d(g, as_ptr<const int64_t>(spikes), as_ptr<const int64_t>(w),
                                 as_ptr<const float>(scale), as_ptr<const float>(bias),
                                 as_ptr<const int8_t>(kmajor), as_ptr<float>(y));
      },
      nogil);
  m.def(
      "spike_ternary_conv2d_lif",
      [](uintptr_t spikes, int64_t B, int64_t H, int64_t W, int64_t C, uintptr_t w, int64_t N, int64_t kh,
         int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
         uintptr_t scale, uintptr_t bias, int64_t T, double tau, bool decay_input, double v_threshold,
         double v_reset, bool soft_reset, uintptr_t kmajor, uintptr_t out, int threads) {
        ThreadsScope scope(threads);
        const tt::ConvShape g{B, H, W, C, N, kh, kw, sh, sw, ph, pw, dh, dw};
        const tna::LifPackParams lif{static_cast<float>(tau), static_cast<float>(v_threshold),
                                     static_cast<float>(v_reset), decay_input, soft_reset};
        tt::spike_ternary_conv2d_lif(g, as_ptr<const int64_t>(spikes), as_ptr<const int64_t>(w),
                                     as_ptr<const float>(scale), as_ptr<const float>(bias), T, lif,
                                     as_ptr<const int8_t>(kmajor), as_ptr<int64_t>(out));
      },
      nogil);
  m.def(
      "ternary_kmajor",
      [](uintptr_t w, int64_t N, int64_t taps, int64_t K, uintptr_t out, int threads) {
        ThreadsScope scope(threads);
        tt::ternary_kmajor(as_ptr<const int64_t>(w), N, taps, K, as_ptr<int8_t>(out));
      },
      nogil);
}
