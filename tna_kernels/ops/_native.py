"""What every op family needs to define its tna:: ops from Python and run them on the native core.

* ``LIB``: the one ``torch.library.Library("tna", "FRAGMENT")`` every family defines its ops in
  (``define``) and registers CPU kernels on (``LIB.impl(name, fn, "CPU")``).
* ``C``: the native core module (``tna_kernels._C``); its functions take tensors as
  ``data_ptr()`` integers (``ptr``), dtypes as codes (``dtype_code``) and the thread count
  (``threads()``, torch's intra-op count, so the C++ never oversubscribes torch's pool).
* ``empty_output``: the allocation of large CPU outputs (huge pages; see its docstring).
"""

from __future__ import annotations

import math
import os
import threading

import torch
from torch import Tensor

from .. import _C as C

LIB = torch.library.Library("tna", "FRAGMENT")

_DTYPE_CODES = {getattr(torch, name): code for name, code in C.DTYPES.items()}


def dtype_code(t: Tensor | torch.dtype) -> int:
    """The native core's code for a tensor's (or a dtype's) dtype."""
    dtype = t if isinstance(t, torch.dtype) else t.dtype
    try:
        return _DTYPE_CODES[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} is not supported by the tna_kernels CPU kernels") from None


def ptr(t: Tensor | None) -> int:
    """Address of a tensor's first element for the native core; 0 for None (an absent optional)."""
    return 0 if t is None else t.data_ptr()


threads = torch.get_num_threads

# Error messages name dtypes and shapes as the C++ kernels always did (c10's names, "[2, 3]").
C10_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
             torch.bfloat16: "BFloat16", torch.int8: "Char", torch.uint8: "Byte", torch.int16: "Short",
             torch.int32: "Int", torch.int64: "Long", torch.bool: "Bool",
             torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble"}


def dtype_str(dtype: torch.dtype) -> str:
    return C10_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def shape_str(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


# Outputs of 32 MiB or more: glibc maps such blocks fresh from the kernel and unmaps them on free,
# so every call pays first-touch page faults (~1.2 us per 4 KiB page on the VMs this is developed
# on: ~20 ms for a 64 MiB output against ~1.4 ms of stores). Two answers, both on by default:
# * reuse: the last REUSE_BLOCKS such blocks are kept (TNA_REUSE_BLOCKS, default 1; 0 keeps none),
#   and a block nothing else references any more (its storage's use count is ours alone) serves the
#   next output of its size. Training asks for the same sizes every step, so the hot big outputs
#   stop paying faults. The price: kept blocks stay allocated while idle. One block measured as
#   fast as eight on the training benchmark while leaving the memory per image unchanged (1.29
#   MiB, benchmarks/train_memory.py); two or more kept idle blocks raised it to 2.28 MiB.
# * huge pages: a new block is 2 MiB-aligned and advised MADV_HUGEPAGE before its first touch, so it
#   faults once per 2 MiB; with the kernel's defrag=madvise that first touch may also stall on
#   compaction (measured 6 ms to 54 ms for 32 MiB here), one more reason to reuse.
# The buffer comes from torch's own allocator (2 MiB larger, to align), so the result is an
# ordinary, resizable CPU tensor that torch's memory accounting sees. TNA_HUGEPAGES=0 turns both off.
HUGE_PAGE = 2 << 20
HUGE_MIN_BYTES = 32 << 20
HUGE_PAGES = os.environ.get("TNA_HUGEPAGES", "1") != "0" and C.HUGE_PAGES_SUPPORTED
REUSE_BLOCKS = int(os.environ.get("TNA_REUSE_BLOCKS", "1"))
_blocks: list[tuple[torch.UntypedStorage, int]] = []  # (storage, aligned offset), newest last
_blocks_lock = threading.Lock()


def _contiguous_strides(shape, memory_format) -> list[int]:
    if memory_format == torch.channels_last:
        n, c, h, w = shape
        return [h * w * c, 1, w * c, c]
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return strides[::-1]


def empty_output(shape, dtype: torch.dtype, memory_format=torch.contiguous_format) -> Tensor:
    """``torch.empty(shape, dtype=dtype, memory_format=memory_format)`` on the CPU; from 32 MiB up,
    a reused idle block or a new one on transparent huge pages (see above)."""
    itemsize = dtype.itemsize
    nbytes = math.prod(shape) * itemsize
    if nbytes < HUGE_MIN_BYTES or not HUGE_PAGES:
        return torch.empty(shape, dtype=dtype, memory_format=memory_format)
    span = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    storage, offset = _block(span)
    out = torch.empty(0, dtype=dtype)
    return out.set_(storage, offset // itemsize, tuple(shape), _contiguous_strides(shape, memory_format))


def _block(span: int) -> tuple[torch.UntypedStorage, int]:
    """A 2 MiB-aligned range of ``span`` bytes: a kept block nothing else uses, or a new one."""
    need = span + HUGE_PAGE
    with _blocks_lock:  # the check and the hand-out must not interleave between threads
        for i, (storage, offset) in enumerate(_blocks):
            if storage.nbytes() == need and torch._C._storage_Use_Count(storage._cdata) == 1:
                _blocks.append(_blocks.pop(i))
                return storage, offset
        storage = torch.empty(need, dtype=torch.uint8).untyped_storage()
        offset = -storage.data_ptr() % HUGE_PAGE
        C.advise_huge_pages(storage.data_ptr() + offset, span)
        if REUSE_BLOCKS <= 0:
            return storage, offset
        idle = [i for i, (s, _) in enumerate(_blocks) if torch._C._storage_Use_Count(s._cdata) == 1]
        while len(_blocks) >= REUSE_BLOCKS:  # drop the oldest idle block (or the oldest, in use elsewhere)
            _blocks.pop(idle.pop(0) if idle else 0)
            idle = [i for i, (s, _) in enumerate(_blocks) if torch._C._storage_Use_Count(s._cdata) == 1]
        _blocks.append((storage, offset))
        return storage, offset

