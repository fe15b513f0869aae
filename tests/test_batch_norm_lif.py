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
