// How a family exposes its kernels to Python: csrc/bindings/<family>.cpp holds one
//   TNA_BINDINGS(family) { m.def("name", ..., py::call_guard<py::gil_scoped_release>()); }
// block; module.cpp runs every registered block when tna_kernels._C loads. Kernels run without the
// GIL and inside a ThreadsScope set from the call's `threads` argument (torch.get_num_threads()).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core.h"

namespace tna {

namespace py = pybind11;
using BindFn = void (*)(py::module_&);
int register_bindings(const char* family, BindFn fn);

}  // namespace tna

#define TNA_BINDINGS(family)                                                             \
  static void tna_bind_##family(::tna::py::module_& m);                                   \
  [[maybe_unused]] static const int tna_registered_##family =                             \
      ::tna::register_bindings(#family, &tna_bind_##family);                              \
  static void tna_bind_##family(::tna::py::module_& m)
