import ctypes
import ctypes.util
from pathlib import Path

import pytest
import torch

import tna_kernels  # noqa: F401


def _keep_freed_memory() -> None:
    """Large tensors come from mmap and go back to the OS on free, so every fresh output pays
    page faults plus zeroing (~10 ms per 64 MB here), which would swamp the kernels being compared.
    Raise glibc's mmap and trim thresholds so freed blocks are reused, as jemalloc/tcmalloc do;
    it applies to every provider alike."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name)
    if hasattr(libc, "mallopt"):
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, (1 << 31) - 1)


_keep_freed_memory()


BENCH_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Benchmarks run only with --benchmark-only, so a plain `pytest` from the root is the test
    suite. This hook sees the whole session's items: it marks only those collected from here."""
    if config.getoption("benchmark_only", False):
        return
    skip = pytest.mark.skip(reason="benchmark: run with --benchmark-only (make bench)")
    for item in items:
        if BENCH_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads():
    torch.manual_seed(0)
