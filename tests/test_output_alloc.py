"""Large CPU outputs (csrc/cpu/output_alloc.cpp): huge-page buffers and the cache of freed blocks."""

import os
import subprocess
import sys

import pytest
import torch

import tna_kernels
from tna_kernels import functional as F

BIG = (2, 1 << 22)  # float32: 32 MiB, the smallest output the allocator takes over


@pytest.fixture(autouse=True)
def empty_cache():
    tna_kernels.release_output_cache()
    yield
    tna_kernels.release_output_cache()


def test_freed_outputs_are_cached_reused_and_released():
    x = torch.randn(BIG)
    s = F.lif(x)
    ptr, want = s.data_ptr(), s.clone()
    assert tna_kernels.output_cache_bytes() == 0
    del s
    assert tna_kernels.output_cache_bytes() == 32 << 20
    s = F.lif(x)  # same size: the cached block, no fresh pages
    assert s.data_ptr() == ptr and tna_kernels.output_cache_bytes() == 0
    assert torch.equal(s, want)
    del s
    assert tna_kernels.release_output_cache() == 32 << 20
    assert tna_kernels.output_cache_bytes() == 0


def test_small_outputs_are_plain_torch_allocations():
    s = F.lif(torch.randn(2, 1000))
    del s
    assert tna_kernels.output_cache_bytes() == 0


def test_large_output_is_an_ordinary_resizable_tensor():
    s = F.lif(torch.randn(BIG))
    s.resize_(3, 1 << 22)  # storage grows through the same allocator
    s[2] = 1.0
    assert s.shape == (3, 1 << 22) and bool((s[2] == 1).all())
    t = s.clone()
    del s
    assert t.sum().item() >= (1 << 22)


def _run(env_extra: dict, code: str) -> str:
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


PROBE = ("import torch, tna_kernels; from tna_kernels import functional as F; torch.manual_seed(0); "
         "x = torch.randn(2, 1 << 22); s = F.lif(x); c = float(s.sum()); del s; "
         "print(c, tna_kernels.output_cache_bytes())")


@pytest.mark.parametrize("env,cached", [({"TNA_OUTPUT_CACHE_MB": "0"}, 0),
                                        ({"TNA_OUTPUT_CACHE_MB": "16"}, 0),
                                        ({"TNA_HUGEPAGES": "0"}, 0),
                                        ({}, 32 << 20)])
def test_environment_switches(env, cached):
    """TNA_OUTPUT_CACHE_MB caps the cache (0: none; a block over the cap is freed), TNA_HUGEPAGES=0
    hands every output to torch's allocator; the results never change."""
    total, nbytes = _run(env, PROBE).split()
    assert int(nbytes) == cached
    assert float(total) == float(_run({"TNA_HUGEPAGES": "0"}, PROBE).split()[0])
