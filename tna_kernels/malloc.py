"""Process-wide glibc malloc settings for CPU training (opt-in; the trainer turns them on).

A training step allocates and frees the same large buffers every step (activations, their
gradients: 4-34 MB each for the spiking VGGs). glibc serves blocks above its mmap threshold
(dynamic, at most 32 MB) with fresh ``mmap`` calls and returns the top of the heap to the system
past its trim threshold, so each step page-faults its working set in again: on this project's
benchmark network (VGG 64-128-256-256, T = 4, batch 32, two threads) ~29,500 minor faults and
~77 ms of system time per step. :func:`tune_malloc` fixes both thresholds high, so freed memory
stays in the process and is reused (the process keeps its peak footprint until exit, as
PyTorch's CUDA caching allocator does on a GPU).

It changes the whole process, which is why importing ``tna_kernels`` never calls it: library
users opt in; ``python -m tna_kernels.cli train`` does unless ``train.tune_malloc=false``.
Benchmarks run without it unless TNA_BENCH_TUNED_MALLOC=1, which their tables then name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameter numbers (<malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 1 << 30  # 1 GiB: every training buffer of the supported models is below it

_applied: dict | None = None


def _libc():
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None  # not glibc (musl has no mallopt thresholds)
    return libc


def tune_malloc(mmap_threshold: int = DEFAULT_THRESHOLD, trim_threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Sets glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (bytes) for this process; returns
    True when both were applied, False where the C library is not glibc (nothing is changed).
    Fixing the thresholds also turns off glibc's dynamic threshold adjustment."""
    global _applied
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int (bytes), got {value!r}")
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = (libc.mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, 2**31 - 1)) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1)
    if ok:
        _applied = {"mmap_threshold": mmap_threshold, "trim_threshold": trim_threshold}
    return ok


def malloc_tuning() -> dict | None:
    """The thresholds :func:`tune_malloc` applied in this process, or None (glibc's defaults)."""
    return None if _applied is None else dict(_applied)
