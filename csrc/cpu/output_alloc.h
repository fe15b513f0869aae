// Fresh output tensors for the CPU kernels; large ones come from huge pages and are recycled.
//
// Why: glibc maps every block of 32 MiB or more fresh from the kernel and unmaps it on free, so a
// large output is first-touch page faults every call. On the VMs this library is developed on a
// 4 KiB fault costs ~1.2 us: writing a fresh [4, 32, 128, 32, 32] float32 tensor (64 MiB, 16,384
// faults) took ~20 ms against ~1.4 ms for the stores themselves; with 2 MiB-aligned, MADV_HUGEPAGE
// buffers ~4.3 ms, most of it the kernel zeroing pages. Freed blocks are kept for reuse by an
// output of the same rounded size (as torch's CUDA caching allocator does), so a training loop's
// recurring outputs skip both: at most TNA_OUTPUT_CACHE_MB (default 1024; 0 = no cache) is held,
// `torch.ops.tna.release_output_cache()` frees it. Outputs under 32 MiB (glibc's heap reuses
// those), other platforms, and TNA_HUGEPAGES=0 get at::empty.
#pragma once
#include <ATen/ATen.h>

namespace tna {

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat memory_format = at::MemoryFormat::Contiguous);

}  // namespace tna
