// Fresh output tensors for the CPU kernels; large ones on transparent huge pages.
//
// Why: glibc maps every block of 32 MiB or more fresh from the kernel and unmaps it on free, so a
// large output is first-touch page faults on every call. On the VMs this library is developed on
// a 4 KiB fault costs ~1.2 us: writing a fresh [4, 32, 128, 32, 32] float32 tensor (64 MiB, 16,384
// faults) took ~20 ms against ~1.4 ms for the stores themselves. A 2 MiB-aligned buffer advised
// with MADV_HUGEPAGE (before its first touch) faults once per 2 MiB: ~4.3 ms, most of it the
// kernel zeroing the pages. Smaller outputs (glibc's heap reuses those), other platforms, and
// TNA_HUGEPAGES=0 in the environment get at::empty. Freed blocks are not kept: a cache of them
// (tried) held memory a training step's peak then counted (train_memory: 0.32x instead of 0.16x
// SpikingJelly's), for no gain where freed memory is reused anyway. These buffers bypass c10's CPU
// allocator, so torch.profiler's memory accounting does not see them.
#pragma once
#include <ATen/ATen.h>

namespace tna {

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat memory_format = at::MemoryFormat::Contiguous);

}  // namespace tna
