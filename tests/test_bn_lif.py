"""Fused batch norm + LIF for training (tna_kernels.nn.bn_lif): the unfused nn.BatchNorm + LIF's
spikes, running statistics and gradients, saving only the batch-norm input."""

import pytest
import torch
from torch import nn

import tna_kernels._utils
from tna_kernels import nn as tnn
from tna_kernels.nn.bn_lif import bn_lif


def unfused(layer, x, T):
    """What layer computes in training, with nn.BatchNorm + the LIF module (no fusion)."""
    static = x.dim() == 4
    y = layer._affine(x if static else x.flatten(0, 1))
    y = layer.bn(y)
    y = y.unsqueeze(0).expand(T, *y.shape) if static else y.unflatten(0, (T, x.shape[1]))
    return layer.neuron(y)


NEURONS = [dict(), dict(v_reset=None), dict(decay_input=False, tau=3.0), dict(v_reset=None, detach_reset=True,
                                                                              surrogate="sigmoid", alpha=4.0)]


@pytest.fixture(params=[None, 37], ids=["one_slice", "slices"])
def chunk(request, monkeypatch):
    """Also run the slice-by-slice paths at test sizes (37 elements per slice)."""
    if request.param:
        monkeypatch.setattr(tna_kernels._utils, "CHUNK_ELEMS", request.param)


@pytest.mark.parametrize("neuron", NEURONS, ids=["hard", "soft", "no_decay_input", "soft_detach"])
@pytest.mark.parametrize("static", [False, True], ids=["sequence", "static"])
@pytest.mark.parametrize("ternary", [True, False])
def test_layer_equals_unfused_bn_and_lif(neuron, static, ternary, chunk):
    T = 3
    # no conv bias: its true gradient through batch norm is 0, both paths give float noise
    opts = dict(padding=1, bias=False, T=T, ternary=ternary, spike_input=not static, bn_momentum=0.3)
    a = tnn.TernaryLIFConv2d(4, 6, 3, **opts, v_threshold=0.5, **neuron)
    b = tnn.TernaryLIFConv2d(4, 6, 3, **opts, v_threshold=0.5, **neuron)
    with torch.no_grad():
        a.bn.weight.uniform_(0.5, 1.5)
        a.bn.bias.uniform_(-0.3, 0.3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 5, 5) if static else (torch.rand(T, 2, 4, 5, 5) < 0.4).float()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    for step in range(2):  # the second step normalises with updated running stats in the buffers
        out, want = a(xa), unfused(b, xb, T)
        assert torch.equal(out, want) and 0 < out.mean() < 1
        g = torch.randn_like(out)
        out.backward(g)
        want.backward(g)
        for name, p in a.named_parameters():
            torch.testing.assert_close(p.grad, b.get_parameter(name).grad, msg=name)
        torch.testing.assert_close(xa.grad, xb.grad)
        assert torch.equal(a.bn.running_mean, b.bn.running_mean) and torch.equal(a.bn.running_var, b.bn.running_var)
        assert a.bn.num_batches_tracked == b.bn.num_batches_tracked == step + 1


@pytest.mark.parametrize("bn_kwargs", [dict(affine=False), dict(momentum=None), dict(track_running_stats=False),
                                       dict(channels_last=True)],
                         ids=["no_affine", "cumulative_average", "no_running_stats", "channels_last_input"])
def test_batch_norm_variants(bn_kwargs):
    T, x = 2, torch.randn(6, 5, 3, 3)
    channels_last = bn_kwargs.pop("channels_last", False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = nn.BatchNorm2d(5, **bn_kwargs), nn.BatchNorm2d(5, **bn_kwargs)
    neuron = tnn.LIF(v_threshold=0.3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    for _ in range(2):
        # a channels-last input is normalised with the statistics of torch's NCHW kernel (the native
        # batch norm's; torch's channels-last kernel sums in another order): nn.BatchNorm on the
        # NCHW copy, bit for bit, spikes in the input's layout
        out = bn_lif(xa, a, neuron, T)
        want = neuron(b(xb.contiguous() if channels_last else xb).unflatten(0, (T, 3)))
        if channels_last:
            assert out[0].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, want)
        g = torch.randn_like(out)
        out.backward(g)
        want.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad)
        if a.affine:
            torch.testing.assert_close(a.weight.grad, b.weight.grad)
        torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)


def test_linear_layer_uses_the_fused_path():
    a, b = tnn.TernaryLIFLinear(8, 5), tnn.TernaryLIFLinear(8, 5)
    b.load_state_dict(a.state_dict())
    x = (torch.rand(3, 4, 8) < 0.5).float()
    out, want = a(x), b.neuron(b.bn(b._affine(x.flatten(0, 1))).unflatten(0, (3, 4)))
    assert torch.equal(out, want)
    out.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(a.weight.grad, b.weight.grad)


def test_eval_and_no_grad_keep_the_unfused_path():
    layer = tnn.TernaryLIFConv2d(3, 4, 3, T=2)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        train_out = layer(x)
    assert layer.bn.num_batches_tracked == 1
    layer.eval()
    out = layer(x)  # grad enabled, eval: running statistics, nothing updated
    assert layer.bn.num_batches_tracked == 1 and out.shape == train_out.shape


def test_neuron_forward_hooks_see_the_spikes():
    """The fused path runs through the neuron module (the trainer's spike-rate hooks rely on it)."""
    layer = tnn.TernaryLIFConv2d(3, 4, 3, T=2)
    seen = []
    layer.neuron.register_forward_hook(lambda _m, _i, out: seen.append(out))
    out = layer(torch.randn(2, 3, 6, 6))
    assert len(seen) == 1 and seen[0] is out and out.grad_fn is not None


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="pass T and no v0"):
        tnn.LIF()(torch.randn(4, 3, 2, 2), bn=nn.BatchNorm2d(3))
    bn, neuron = nn.BatchNorm2d(3), tnn.LIF()
    with pytest.raises(ValueError, match="multiple of T"):
        bn_lif(torch.randn(5, 3, 2, 2), bn, neuron, T=2)
    with pytest.raises(ValueError, match="return_v"):
        bn_lif(torch.randn(4, 3, 2, 2), bn, tnn.LIF(return_v=True), T=2)
    with pytest.raises(ValueError, match="batch statistics"):
        bn_lif(torch.randn(4, 3, 2, 2), bn.eval(), neuron, T=2)


@pytest.mark.parametrize("T", [2, 8])
def test_spike_input_layer_saves_only_packed_input_bn_input_and_weights(T):
    """Saved for backward: the bit-packed spike input, the BN input (the one float tensor of the
    conv output's size: no LIF membrane), the ternary weight, γ and β, and the batch mean and invstd
    of the native batch norm; as many tensors for any T (no graph per time step)."""
    layer = tnn.TernaryLIFConv2d(8, 16, 3, padding=1, spike_input=True)
    x = (torch.rand(T, 2, 8, 6, 6) < 0.3).float()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    out.sum().backward()
    want = [(torch.int64, (T * 2, 6, 6, 1)), (torch.float32, (16, 8, 3, 3)), (torch.float32, (T * 2, 16, 6, 6)),
            (torch.float32, (16,)), (torch.float32, (16,)), (torch.float32, (16,)), (torch.float32, (16,))]
    assert sorted((str(t.dtype), tuple(t.shape)) for t in saved) == sorted((str(d), s) for d, s in want)


def test_set_recompute_false_saves_more_and_gives_the_same_step():
    """recompute=False (set_recompute) runs the unfused BN + LIF and plain max-pool: same spikes and
    gradients, more saved tensors."""
    from tna_kernels.models import SpikingVGG
    from tna_kernels.nn import set_recompute

    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    grads, saved = {}, {}
    for flag in (True, False):
        torch.manual_seed(1)
        net = set_recompute(SpikingVGG("small", T=2), flag)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, s=sizes: s.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        grads[flag] = [p.grad.clone() for p in net.parameters()]
        saved[flag] = sum(sizes)
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert saved[True] < saved[False] / 2
