// Python bindings of the twin loss kernels (csrc/cpu/twin_loss.h). Tensors arrive as data_ptr()
// integers (0: an absent gradient), dtypes as codes; tna_kernels/ops/twin_loss.py checks shapes
// and dtypes and allocates the outputs.
#include "../bindings.h"
#include "../cpu/twin_loss.h"

namespace py = pybind11;

TNA_BINDINGS(twin_loss) {
  m.def(
      "twin_loss_fwd",
      [](int dtype, uintptr_t a, uintptr_t b, uintptr_t target, int64_t B, int64_t C, double wa,
         double wb, double lam, int64_t mse_reduction, double label_smoothing, int64_t ignore_index,
         uintptr_t loss, uintptr_t parts, uintptr_t grad_a, uintptr_t grad_b, int threads) {
        tna::ThreadsScope scope(threads);
        tna::twin_loss_fwd(tna::to_dtype(dtype), tna::as_ptr<const void>(a), tna::as_ptr<const void>(b),
                           tna::as_ptr<const int64_t>(target), B, C, wa, wb, lam, mse_reduction,
                           label_smoothing, ignore_index, tna::as_ptr<void>(loss), tna::as_ptr<void>(parts),
                           tna::as_ptr<void>(grad_a), tna::as_ptr<void>(grad_b));
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "twin_loss_bwd",
      [](int dtype, uintptr_t grad_loss, uintptr_t grad_a, uintptr_t grad_b, int64_t na, int64_t nb,
         uintptr_t out_a, uintptr_t out_b, int threads) {
        tna::ThreadsScope scope(threads);
        tna::twin_loss_bwd(tna::to_dtype(dtype), tna::as_ptr<const void>(grad_loss),
                           tna::as_ptr<const void>(grad_a), tna::as_ptr<const void>(grad_b), na, nb,
                           tna::as_ptr<void>(out_a), tna::as_ptr<void>(out_b));
      },
      py::call_guard<py::gil_scoped_release>());
}
