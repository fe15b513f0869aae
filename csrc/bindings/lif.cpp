// Python bindings of the LIF family (tna_kernels/ops/lif.py, ops/lif_pack.py): tensors arrive as
// data_ptr() integers (0 for None), dtypes as codes, the surrogate as its index in
// LIF_SURROGATES; outputs are allocated by the caller. Kernels run without the GIL, on `threads`.
#include "../bindings.h"
#include "../cpu/lif.h"
#include "../cpu/lif_pack.h"

namespace {

tna::LifHyper hyper(double tau, bool decay_input, double v_threshold, double v_reset,
                    bool soft_reset, bool detach_reset, int surrogate, double alpha) {
  return {tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset, surrogate, alpha};
}

}  // namespace

TNA_BINDINGS(lif) {
  namespace py = pybind11;
  using tna::as_ptr;
  py::tuple surrogates(tna::kNumLifSurrogates);
  for (int i = 0; i < tna::kNumLifSurrogates; ++i) surrogates[i] = tna::kLifSurrogates[i];
  m.attr("LIF_SURROGATES") = surrogates;

  m.def(
      "lif_fwd",
      [](int dtype, uintptr_t x, int64_t x_stride, uintptr_t v0, int64_t T, int64_t N, double tau,
         bool decay_input, double v_threshold, double v_reset, bool soft_reset, bool detach_reset,
         int surrogate, double alpha, uintptr_t spikes, uintptr_t v_last, uintptr_t h_seq,
         int threads) {
        tna::ThreadsScope scope(threads);
        tna::lif_fwd(tna::to_dtype(dtype), as_ptr<const void>(x), x_stride, as_ptr<const void>(v0), T,
                     N, hyper(tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset,
                              surrogate, alpha),
                     as_ptr<void>(spikes), as_ptr<void>(v_last), as_ptr<void>(h_seq));
      },
      py::arg("dtype"), py::arg("x"), py::arg("x_stride"), py::arg("v0"), py::arg("T"), py::arg("N"),
      py::arg("tau"), py::arg("decay_input"), py::arg("v_threshold"), py::arg("v_reset"),
      py::arg("soft_reset"), py::arg("detach_reset"), py::arg("surrogate"), py::arg("alpha"),
      py::arg("spikes"), py::arg("v_last"), py::arg("h_seq"), py::arg("threads"),
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "lif_bwd",
      [](int dtype, uintptr_t grad_spikes, uintptr_t grad_v_last, uintptr_t h_seq, int64_t T,
         int64_t N, double tau, bool decay_input, double v_threshold, double v_reset,
         bool soft_reset, bool detach_reset, int surrogate, double alpha, uintptr_t grad_x,
         uintptr_t grad_v0, int threads) {
        tna::ThreadsScope scope(threads);
        tna::lif_bwd(tna::to_dtype(dtype), as_ptr<const void>(grad_spikes),
                     as_ptr<const void>(grad_v_last), as_ptr<const void>(h_seq), T, N,
                     hyper(tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset,
                           surrogate, alpha),
                     as_ptr<void>(grad_x), as_ptr<void>(grad_v0));
      },
      py::arg("dtype"), py::arg("grad_spikes"), py::arg("grad_v_last"), py::arg("h_seq"), py::arg("T"),
      py::arg("N"), py::arg("tau"), py::arg("decay_input"), py::arg("v_threshold"),
      py::arg("v_reset"), py::arg("soft_reset"), py::arg("detach_reset"), py::arg("surrogate"),
      py::arg("alpha"), py::arg("grad_x"), py::arg("grad_v0"), py::arg("threads"),
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "lif_bwd_recompute",
      [](int dtype, uintptr_t grad_spikes, int64_t gs_stride, uintptr_t grad_v_last, uintptr_t x,
         int64_t x_stride, uintptr_t v0, int64_t T, int64_t N, double tau, bool decay_input,
         double v_threshold, double v_reset, bool soft_reset, bool detach_reset, int surrogate,
         double alpha, uintptr_t grad_x, uintptr_t grad_v0, int threads) {
        tna::ThreadsScope scope(threads);
        tna::lif_bwd_recompute(tna::to_dtype(dtype), as_ptr<const void>(grad_spikes), gs_stride,
                               as_ptr<const void>(grad_v_last), as_ptr<const void>(x), x_stride,
                               as_ptr<const void>(v0), T, N,
                               hyper(tau, decay_input, v_threshold, v_reset, soft_reset,
                                     detach_reset, surrogate, alpha),
                               as_ptr<void>(grad_x), as_ptr<void>(grad_v0));
      },
      py::arg("dtype"), py::arg("grad_spikes"), py::arg("gs_stride"), py::arg("grad_v_last"),
      py::arg("x"), py::arg("x_stride"), py::arg("v0"), py::arg("T"), py::arg("N"), py::arg("tau"),
      py::arg("decay_input"), py::arg("v_threshold"), py::arg("v_reset"), py::arg("soft_reset"),
      py::arg("detach_reset"), py::arg("surrogate"), py::arg("alpha"), py::arg("grad_x"),
      py::arg("grad_v0"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());

  m.def(
      "lif_pack",
      [](uintptr_t x, int64_t T, int64_t rows, int64_t N, double tau, bool decay_input,
         double v_threshold, double v_reset, bool soft_reset, uintptr_t out, int threads) {
        tna::ThreadsScope scope(threads);
        const tna::LifPackParams p{static_cast<float>(tau), static_cast<float>(v_threshold),
                                   static_cast<float>(v_reset), decay_input, soft_reset};
        tna::lif_pack(as_ptr<const float>(x), T, rows, N, p, as_ptr<uint64_t>(out));
      },
      py::arg("x"), py::arg("T"), py::arg("rows"), py::arg("N"), py::arg("tau"),
      py::arg("decay_input"), py::arg("v_threshold"), py::arg("v_reset"), py::arg("soft_reset"),
      py::arg("out"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());
}
