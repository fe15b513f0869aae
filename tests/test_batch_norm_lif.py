"""tna::batch_norm_lif_forward / tna::batch_norm_lif_backward (tna_kernels/ops/batch_norm.py,
csrc/cpu/batch_norm_lif.cpp): batch norm with batch statistics and the LIF fused over a
channels-last x, against the unfused ops it replaces (batch_norm_forward + lif_fwd;
batch_norm_apply + lif_bwd_recompute + batch_norm_backward_channels_last), which their own tests
hold to torch and reference.py. Spikes and statistics bit for bit; gradients bit for bit when a
step's positions B*H*W are a multiple of the backward's 256-position chunks, else within float
rounding."""

import pytest
import torch

from tna_kernels.nn import bn_lif
from tna_kernels.ops.lif import _lif_hyper

OPS = torch.ops.tna

# (T, B, C, H, W): B*H*W a multiple of 256 or not, C on and off the row kernels' blocks of 8, a
# block of positions larger and smaller than a step (C*T large), one channel, one position
SHAPES = [(4, 4, 16, 8, 8), (4, 3, 5, 7, 3), (2, 16, 64, 4, 4), (1, 2, 13, 9, 9), (3, 2, 300, 2, 2), (4, 8, 1, 6, 6),
          (2, 5, 24, 1, 1), (4, 64, 32, 16, 16)]
NEURONS = {
    "hard_reset": dict(tau=2.0),
    "soft_reset_sigmoid": dict(tau=2.0, v_reset=None, surrogate="sigmoid", alpha=4.0),
    "no_decay_input_detach": dict(tau=1.5, decay_input=False, detach_reset=True, v_threshold=0.5),
    "if_neuron": dict(tau=None),
}


def inputs(T, B, C, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T * B, C, H, W, generator=g) * (torch.rand(1, C, 1, 1, generator=g) * 3 + 0.2)
         + torch.randn(1, C, 1, 1, generator=g))
    return (x.contiguous(memory_format=torch.channels_last), torch.rand(C, generator=g) + 0.5,
            torch.randn(C, generator=g) * 0.5 + 0.5, torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5)


def memory_order(t, T):
    """A channels-last [T*B, C, H, W] tensor as [T, neurons] in memory order."""
    return t.permute(0, 2, 3, 1).reshape(T, -1)


def unfused_forward(x, w, b, rm, rv, T, hyper):
    y, mean, invstd = OPS.batch_norm_forward(x, w, b, rm, rv, 0.1, 1e-5)
    spikes = OPS.lif_fwd(memory_order(y, T), None, *hyper, False)[0]
    return spikes, mean, invstd


def unfused_backward(gs, x, mean, invstd, w, b, T, hyper, mask):
    y = OPS.batch_norm_apply(x, mean, invstd, w, b)
    g = OPS.lif_bwd_recompute(memory_order(gs, T), None, memory_order(y, T), None, *hyper)[0]
    n, c, h, wd = x.shape
    gy = g.reshape(n, h, wd, c).permute(0, 3, 1, 2)
    return OPS.batch_norm_backward_channels_last(gy, x, mean, invstd, w, mask)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("neuron", list(NEURONS), ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
def test_equals_unfused_ops(shape, neuron, affine):
    T, B, C, H, W = shape
    x, w, b, rm, rv = inputs(*shape)
    if not affine:
        w = b = None
    hyper = _lif_hyper(**NEURONS[neuron])
    x_before = x.clone()
    rm_f, rv_f, rm_u, rv_u = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    spikes, mean, invstd = OPS.batch_norm_lif_forward(x, w, b, rm_f, rv_f, 0.1, 1e-5, T, *hyper)
    want_spikes, want_mean, want_invstd = unfused_forward(x, w, b, rm_u, rv_u, T, hyper)
    assert spikes.shape == x.shape and spikes.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(memory_order(spikes, T), want_spikes)
    assert torch.equal(mean, want_mean) and torch.equal(invstd, want_invstd)
    assert torch.equal(rm_f, rm_u) and torch.equal(rv_f, rv_u)
    assert 0 < want_spikes.mean() < 1  # both kinds of output occur

    gs = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    mask = [True, affine, affine]
    got = OPS.batch_norm_lif_backward(gs, x, mean, invstd, w, b, T, *hyper, mask)
    want = unfused_backward(gs, x, mean, invstd, w, b, T, hyper, mask)
    assert torch.equal(x, x_before)  # the input is never written
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    if (B * H * W) % 256 == 0:  # the unfused backward's chunks: the same sums in the same order
        assert all(torch.equal(g, e) for g, e in zip(got, want, strict=True))
    else:
        for g, e in zip(got, want, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    if not affine:
        assert got[1].numel() == 0 and got[2].numel() == 0


def test_grad_spikes_in_other_layouts_and_masks():
    T, B, C, H, W = 2, 3, 6, 5, 5
    x, w, b, _, _ = inputs(T, B, C, H, W, seed=3)
    hyper = _lif_hyper(tau=2.0)
    _, mean, invstd = OPS.batch_norm_lif_forward(x, w, b, None, None, 0.1, 1e-5, T, *hyper)
    gs = torch.randn(x.shape)
    full = OPS.batch_norm_lif_backward(gs, x, mean, invstd, w, b, T, *hyper, [True, True, True])
    for g in (gs, gs.contiguous(memory_format=torch.channels_last)):
        again = OPS.batch_norm_lif_backward(g, x, mean, invstd, w, b, T, *hyper, [True, True, True])
        assert all(torch.equal(a, e) for a, e in zip(again, full, strict=True))
    only_w = OPS.batch_norm_lif_backward(gs, x, mean, invstd, w, b, T, *hyper, [False, True, False])
    assert only_w[0].numel() == 0 and only_w[2].numel() == 0 and torch.equal(only_w[1], full[1])


def test_same_bits_for_any_thread_count():
    T, B, C, H, W = 4, 6, 24, 9, 9
    x, w, b, _, _ = inputs(T, B, C, H, W, seed=2)
    hyper = _lif_hyper(tau=2.0)
    gs = torch.randn(x.shape)
    before, outs = torch.get_num_threads(), []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            fwd = OPS.batch_norm_lif_forward(x, w, b, None, None, 0.1, 1e-5, T, *hyper)
            outs.append(fwd + OPS.batch_norm_lif_backward(gs, x, fwd[1], fwd[2], w, b, T, *hyper, [True] * 3))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, e) for o in outs[1:] for a, e in zip(o, outs[0], strict=True))


def test_opcheck():
    T, B, C, H, W = 2, 3, 5, 4, 4
    x, w, b, rm, rv = inputs(T, B, C, H, W, seed=4)
    hyper = _lif_hyper(tau=2.0, v_reset=None)
    torch.library.opcheck(OPS.batch_norm_lif_forward.default, (x, w, b, rm.clone(), rv.clone(), 0.1, 1e-5, T, *hyper))
    torch.library.opcheck(OPS.batch_norm_lif_forward.default, (x, None, None, None, None, 0.1, 1e-5, T, *hyper))
    _, mean, invstd = OPS.batch_norm_lif_forward(x, w, b, None, None, 0.1, 1e-5, T, *hyper)
    gs = torch.randn(x.shape)
    torch.library.opcheck(OPS.batch_norm_lif_backward.default,
                          (gs, x, mean, invstd, w, b, T, *hyper, [True, True, True]))


def test_bad_arguments_raise_clear_errors():
    T = 2
    x, w, b, rm, rv = inputs(T, 2, 4, 3, 3)
    hyper = list(_lif_hyper(tau=2.0))
    fwd = OPS.batch_norm_lif_forward
    with pytest.raises(RuntimeError, match="x must be a channels-last \\[N, C, H, W\\] tensor"):
        fwd(x.contiguous(), w, b, None, None, 0.1, 1e-5, T, *hyper)
    with pytest.raises(RuntimeError, match="x must have T\\*B samples for T = 3"):
        fwd(x, w, b, None, None, 0.1, 1e-5, 3, *hyper)
    with pytest.raises(RuntimeError, match="x must have dtype Float, got Double"):
        fwd(x.double(), w, b, None, None, 0.1, 1e-5, T, *hyper)
    with pytest.raises(RuntimeError, match="weight must have shape \\[4\\], got \\[3\\]"):
        fwd(x, w[:3], b, None, None, 0.1, 1e-5, T, *hyper)
    with pytest.raises(RuntimeError, match="surrogate must be one of"):
        fwd(x, w, b, None, None, 0.1, 1e-5, T, *hyper[:6], "nope", hyper[7])
    with pytest.raises(RuntimeError, match="more than one value per channel"):
        fwd(torch.randn(1, 4, 1, 1), None, None, None, None, 0.1, 1e-5, 1, *hyper)
    rv_before = rv.clone()
    with pytest.raises(RuntimeError, match="running_var must have shape \\[4\\]"):
        fwd(x, w, b, rm, rv[:3], 0.1, 1e-5, T, *hyper)
    assert torch.equal(rv, rv_before)  # nothing written before the checks pass
    _, mean, invstd = fwd(x, w, b, None, None, 0.1, 1e-5, T, *hyper)
    with pytest.raises(RuntimeError, match="grad_spikes must have x's shape \\[4, 4, 3, 3\\], got \\[4, 4, 3, 2\\]"):
        OPS.batch_norm_lif_backward(torch.randn(4, 4, 3, 2), x, mean, invstd, w, b, T, *hyper, [True] * 3)
    with pytest.raises(RuntimeError, match="invstd must have shape \\[4\\]"):
        OPS.batch_norm_lif_backward(torch.randn(x.shape), x, mean, invstd[:2], w, b, T, *hyper, [True] * 3)


def test_training_layer_takes_the_fused_ops_for_a_channels_last_input(monkeypatch):
    """bn_lif on a channels-last BN input (the spike conv's output) runs the fused ops, and its
    spikes and gradients are the unfused layer's (static and NCHW inputs keep the unfused path)."""
    import tna_kernels.nn as tnn
    T, B, C = 4, 4, 8
    x = inputs(T, B, C, 8, 8, seed=6)[0]
    calls = []
    real = bn_lif._fused_batch_norm_lif

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    outs = []
    for fused in (True, False):
        torch.manual_seed(0)
        bn, neuron = torch.nn.BatchNorm2d(C), tnn.LIF(tau=2.0)
        monkeypatch.setattr(bn_lif, "_fused_batch_norm_lif", spy if fused else (lambda *a: False))
        xi = x.clone().requires_grad_()
        out = bn_lif.bn_lif(xi, bn, neuron, T)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(9)))
        outs.append((out, xi.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var))
    assert calls == [True]
    (out, *grads), (want, *want_grads) = outs
    assert out.stride() == want.stride() and torch.equal(out, want)
    assert all(torch.equal(g, e) for g, e in zip(grads, want_grads, strict=True))  # B*H*W = 256


# ---- the CUDA kernels (Triton: tna_kernels/triton/batch_norm.py), by the interpreter on the CPU ----
# Against torch's batch norm statistics (float tolerance: the sums run in another order) and, given
# the kernels' own mean and invstd, against the unfused arithmetic: spikes of the LIF on
# x * a + b bit for bit (the interpreter rounds the product and the sum as torch does), gradients
# of torch's batch-norm backward after lif_bwd_recompute within float rounding.

# (T, B, C, H, W): tiles cut in both directions, one position per map, many channels, T = 1
TRITON_SHAPES = [(4, 3, 5, 7, 3), (2, 2, 9, 1, 1), (1, 3, 6, 5, 5), (3, 2, 17, 4, 4)]


def _unfused_given_stats(x, w, b, mean, invstd, gs, T, hyper, eps=1e-5):
    """Spikes of lif(x * a + b) and the gradients of the unfused layer, from the given statistics."""
    a = invstd * (w if w is not None else 1.0)
    shift = (b if b is not None else 0.0) - mean * a
    y = x.float() * a[:, None, None] + shift[:, None, None]
    spikes = OPS.lif_fwd(y.reshape(T, -1), None, *hyper, False)[0].reshape(x.shape)
    gy = OPS.lif_bwd_recompute(gs.float().reshape(T, -1), None, y.reshape(T, -1), None, *hyper)[0].reshape(x.shape)
    grads = torch.ops.aten.native_batch_norm_backward(gy, x.float(), w, None, None, mean, invstd, True, eps,
                                                      [True, w is not None, True])
    return spikes, grads


@pytest.mark.triton
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("neuron", ["hard_reset", "soft_reset_sigmoid", "no_decay_input_detach"])
def test_triton_kernels_match_torch_and_the_unfused_arithmetic(shape, layout, neuron):
    from tna_kernels._utils import triton_test_device
    from tna_kernels.triton import batch_norm as tb

    dev = triton_test_device()
    T = shape[0]
    x, w, b, rm, rv = inputs(*shape, seed=11)
    x = x.contiguous() if layout == "nchw" else x
    hyper = _lif_hyper(**NEURONS[neuron])
    affine = neuron != "no_decay_input_detach"
    if not affine:
        w = b = None
    rm_t, rv_t = rm.clone().to(dev), rv.clone().to(dev)
    spikes, mean, invstd = tb.batch_norm_lif_forward(
        x.to(dev), None if w is None else w.to(dev), None if b is None else b.to(dev), rm_t, rv_t, 0.1, 1e-5, T,
        *hyper[:5])
    _, want_mean, want_invstd = torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    torch.testing.assert_close(mean.cpu(), want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(invstd.cpu(), want_invstd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rm_t.cpu(), rm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rv_t.cpu(), rv, rtol=1e-5, atol=1e-6)  # unbiased variance, as torch
    assert spikes.stride() == x.stride() and spikes.dtype == x.dtype

    gs = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    want_spikes, want_grads = _unfused_given_stats(x, w, b, mean.cpu(), invstd.cpu(), gs, T, hyper)
    assert torch.equal(spikes.cpu(), want_spikes) and 0 < want_spikes.mean() < 1
    got = tb.batch_norm_lif_backward(gs.to(dev), x.to(dev), mean, invstd, None if w is None else w.to(dev),
                                     None if b is None else b.to(dev), T, *hyper[:6],
                                     ["atan", "sigmoid", "fast_sigmoid", "triangle", "rectangle"].index(hyper[6]),
                                     hyper[7], [True, True, True])
    assert got[0].stride() == x.stride()
    torch.testing.assert_close(got[0].cpu(), want_grads[0], rtol=1e-4, atol=1e-5)
    if affine:
        torch.testing.assert_close(got[1].cpu(), want_grads[1], rtol=1e-4, atol=1e-5)
    else:
        assert got[1].numel() == 0
    torch.testing.assert_close(got[2].cpu(), want_grads[2], rtol=1e-4, atol=1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_kernels_half_precision(dtype):
    """A half-precision x (the GPU step under autocast): float32 arithmetic on the converted values,
    spikes in x's dtype; the batch norm's output gradient is held in x's dtype (as the unfused
    layer holds it), its sums taken before that rounding."""
    from tna_kernels._utils import triton_test_device
    from tna_kernels.triton import batch_norm as tb

    dev = triton_test_device()
    T, B, C, H, W = 2, 3, 6, 4, 4
    x, w, b, _, _ = inputs(T, B, C, H, W, seed=12)
    x = x.to(dtype)
    hyper = _lif_hyper(tau=2.0)
    spikes, mean, invstd = tb.batch_norm_lif_forward(x.to(dev), w.to(dev), b.to(dev), None, None, 0.1, 1e-5, T,
                                                     *hyper[:5])
    _, want_mean, want_invstd = torch.native_batch_norm(x.float(), w, b, None, None, True, 0.1, 1e-5)
    torch.testing.assert_close(mean.cpu(), want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(invstd.cpu(), want_invstd, rtol=1e-5, atol=1e-6)
    gs = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(dtype)
    want_spikes, want_grads = _unfused_given_stats(x, w, b, mean.cpu(), invstd.cpu(), gs, T, hyper)
    assert spikes.dtype == dtype and torch.equal(spikes.cpu().float(), want_spikes)
    got = tb.batch_norm_lif_backward(gs.to(dev), x.to(dev), mean, invstd, w.to(dev), b.to(dev), T, *hyper[:6], 0,
                                     hyper[7], [True, True, True])
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    torch.testing.assert_close(got[0].cpu().float(), want_grads[0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got[1].cpu(), want_grads[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[2].cpu(), want_grads[2], rtol=1e-4, atol=1e-4)


@pytest.mark.triton
def test_triton_kernels_repeat_bit_for_bit_and_take_any_grad_layout():
    """The sums are per tile, combined in a fixed order (no atomics): the same inputs give the same
    bits every run. A grad_spikes in another layout is read through its own strides (no copy) and
    gives the same gradients up to the order of the per-tile sums: on a GPU, Triton picks the
    register layout of a tile from the memory layout of its loads, and a reduction's order follows
    it (the first H200 run found channels-last grad_spikes differing in the last bits)."""
    from tna_kernels._utils import triton_test_device
    from tna_kernels.triton import batch_norm as tb

    dev = triton_test_device()
    T = 2
    x, w, b, _, _ = (t.to(dev) for t in inputs(T, 2, 7, 5, 5, seed=13))
    hyper = _lif_hyper(tau=2.0)
    gs = torch.randn(x.shape).to(dev)

    def run(g):
        fwd = tb.batch_norm_lif_forward(x, w, b, None, None, 0.1, 1e-5, T, *hyper[:5])
        return fwd + tb.batch_norm_lif_backward(g, x, fwd[1], fwd[2], w, b, T, *hyper[:6], 0, hyper[7],
                                                [True, True, True])

    first, again = run(gs), run(gs.clone())
    for name, a, e in zip(("spikes", "mean", "invstd", "grad_x", "grad_weight", "grad_bias"), again, first,
                          strict=True):
        assert torch.equal(a, e), f"{name} differs between two runs on the same inputs"
    other = run(gs.contiguous(memory_format=torch.channels_last))
    for a, e in zip(other[:3], first[:3], strict=True):  # the forward does not read grad_spikes
        assert torch.equal(a, e)
    for a, e in zip(other[3:], first[3:], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    only_b = tb.batch_norm_lif_backward(gs, x, first[1], first[2], w, b, T, *hyper[:6], 0, hyper[7],
                                        [False, False, True])
    assert only_b[0].numel() == 0 and only_b[1].numel() == 0 and torch.equal(only_b[2], first[5])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cuda_fused_layer_matches_the_unfused_layer(dtype, layout, monkeypatch):
    """On a GPU: bn_lif through the fused CUDA ops against nn.BatchNorm2d + the LIF (cuDNN's batch
    norm, the Triton LIF): statistics and gradients within float rounding; spikes equal except
    where the membrane lies within rounding of the threshold (the two sum in different orders)."""
    import tna_kernels.nn as tnn
    T, B, C, H, W = 4, 16, 32, 16, 16
    monkeypatch.setattr(bn_lif, "CUDA_FUSED", True)
    x = inputs(T, B, C, H, W, seed=14)[0].cuda().to(dtype)
    x = x.contiguous() if layout == "nchw" else x.contiguous(memory_format=torch.channels_last)
    gs = torch.randn(T, B, C, H, W, generator=torch.Generator().manual_seed(15)).cuda().to(dtype)
    outs = []
    for fused in (True, False):
        torch.manual_seed(0)
        bn, neuron = torch.nn.BatchNorm2d(C).cuda(), tnn.LIF(tau=2.0)
        xi = x.clone().requires_grad_()
        if fused:
            assert bn_lif._fused_batch_norm_lif(x, bn.weight, bn.bias, bn.running_mean, bn.running_var)
            out = bn_lif.bn_lif(xi, bn, neuron, T)
        else:
            out = neuron(bn(xi).unflatten(0, (T, B)))
        out.backward(gs)
        outs.append((out.float(), xi.grad.float(), bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var))
    (out, *grads), (want, *want_grads) = outs
    # bfloat16: the unfused layer rounds the BN output to bfloat16 before the LIF, the fused one
    # does not, so near-threshold spikes flip more often; a wrong formula would be off by O(1)
    flips, limit = (1e-3, 1e-3) if dtype == torch.float32 else (3e-2, 0.25)
    assert (out != want).float().mean() < flips
    # a flipped spike changes its neuron's gradient: compare whole tensors by relative norm
    for i, (g, e) in enumerate(zip(grads, want_grads, strict=True)):
        assert (g - e).norm() <= limit * e.norm() + 1e-6, (i, (g - e).norm().item(), e.norm().item())


@pytest.mark.triton
@pytest.mark.parametrize("programs,finish_p", [(1, 64), (5, 4), (7, 2)])
def test_triton_statistics_over_chunks_of_samples(monkeypatch, programs, finish_p):
    """Few statistics programs (several samples per chunk, the last chunk shorter) and finishing
    kernels that take the partials a few at a time: the same statistics as torch's batch norm, and
    the backward's sums likewise."""
    from tna_kernels._utils import triton_test_device
    from tna_kernels.triton import batch_norm as tb

    monkeypatch.setattr(tb, "STATS_PROGRAMS", programs)
    monkeypatch.setattr(tb, "FINISH_P", finish_p)
    dev = triton_test_device()
    T, B, C, H, W = 3, 4, 6, 5, 4  # 12 samples, 20 positions: two spatial blocks in the interpreter
    x, w, b, rm, rv = inputs(T, B, C, H, W, seed=16)
    rm_t, rv_t = rm.clone().to(dev), rv.clone().to(dev)
    hyper = _lif_hyper(tau=2.0)
    spikes, mean, invstd = tb.batch_norm_lif_forward(x.to(dev), w.to(dev), b.to(dev), rm_t, rv_t, 0.1, 1e-5, T,
                                                     *hyper[:5])
    _, want_mean, want_invstd = torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    torch.testing.assert_close(mean.cpu(), want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(invstd.cpu(), want_invstd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rv_t.cpu(), rv, rtol=1e-5, atol=1e-6)
    gs = torch.randn(x.shape, generator=torch.Generator().manual_seed(17))
    _, want = _unfused_given_stats(x, w, b, mean.cpu(), invstd.cpu(), gs, T, hyper)
    got = tb.batch_norm_lif_backward(gs.to(dev), x.to(dev), mean, invstd, w.to(dev), b.to(dev), T, *hyper[:6], 0,
                                     hyper[7], [True, True, True])
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-4, atol=1e-5)


def test_which_inputs_the_cuda_kernels_serve_and_the_switch():
    """bn_lif's choice on CUDA (checked on CPU tensors: the device is the caller's test): NCHW or
    channels-last 4-D float32 / bfloat16 / float16 with float32 parameters; off unless
    TNA_BN_LIF_CUDA_FUSED=1 (the default waits for a GPU's measurement)."""
    import os
    import subprocess
    import sys

    x = torch.randn(4, 3, 5, 5)
    w = torch.ones(3)
    serves = bn_lif._cuda_fused_serves
    assert serves(x, w, None) and serves(x.contiguous(memory_format=torch.channels_last), w, w)
    assert serves(x.bfloat16(), w, w) and serves(x.half(), None, None)
    assert not serves(x.double(), w, w) and not serves(x[:, :, 0], w, w) and not serves(x, w.double(), w)
    assert not serves(x.transpose(2, 3), w, w)  # neither layout
    assert not serves(torch.randn(4, 3, 1, 1), w, w)  # one value per channel and sample: torch's op
    code = "import tna_kernels.nn.bn_lif as b; print(b.CUDA_FUSED)"
    for value, want in ((None, "False"), ("1", "True"), ("0", "False")):
        env = {k: v for k, v in os.environ.items() if k != "TNA_BN_LIF_CUDA_FUSED"}
        if value is not None:
            env["TNA_BN_LIF_CUDA_FUSED"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want


@pytest.mark.triton
def test_triton_updates_each_running_statistic_given():
    """Only running_mean, or only running_var: the one given is updated (as by the C++ op), the
    missing one is not stood in for."""
    from tna_kernels._utils import triton_test_device
    from tna_kernels.triton import batch_norm as tb

    dev = triton_test_device()
    T = 2
    x, w, b, rm, rv = inputs(T, 3, 5, 4, 4, seed=18)
    hyper = _lif_hyper(tau=2.0)
    for given in ("mean", "var"):
        rm_c, rv_c = (rm.clone(), None) if given == "mean" else (None, rv.clone())
        OPS.batch_norm_lif_forward(x, w, b, rm_c, rv_c, 0.1, 1e-5, T, *hyper)  # the C++ op
        rm_t = None if rm_c is None else rm.clone().to(dev)
        rv_t = None if rv_c is None else rv.clone().to(dev)
        tb.batch_norm_lif_forward(x.to(dev), w.to(dev), b.to(dev), rm_t, rv_t, 0.1, 1e-5, T, *hyper[:5])
        got, want = (rm_t, rm_c) if given == "mean" else (rv_t, rv_c)
        assert not torch.equal(want, rm if given == "mean" else rv)  # the C++ op did update it
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)
