// Python bindings of the spike-input training kernels (csrc/cpu/spike_train.h). Tensors arrive as
// data_ptr() integers of contiguous tensors that tna_kernels/ops/spike_train.py checked and
// allocated; `threads` is last.
#include "../bindings.h"
#include "../cpu/spike_train.h"

namespace py = pybind11;

using IntList = std::vector<int64_t>;

TNA_BINDINGS(spike_train) {
  // Number of set bits in n 64-bit words (spike counts of packed spikes: the layer's density).
  m.def(
      "popcount_words",
      [](uintptr_t words, int64_t n) {
        const uint64_t* w = tna::as_ptr<const uint64_t>(words);
        int64_t total = 0;
        for (int64_t i = 0; i < n; ++i) total += __builtin_popcountll(w[i]);
        return total;
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "spike_conv2d_grad_weight",
      [](uintptr_t grad_y, const IntList& grad_y_strides, uintptr_t bits, uintptr_t grad_w, const IntList& input_size,
         int64_t N, int64_t OH,
         int64_t OW, const IntList& kernel, const IntList& stride, const IntList& padding, const IntList& dilation,
         int threads) {
        TNA_CHECK(grad_y_strides.size() == 3, "spike_conv2d_grad_weight: grad_y_strides has 3 values (sample, channel, position)");
        TNA_CHECK(input_size.size() == 4 && kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                      dilation.size() == 2,
                  "spike_conv2d_grad_weight: input_size has 4 values, the geometry 2 each");
        const tna::ConvGeometry g{kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], dilation[0],
                                  dilation[1]};
        tna::ThreadsScope scope(threads);
        tna::spike_conv2d_grad_weight(tna::as_ptr<const float>(grad_y), grad_y_strides[0], grad_y_strides[1],
                                      grad_y_strides[2], tna::as_ptr<const uint64_t>(bits),
                                      tna::as_ptr<float>(grad_w), input_size[0], input_size[1], input_size[2],
                                      input_size[3], N, OH, OW, g);
      },
      py::call_guard<py::gil_scoped_release>());
}
