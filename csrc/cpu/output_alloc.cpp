#include "output_alloc.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__linux__) && defined(MADV_HUGEPAGE)
#define TNA_HUGE_PAGE_OUTPUTS 1
#endif

namespace tna {
#if defined(TNA_HUGE_PAGE_OUTPUTS)
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
// glibc serves smaller blocks from its heap and reuses them; from 32 MiB up it always maps fresh
// pages and unmaps them on free. Those are the blocks this allocator takes over.
constexpr size_t kHugeMinBytes = size_t(32) << 20;

bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("TNA_HUGEPAGES");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return enabled;
}

void free_huge(void* p) { std::free(p); }

// 2 MiB-aligned buffers advised with MADV_HUGEPAGE before their first touch. A c10::Allocator, so
// the storage stays resizable like any CPU tensor's.
struct HugePageAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = std::max<size_t>(1, (n + kHugePage - 1) / kHugePage) * kHugePage;
    void* p = nullptr;
    TORCH_CHECK(posix_memalign(&p, kHugePage, bytes) == 0 && p != nullptr,
                "tna_kernels: out of memory allocating ", n, " bytes");
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: where THP is off the buffer still works
    return {p, p, &free_huge, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_huge; }
  void copy_data(void* dest, const void* src, size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

HugePageAllocator huge_page_allocator;

}  // namespace
#endif

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat memory_format) {
#if defined(TNA_HUGE_PAGE_OUTPUTS)
  const size_t bytes = size_t(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (bytes >= kHugeMinBytes && options.device().is_cpu() && huge_pages_enabled()) {
    return at::detail::empty_generic(sizes, &huge_page_allocator,
                                     c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     c10::typeMetaToScalarType(options.dtype()), memory_format);
  }
#endif
  return at::empty(sizes, options.memory_format(memory_format));
}

}  // namespace tna
