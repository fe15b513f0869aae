"""Large CPU outputs (csrc/cpu/output_alloc.cpp): 2 MiB-aligned buffers on transparent huge pages."""

import os
import subprocess
import sys

import pytest
import torch

from tna_kernels import functional as F

BIG = (2, 1 << 22)  # float32: 32 MiB, the smallest output the allocator takes over
HUGE_PAGE = 2 << 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge-page buffers are Linux only")
def test_large_outputs_are_huge_page_aligned_and_small_ones_are_not_taken_over():
    x = torch.randn(BIG)
    s, v_last = F.lif(x, return_v=True)
    assert s.data_ptr() % HUGE_PAGE == 0
    assert torch.equal(s, F.lif(x.clone()))
    assert v_last.untyped_storage().nbytes() == 4 << 22  # 16 MiB: torch's own allocation


def test_large_output_is_an_ordinary_resizable_tensor():
    s = F.lif(torch.randn(BIG))
    s.resize_(3, 1 << 22)  # storage grows through the same allocator
    s[2] = 1.0
    assert s.shape == (3, 1 << 22) and bool((s[2] == 1).all())
    t = s.clone()
    del s
    assert t[2].sum().item() == float(1 << 22)


def test_switch_off_gives_the_same_results():
    """TNA_HUGEPAGES=0 hands every output to torch's allocator; the results never change."""
    code = ("import torch, tna_kernels; from tna_kernels import functional as F; torch.manual_seed(0); "
            "x = torch.randn(2, 1 << 22, requires_grad=True); s = F.lif(x); s.sum().backward(); "
            "print(float(s.sum()), float(x.grad.double().sum()), s.data_ptr() % (2 << 20) == 0)")

    def run(value):
        env = dict(os.environ, TNA_HUGEPAGES=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    on, off = run("1"), run("0")
    assert on[:2] == off[:2]
    if sys.platform.startswith("linux"):
        assert on[2] == "True"
