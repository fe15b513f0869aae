// Python bindings of the spike max-pool kernels (csrc/cpu/spike_pool.h). Tensors arrive as
// data_ptr() integers, dtypes as codes; tna_kernels/ops/spike_pool.py packs the input
// (tna::pack_spikes), checks the tensors and allocates the outputs.
#include "../bindings.h"
#include "../cpu/spike_pool.h"

namespace py = pybind11;

using IntList = std::vector<int64_t>;

TNA_BINDINGS(spike_pool) {
  // (OH, OW) for x of shape x_shape, after checking the shape and the pooling arguments.
  m.def("spike_pool_output_size", &tna::pool_output_size, py::arg("x_shape"), py::arg("kernel_size"),
        py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("ceil_mode"));
  m.def(
      "spike_max_pool2d",
      [](int dtype, uintptr_t x, uintptr_t y, const IntList& shape, const IntList& kernel,
         const IntList& stride, const IntList& padding, const IntList& dilation, bool ceil_mode,
         int threads) {
        const tna::PoolGeometry g = tna::pool_geometry(kernel, stride, padding, dilation);
        TNA_CHECK(shape.size() == 4, "x must be [N, C, H, W]");
        tna::ThreadsScope scope(threads);
        tna::spike_max_pool2d(tna::to_dtype(dtype), tna::as_ptr<const void>(x), tna::as_ptr<void>(y),
                              shape[0], shape[1], shape[2], shape[3], g, ceil_mode);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "spike_max_pool2d_backward",
      [](int dtype, uintptr_t grad_y, uintptr_t bits, uintptr_t grad_x, const IntList& input_size,
         const IntList& kernel, const IntList& stride, const IntList& padding, const IntList& dilation,
         bool ceil_mode, int threads) {
        const tna::PoolGeometry g = tna::pool_geometry(kernel, stride, padding, dilation);
        TNA_CHECK(input_size.size() == 4, "input_size must be [N, C, H, W], got ", input_size.size(),
                  " values");
        tna::ThreadsScope scope(threads);
        tna::spike_max_pool2d_backward(tna::to_dtype(dtype), tna::as_ptr<const void>(grad_y),
                                       tna::as_ptr<const uint64_t>(bits), tna::as_ptr<void>(grad_x),
                                       input_size[0], input_size[1], input_size[2], input_size[3], g,
                                       ceil_mode);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "spike_max_pool2d_2x2_cl",
      [](int dtype, uintptr_t x, uintptr_t y, int64_t N, int64_t C, int64_t H, int64_t W, int threads) {
        tna::ThreadsScope scope(threads);
        tna::spike_max_pool2d_2x2_cl(tna::to_dtype(dtype), tna::as_ptr<const void>(x), tna::as_ptr<void>(y), N, C,
                                     H, W);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "spike_max_pool2d_2x2_backward",
      [](int dtype, uintptr_t grad_y, const IntList& grad_y_strides, uintptr_t bits, uintptr_t grad_x, int64_t N,
         int64_t C, int64_t H, int64_t W, bool channels_last, int threads) {
        TNA_CHECK(grad_y_strides.size() == 4, "grad_y must be 4-D");
        tna::ThreadsScope scope(threads);
        tna::spike_max_pool2d_2x2_backward(tna::to_dtype(dtype), tna::as_ptr<const void>(grad_y), grad_y_strides[0],
                                           grad_y_strides[1], grad_y_strides[2], grad_y_strides[3],
                                           tna::as_ptr<const uint64_t>(bits), tna::as_ptr<void>(grad_x), N, C, H, W,
                                           channels_last);
      },
      py::call_guard<py::gil_scoped_release>());
}
