import ctypes
import ctypes.util
import os
from pathlib import Path

import pytest
import torch

import tna_kernels  # noqa: F401


def _keep_freed_memory() -> None:
    """A tuned setting, off by default (headline figures use the default allocator, as a user's
    code runs): with TNA_BENCH_TUNED_MALLOC=1, raise glibc's mmap and trim thresholds so freed large
    blocks are reused instead of paying page faults and zeroing on every fresh output (~10 ms per
    64 MB here), as jemalloc/tcmalloc do; it applies to every provider alike."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name)
    if hasattr(libc, "mallopt"):
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, (1 << 31) - 1)


TUNED_MALLOC = os.environ.get("TNA_BENCH_TUNED_MALLOC") == "1"
if TUNED_MALLOC:
    _keep_freed_memory()


def pytest_benchmark_update_machine_info(config, machine_info):
    """Versions and the kernels' instruction set, so every table says what it was taken on."""
    machine_info["torch"] = torch.__version__
    machine_info["tna_ternary_isa"] = torch.ops.tna.ternary_cpu_isa()
    machine_info["tuned_malloc"] = TUNED_MALLOC


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


@pytest.fixture
def bench_threads():
    """TNA_BENCH_THREADS=n pins torch and our kernels to n threads (same for every provider); the
    kernel benchmarks that honour it use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    n = os.environ.get("TNA_BENCH_THREADS")
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    yield
    torch.set_num_threads(before)
