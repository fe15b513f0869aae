import os
from pathlib import Path

import pytest
import torch

import tna_kernels  # noqa: F401
from tna_kernels.malloc import tune_malloc

# A tuned setting, off by default (headline figures use the default allocator, as a user's code
# runs): TNA_BENCH_TUNED_MALLOC=1 applies tna_kernels.malloc.tune_malloc (the trainer's default)
# before any provider runs, so it applies to every provider alike.
TUNED_MALLOC = os.environ.get("TNA_BENCH_TUNED_MALLOC") == "1" and tune_malloc()


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
