// Python bindings of the training batch-norm kernels (csrc/cpu/batch_norm.h). Tensors arrive as
// data_ptr() integers (0 for None); tna_kernels/ops/batch_norm.py checks them (contiguous float32
// [N, C, S]) and allocates the outputs.
#include "../bindings.h"
#include "../cpu/batch_norm.h"

namespace py = pybind11;

TNA_BINDINGS(batch_norm) {
  m.def(
      "batch_norm_forward",
      [](uintptr_t x, uintptr_t weight, uintptr_t bias, uintptr_t running_mean, uintptr_t running_var,
         uintptr_t y, uintptr_t mean, uintptr_t invstd, int64_t N, int64_t C, int64_t S, double momentum,
         double eps, bool fused, bool channels_last, int threads) {
        tna::ThreadsScope scope(threads);
        tna::batch_norm_forward(tna::as_ptr<const float>(x), tna::as_ptr<const float>(weight),
                                tna::as_ptr<const float>(bias), tna::as_ptr<float>(running_mean),
                                tna::as_ptr<float>(running_var), tna::as_ptr<float>(y), tna::as_ptr<float>(mean),
                                tna::as_ptr<float>(invstd), N, C, S, momentum, eps, fused, channels_last);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "batch_norm_apply",
      [](uintptr_t x, uintptr_t mean, uintptr_t invstd, uintptr_t weight, uintptr_t bias, uintptr_t y, int64_t N,
         int64_t C, int64_t S, bool fused, bool channels_last, int threads) {
        tna::ThreadsScope scope(threads);
        tna::batch_norm_apply(tna::as_ptr<const float>(x), tna::as_ptr<const float>(mean),
                              tna::as_ptr<const float>(invstd), tna::as_ptr<const float>(weight),
                              tna::as_ptr<const float>(bias), tna::as_ptr<float>(y), N, C, S, fused,
                              channels_last);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "batch_norm_backward_cl",
      [](uintptr_t grad_y, uintptr_t x, uintptr_t mean, uintptr_t invstd, uintptr_t weight, uintptr_t grad_x,
         uintptr_t grad_weight, uintptr_t grad_bias, int64_t N, int64_t C, int64_t S, int threads) {
        tna::ThreadsScope scope(threads);
        tna::batch_norm_backward_cl(tna::as_ptr<const float>(grad_y), tna::as_ptr<const float>(x),
                                    tna::as_ptr<const float>(mean), tna::as_ptr<const float>(invstd),
                                    tna::as_ptr<const float>(weight), tna::as_ptr<float>(grad_x),
                                    tna::as_ptr<float>(grad_weight), tna::as_ptr<float>(grad_bias), N, C, S);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "batch_norm_lif_forward_cl",
      [](uintptr_t x, uintptr_t weight, uintptr_t bias, uintptr_t running_mean, uintptr_t running_var,
         uintptr_t mean, uintptr_t invstd, uintptr_t spikes, int64_t T, int64_t N, int64_t C, int64_t S,
         double momentum, double eps, bool fused, double tau, bool decay_input, double v_threshold, double v_reset,
         bool soft_reset, bool detach_reset, int surrogate, double alpha, int threads) {
        tna::ThreadsScope scope(threads);
        tna::batch_norm_lif_forward_cl(
            tna::as_ptr<const float>(x), tna::as_ptr<const float>(weight), tna::as_ptr<const float>(bias),
            tna::as_ptr<float>(running_mean), tna::as_ptr<float>(running_var), tna::as_ptr<float>(mean),
            tna::as_ptr<float>(invstd), tna::as_ptr<float>(spikes), T, N, C, S, momentum, eps, fused,
            {tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset, surrogate, alpha});
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "batch_norm_lif_backward_cl",
      [](uintptr_t grad_spikes, int64_t gs_stride, uintptr_t x, uintptr_t mean, uintptr_t invstd, uintptr_t weight,
         uintptr_t bias, uintptr_t grad_x, uintptr_t grad_weight, uintptr_t grad_bias, int64_t T, int64_t N, int64_t C,
         int64_t S, bool fused, double tau, bool decay_input, double v_threshold, double v_reset, bool soft_reset,
         bool detach_reset, int surrogate, double alpha, int threads) {
        tna::ThreadsScope scope(threads);
        tna::batch_norm_lif_backward_cl(
            tna::as_ptr<const float>(grad_spikes), gs_stride, tna::as_ptr<const float>(x),
            tna::as_ptr<const float>(mean), tna::as_ptr<const float>(invstd), tna::as_ptr<const float>(weight),
            tna::as_ptr<const float>(bias), tna::as_ptr<float>(grad_x), tna::as_ptr<float>(grad_weight),
            tna::as_ptr<float>(grad_bias), T, N, C, S, fused,
            {tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset, surrogate, alpha});
      },
      py::call_guard<py::gil_scoped_release>());
}
