"""The native core itself (tna_kernels._C): threads, the OpenMP runtime, dtype codes, allocation."""

import subprocess
import sys

import pytest
import torch

from tna_kernels.ops import _native


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_loops_use_torchs_thread_count(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        expected = threads if _native.C.OPENMP else 1
        assert _native.C.parallel_chunks(1000, 1, _native.threads()) == expected
        assert _native.C.parallel_chunks(1000, 600, _native.threads()) == min(expected, 2)  # grain bounds it
        assert _native.C.parallel_chunks(10, 100, threads) == 1  # shorter than one grain: the caller runs it
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_openmp_runtime_in_the_process():
    """_C links libgomp.so.1 by soname, so it shares the copy torch loaded: one pool, no
    oversubscription. Checked in a fresh process (other tests' imports, e.g. scikit-learn, bring
    their own OpenMP runtimes)."""
    code = ("import torch, tna_kernels\n"
            "from tna_kernels import functional as F\n"
            "F.lif(torch.randn(4, 1 << 16))\n"
            "print(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    runtimes = eval(out.stdout.strip().splitlines()[-1])  # a list literal of paths
    assert len(runtimes) <= 1, runtimes


def test_dtype_codes_cover_every_kernel_dtype_and_are_distinct():
    codes = [_native.dtype_code(d) for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                              torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
                                              torch.bool)]
    assert len(set(codes)) == len(codes)
    with pytest.raises(TypeError, match="complex64"):
        _native.dtype_code(torch.complex64)


def test_empty_output_shapes_strides_and_formats():
    small = _native.empty_output((3, 5), torch.float32)
    assert small.shape == (3, 5) and small.is_contiguous()
    big = _native.empty_output((2, 1 << 22), torch.float32)
    assert big.shape == (2, 1 << 22) and big.is_contiguous() and big.dtype == torch.float32
    cl = _native.empty_output((8, 64, 128, 128), torch.float32, memory_format=torch.channels_last)
    assert cl.shape == (8, 64, 128, 128) and cl.is_contiguous(memory_format=torch.channels_last)
    if _native.HUGE_PAGES:
        assert big.data_ptr() % _native.HUGE_PAGE == 0 and cl.data_ptr() % _native.HUGE_PAGE == 0


@pytest.mark.skipif(not _native.HUGE_PAGES, reason="big outputs are plain torch.empty here (TNA_HUGEPAGES=0)")
def test_big_outputs_reuse_only_blocks_nothing_else_holds(monkeypatch):
    monkeypatch.setattr(_native, "_blocks", [])
    monkeypatch.setattr(_native, "REUSE_BLOCKS", 8)
    shape = (2, 1 << 22)  # 32 MiB
    a = _native.empty_output(shape, torch.float32)
    ptr = a.data_ptr()
    held = _native.empty_output(shape, torch.float32)  # `a` is alive: a new block
    assert held.data_ptr() != ptr
    view = a[1]
    del a
    b = _native.empty_output(shape, torch.float32)  # a view still holds a's block
    assert b.data_ptr() not in (ptr, held.data_ptr())
    del view
    c = _native.empty_output(shape, torch.float32)  # now a's block is idle: reused
    assert c.data_ptr() == ptr
    c.fill_(1.0)
    held.fill_(2.0)  # distinct memory
    assert float(c[0, 0]) == 1.0
    other = _native.empty_output((3, 1 << 22), torch.float32)  # another size: a new block
    assert other.data_ptr() not in (ptr, held.data_ptr(), b.data_ptr())
    assert len(_native._blocks) <= _native.REUSE_BLOCKS


@pytest.mark.skipif(not _native.HUGE_PAGES, reason="big outputs are plain torch.empty here (TNA_HUGEPAGES=0)")
@pytest.mark.parametrize("kept", [0, 1, 3])
def test_kept_blocks_are_bounded(monkeypatch, kept):
    monkeypatch.setattr(_native, "_blocks", [])
    monkeypatch.setattr(_native, "REUSE_BLOCKS", kept)
    held = [_native.empty_output((2, (1 << 22) + 1024 * i), torch.float32) for i in range(kept + 3)]
    assert len(_native._blocks) == kept
    assert len({t.data_ptr() for t in held}) == len(held)
    del held
    again = _native.empty_output((2, (1 << 22) + 1024 * (kept + 2)), torch.float32)  # the newest size
    assert (again.untyped_storage().data_ptr() == _native._blocks[-1][0].data_ptr()) if kept else not _native._blocks
