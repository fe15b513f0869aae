"""tna::batch_norm_forward / tna::batch_norm_apply (tna_kernels/ops/batch_norm.py) against
torch.native_batch_norm in training mode, bit for bit: the output, the batch mean and invstd and the
updated running statistics. torch's own op is the oracle here (these kernels exist to give its bits
faster), in both of its roundings."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tna_kernels._utils import is_channels_last
from tna_kernels.nn import bn_lif
from tna_kernels.ops import batch_norm

OPS = torch.ops.tna

# [N, C, ...] with S > 1: channel counts off the kernel's blocks of 8, S = 2 up to 1024, 3-D and 5-D
SHAPES = [(2, 1, 3, 3), (4, 5, 7, 3), (3, 8, 2, 1), (6, 13, 4, 4), (2, 17, 9, 1, 2), (5, 24, 11), (32, 64, 32, 32),
          (1, 3, 2, 1)]


def inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    offsets = torch.randn((1, c) + (1,) * (len(shape) - 2), generator=g) * 4  # means far from 0
    x = torch.randn(shape, generator=g) * (torch.rand((1, c) + (1,) * (len(shape) - 2), generator=g) * 5) + offsets
    return (x, torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g), torch.randn(c, generator=g),
            torch.rand(c, generator=g) + 0.5)


def check_equals_torch(shape, affine=True, running=True, momentum=0.1, eps=1e-5, seed=0):
    x, w, b, rm, rv = inputs(shape, seed)
    if not affine:
        w = b = None
    rm_t, rv_t = (rm.clone(), rv.clone()) if running else (None, None)
    rm_o, rv_o = (rm.clone(), rv.clone()) if running else (None, None)
    want = torch.native_batch_norm(x, w, b, rm_t, rv_t, True, momentum, eps)
    x_before = x.clone()
    got = OPS.batch_norm_forward(x, w, b, rm_o, rv_o, momentum, eps)
    assert torch.equal(x, x_before)  # the input is not written
    for name, g_, w_ in zip(("y", "mean", "invstd"), got, want, strict=True):
        assert torch.equal(g_, w_), name
    if running:
        assert torch.equal(rm_o, rm_t) and torch.equal(rv_o, rv_t)
    assert torch.equal(OPS.batch_norm_apply(x, got[1], got[2], w, b), want[0])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
def test_forward_and_apply_equal_torch(shape, affine):
    check_equals_torch(shape, affine=affine)


@pytest.mark.parametrize("momentum", [0.1, 0.3, 1 / 3, 1 / 7, 1.0, 0.0])
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_running_statistics_equal_torch(momentum, eps):
    check_equals_torch((7, 20, 5, 5), momentum=momentum, eps=eps, seed=3)


def test_without_running_statistics():
    check_equals_torch((4, 9, 6, 6), running=False)


def test_many_channels_and_seeds():
    """Wide layers: ~1 in 10^5 values sits where another order of additions would round apart."""
    for seed in range(3):
        check_equals_torch((3, 300, 7, 5), seed=seed)


def test_constant_channel_and_tiny_variance():
    x = torch.ones(4, 3, 5, 5)
    x[:, 1] = 1e-3 * torch.randn(4, 5, 5)
    x[0, 2, 0, 0] = 1e6
    want = torch.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    got = OPS.batch_norm_forward(x, None, None, None, None, 0.1, 1e-5)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_same_bits_for_any_thread_count():
    x, w, b, _, _ = inputs((16, 40, 9, 9))
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(OPS.batch_norm_forward(x, w, b, None, None, 0.1, 1e-5))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b_) for o in outs[1:] for a, b_ in zip(o, outs[0], strict=True))


def test_non_contiguous_input_is_read_as_torch_reads_it():
    x = inputs((6, 10, 8, 8))[0].transpose(2, 3)
    want = torch.native_batch_norm(x.contiguous(), None, None, None, None, True, 0.1, 1e-5)
    got = OPS.batch_norm_forward(x, None, None, None, None, 0.1, 1e-5)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_this_torch_is_reproduced():
    """The probe found torch's rounding (AVX2 / AVX-512 kernels: fused; the portable one: unfused)."""
    assert batch_norm.reproduces_torch() and batch_norm.torch_rounding() in batch_norm.ROUNDINGS


def test_portable_torch_kernel_is_reproduced_too():
    """ATEN_CPU_CAPABILITY=default makes torch run its portable kernel, which rounds the product
    before the addition: the probe finds it and the ops follow."""
    code = textwrap.dedent("""
        import torch
        from tna_kernels.ops import batch_norm
        assert batch_norm.torch_rounding() == "unfused", batch_norm.torch_rounding()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(8, 16, 10, 10, generator=g) * 3 + 1
        w, b = torch.rand(16, generator=g) + 0.5, torch.randn(16, generator=g)
        want = torch.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)
        got = torch.ops.tna.batch_norm_forward(x, w, b, None, None, 0.1, 1e-5)
        assert all(torch.equal(a, e) for a, e in zip(got, want))
        assert torch.equal(torch.ops.tna.batch_norm_apply(x, got[1], got[2], w, b), want[0])
        got = torch.ops.tna.batch_norm_forward(x.contiguous(memory_format=torch.channels_last), w, b, None, None,
                                               0.1, 1e-5)
        assert all(torch.equal(a, e) for a, e in zip(got, want))
        print("ok")
    """)
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_fused_layer_uses_these_ops_where_they_reproduce_torch(monkeypatch):
    """bn_lif routes float32 CPU inputs with S > 1 here, NCHW or channels-last (read in place);
    [N, C] inputs (torch's channels-last kernel: another order of sums) and other dtypes stay on
    torch's op."""
    calls = []
    real = bn_lif._native_batch_norm
    monkeypatch.setattr(bn_lif, "_native_batch_norm", lambda *a: calls.append(real(*a)) or calls[-1])
    from tna_kernels import nn as tnn
    conv = tnn.TernaryLIFConv2d(3, 4, 3, T=2)
    conv(torch.randn(2, 3, 6, 6)).sum().backward()
    lin = tnn.TernaryLIFLinear(5, 4)
    lin((torch.rand(2, 3, 5) < 0.5).float()).sum().backward()
    cl = tnn.TernaryLIFConv2d(3, 4, 1, T=2)
    cl(torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)).sum().backward()
    wide = tnn.TernaryLIFConv2d(3, 4, 3, T=2, dtype=torch.float64)
    wide(torch.randn(2, 3, 6, 6, dtype=torch.float64)).sum().backward()
    assert calls == [True, False, True, False]


def test_opcheck():
    x, w, b, rm, rv = inputs((4, 10, 5, 3))
    torch.library.opcheck(OPS.batch_norm_forward.default, (x, w, b, rm.clone(), rv.clone(), 0.1, 1e-5))
    torch.library.opcheck(OPS.batch_norm_forward.default, (x, None, None, None, None, 0.1, 1e-5))
    y, mean, invstd = OPS.batch_norm_forward(x, w, b, None, None, 0.1, 1e-5)
    torch.library.opcheck(OPS.batch_norm_apply.default, (x, mean, invstd, w, b))


def test_bad_arguments_raise_clear_errors():
    x, w, b, rm, rv = inputs((4, 6, 3, 3))
    with pytest.raises(RuntimeError, match="x must have dtype Float, got Double"):
        OPS.batch_norm_forward(x.double(), None, None, None, None, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="x must be \\[N, C, ...\\] with at least 2 dims"):
        OPS.batch_norm_forward(torch.randn(5), None, None, None, None, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="weight must have shape \\[6\\], got \\[5\\]"):
        OPS.batch_norm_forward(x, w[:5], b, None, None, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="bias must have dtype Float"):
        OPS.batch_norm_forward(x, w, b.double(), None, None, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="running_var must be contiguous"):
        OPS.batch_norm_forward(x, w, b, rm, torch.rand(12)[::2], 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="more than one value per channel"):
        OPS.batch_norm_forward(torch.randn(1, 6, 1, 1), None, None, None, None, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="invstd must have shape \\[6\\]"):
        OPS.batch_norm_apply(x, torch.zeros(6), torch.ones(7), None, None)
    with pytest.raises(RuntimeError, match="x must be a CPU tensor, got meta"):
        batch_norm._batch_norm_apply_cpu(x.to("meta"), torch.zeros(6), torch.ones(6), None, None)
    rv_before = rv.clone()
    with pytest.raises(RuntimeError):
        OPS.batch_norm_forward(x, w, b, rm, rv[:3], 0.1, 1e-5)
    assert torch.equal(rv, rv_before)  # nothing written before the checks pass


@pytest.mark.parametrize("shape", [(4, 5, 7, 3), (6, 40, 4, 4), (32, 64, 8, 8), (3, 17, 1, 5)], ids=str)
def test_channels_last_input_gives_torchs_nchw_bits(shape):
    """A channels-last x (the spike conv's output) is read in place: the same sums per channel in
    the same order, so the bits of torch's batch norm on the NCHW copy; y keeps x's layout."""
    x, w, b, rm, rv = inputs(shape, seed=5)
    xcl = x.contiguous(memory_format=torch.channels_last)
    rm_t, rv_t, rm_o, rv_o = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    want = torch.native_batch_norm(x, w, b, rm_t, rv_t, True, 0.1, 1e-5)
    got = OPS.batch_norm_forward(xcl, w, b, rm_o, rv_o, 0.1, 1e-5)
    assert got[0].is_contiguous(memory_format=torch.channels_last) == is_channels_last(xcl)
    assert all(torch.equal(g, e) for g, e in zip(got, want, strict=True))
    assert torch.equal(rm_o, rm_t) and torch.equal(rv_o, rv_t)
    again = OPS.batch_norm_apply(xcl, got[1], got[2], w, b)
    assert torch.equal(again, want[0]) and again.stride() == got[0].stride()
    torch.library.opcheck(OPS.batch_norm_forward.default, (xcl, w, b, rm.clone(), rv.clone(), 0.1, 1e-5))


@pytest.mark.parametrize("shape", [(4, 5, 7, 3), (32, 40, 8, 8), (3, 17, 1, 5)], ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
def test_channels_last_backward_equals_torchs(shape, affine):
    """tna::batch_norm_backward_channels_last: torch's batch-norm backward (float tolerance), grad_x
    channels-last, from a channels-last or NCHW grad_y; masked outputs empty."""
    x, w, _, _, _ = inputs(shape, seed=7)
    w = w if affine else None
    xcl = x.contiguous(memory_format=torch.channels_last)
    _, mean, invstd = OPS.batch_norm_forward(xcl, w, None, None, None, 0.1, 1e-5)
    g = torch.randn(shape)
    want = torch.ops.aten.native_batch_norm_backward(g, x, w, None, None, mean, invstd, True, 1e-5,
                                                     [True, affine, True])
    for gy in (g, g.contiguous(memory_format=torch.channels_last)):
        got = OPS.batch_norm_backward_channels_last(gy, xcl, mean, invstd, w, [True, True, True])
        assert got[0].is_contiguous(memory_format=torch.channels_last) or shape[1] == 1
        torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
        if affine:
            torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)
        else:
            assert got[1].numel() == 0
        torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-4)
    masked = OPS.batch_norm_backward_channels_last(g, xcl, mean, invstd, w, [False, True, False])
    assert masked[0].numel() == 0 and masked[2].numel() == 0
    torch.library.opcheck(OPS.batch_norm_backward_channels_last.default, (g, xcl, mean, invstd, w, [True, True, True]))


def test_channels_last_backward_refuses_nchw_input():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="x must be a channels-last \\[N, C, H, W\\] tensor"):
        OPS.batch_norm_backward_channels_last(x, x, torch.zeros(3), torch.ones(3), None, [True, True, True])


def test_channels_last_backward_same_bits_for_any_thread_count():
    x = inputs((16, 24, 9, 9))[0].contiguous(memory_format=torch.channels_last)
    _, mean, invstd = OPS.batch_norm_forward(x, None, None, None, None, 0.1, 1e-5)
    g = torch.randn(x.shape).contiguous(memory_format=torch.channels_last)
    before, outs = torch.get_num_threads(), []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(OPS.batch_norm_backward_channels_last(g, x, mean, invstd, None, [True, False, True]))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for o in outs[1:] for a, b in zip(o, outs[0], strict=True))
