import pytest
import torch

import tna_kernels  # noqa: F401


def pytest_collection_modifyitems(config, items):
    """Benchmarks run only with --benchmark-only, so a plain `pytest` stays a quick test run."""
    if config.getoption("benchmark_only", False):
        return
    skip = pytest.mark.skip(reason="benchmark: run with --benchmark-only (make bench)")
    for item in items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads():
    torch.manual_seed(0)
