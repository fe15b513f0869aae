#include "output_alloc.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tna {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
// glibc serves smaller blocks from its heap and reuses them; from 32 MiB up it always maps fresh
// pages and unmaps them on free. Those are the blocks this allocator takes over.
constexpr size_t kHugeMinBytes = size_t(32) << 20;

size_t env_size(const char* name, size_t fallback) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  return size_t(std::stoull(env));
}

bool huge_pages_enabled() {
  static const bool enabled = env_size("TNA_HUGEPAGES", 1) != 0;
  return enabled;
}

struct Block {
  void* ptr;
  size_t bytes;
};

void recycle(void* ctx);

// 2 MiB-aligned, MADV_HUGEPAGE-advised buffers, with a cache of freed blocks
// (exact size reuse, oldest evicted first, at most TNA_OUTPUT_CACHE_MB, default 1024; 0 = off) so
// a training loop's recurring outputs skip the faults and the kernel's page zeroing altogether.
// A c10::Allocator, so the storage stays resizable like any CPU tensor's. Never destroyed: tensors
// may be freed during interpreter shutdown.
class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = std::max<size_t>(1, (n + kHugePage - 1) / kHugePage) * kHugePage;
    void* p = take_cached(bytes);
    if (p == nullptr) {
      TORCH_CHECK(posix_memalign(&p, kHugePage, bytes) == 0 && p != nullptr,
                  "tna_kernels: out of memory allocating ", n, " bytes");
#if defined(MADV_HUGEPAGE)
      madvise(p, bytes, MADV_HUGEPAGE);  // advice only: where THP is off the buffer still works
#endif
    }
    return {p, new Block{p, bytes}, &recycle, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    std::memcpy(dest, src, count);
  }

  void give_back(Block b) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (b.bytes <= limit_) {
        while (cached_ + b.bytes > limit_) evict_oldest_locked();
        free_.push_back(b);
        cached_ += b.bytes;
        return;
      }
    }
    std::free(b.ptr);
  }

  int64_t release() {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t released = cached_;
    while (!free_.empty()) evict_oldest_locked();
    return int64_t(released);
  }

  int64_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return int64_t(cached_);
  }

 private:
  void* take_cached(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
      if (it->bytes == bytes) {
        void* p = it->ptr;
        free_.erase(std::next(it).base());
        cached_ -= bytes;
        return p;
      }
    }
    return nullptr;
  }

  void evict_oldest_locked() {
    std::free(free_.front().ptr);
    cached_ -= free_.front().bytes;
    free_.pop_front();
  }

  std::mutex mu_;
  std::deque<Block> free_;  // oldest first
  size_t cached_ = 0;
  const size_t limit_ = env_size("TNA_OUTPUT_CACHE_MB", 1024) << 20;
};

HugePageAllocator& allocator() {
  static auto* a = new HugePageAllocator();
  return *a;
}

void recycle(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  allocator().give_back(*b);
  delete b;
}

int64_t output_cache_bytes() { return allocator().cached(); }
int64_t release_output_cache() { return allocator().release(); }

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat memory_format) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = size_t(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (bytes >= kHugeMinBytes && options.device().is_cpu() && huge_pages_enabled()) {
    return at::detail::empty_generic(sizes, &allocator(),
                                     c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     c10::typeMetaToScalarType(options.dtype()), memory_format);
  }
#endif
  return at::empty(sizes, options.memory_format(memory_format));
}

// Queries without tensors: one kernel for every backend (as ternary_cpu_isa).
TORCH_LIBRARY_FRAGMENT(tna, m) {
  m.impl("output_cache_bytes", &output_cache_bytes);
  m.impl("release_output_cache", &release_output_cache);
}

}  // namespace tna
