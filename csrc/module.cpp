// tna_kernels._C: the pybind11 module. Each family registers its bindings block
// (csrc/bindings/<family>.cpp, TNA_BINDINGS); this file adds what every family shares.
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "bindings.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#ifndef TNA_SOURCE_HASH
#define TNA_SOURCE_HASH "unknown"
#endif

namespace tna {
namespace {

std::vector<std::pair<const char*, BindFn>>& registry() {
  static std::vector<std::pair<const char*, BindFn>> r;
  return r;
}

// MADV_HUGEPAGE on [p, p + n) before the first touch: a 2 MiB page then faults once instead of
// 512 times (tna_kernels/ops/_native.py: empty_output). Advice only; false where unsupported.
bool advise_huge_pages(uintptr_t p, int64_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  return n > 0 && madvise(reinterpret_cast<void*>(p), static_cast<size_t>(n), MADV_HUGEPAGE) == 0;
#else
  (void)p;
  (void)n;
  return false;
#endif
}

// How many chunks tna::parallel_for runs [0, n) in with this thread count (tests check that the
// kernels honour torch.get_num_threads()).
int parallel_chunks(int64_t n, int64_t grain, int threads) {
  ThreadsScope scope(threads);
  std::atomic<int> chunks{0};
  parallel_for(0, n, grain, [&](int64_t, int64_t) { chunks.fetch_add(1); });
  return chunks.load();
}

}  // namespace

int register_bindings(const char* family, BindFn fn) {
  registry().emplace_back(family, fn);
  return 0;
}

}  // namespace tna

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  m.doc() = "tna_kernels native core: C++ CPU kernels on raw pointers (no torch ABI)";
  // Bumped whenever a binding's signature changes; tna_kernels/__init__.py checks it.
  m.attr("INTERFACE_VERSION") = 1;
  // Hash of csrc/ at build time (setup.py); an editable checkout compares it with its sources.
  m.attr("SOURCE_HASH") = TNA_SOURCE_HASH;
  py::dict dtypes;
  for (int i = 0; i < tna::kNumDTypes; ++i) dtypes[tna::dtype_name(static_cast<tna::DType>(i))] = i;
  m.attr("DTYPES") = dtypes;
#if defined(_OPENMP)
  m.attr("OPENMP") = true;
#else
  m.attr("OPENMP") = false;
#endif
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  m.attr("HUGE_PAGES_SUPPORTED") = true;
#else
  m.attr("HUGE_PAGES_SUPPORTED") = false;
#endif
  m.def("advise_huge_pages", &tna::advise_huge_pages, py::arg("ptr"), py::arg("nbytes"));
  m.def("parallel_chunks", &tna::parallel_chunks, py::arg("n"), py::arg("grain"), py::arg("threads"),
        py::call_guard<py::gil_scoped_release>());
  py::list families;
  for (auto& [family, bind] : tna::registry()) {
    bind(m);
    families.append(family);
  }
  m.attr("FAMILIES") = families;
}
