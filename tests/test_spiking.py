"""Spiking layers (TernaryLIFConv2d / TernaryLIFLinear, containers) and the model builders."""

import pytest
import torch
from torch import nn

import tna_kernels._utils
from tna_kernels import functional as F
from tna_kernels import nn as tnn
from tna_kernels.models import SpikingResNet, SpikingVGG, build_model, make_twin


def composition_conv(layer, x):
    """What TernaryLIFConv2d must compute, written with plain torch + the functional ops."""
    T, B = x.shape[:2]
    w = F.ternary_ste(layer.weight, method=layer.method, per_channel=layer.per_channel) if layer.ternary \
        else layer.weight
    y = nn.functional.conv2d(x.flatten(0, 1), w, layer.bias, layer.stride, layer.padding, layer.dilation)
    y = layer.bn(y).unflatten(0, (T, B))
    return F.lif(y, tau=2.0, surrogate="sigmoid", alpha=4.0)


@pytest.mark.parametrize("ternary", [True, False])
def test_conv_layer_equals_functional_composition(ternary):
    layer = tnn.TernaryLIFConv2d(5, 7, 3, padding=1, stride=2, ternary=ternary, surrogate="sigmoid", alpha=4.0)
    twin = tnn.TernaryLIFConv2d(5, 7, 3, padding=1, stride=2, ternary=ternary, surrogate="sigmoid", alpha=4.0)
    twin.load_state_dict(layer.state_dict())
    x = (torch.rand(3, 4, 5, 9, 11) < 0.3).float()
    out = layer(x)
    want = composition_conv(twin, x)
    assert out.shape == (3, 4, 7, 5, 6)
    assert torch.equal(out, want)
    g = torch.randn_like(out)
    out.backward(g)
    want.backward(g)
    torch.testing.assert_close(layer.weight.grad, twin.weight.grad)
    assert layer.weight.grad.abs().sum() > 0
    torch.testing.assert_close(layer.bn.weight.grad, twin.bn.weight.grad)


def test_state_dict_keys_match_torch_modules():
    conv = tnn.TernaryLIFConv2d(3, 4, 3, bn=False)
    assert set(conv.state_dict()) == set(nn.Conv2d(3, 4, 3).state_dict())
    conv.load_state_dict(nn.Conv2d(3, 4, 3).state_dict())  # strict: loads a torch conv's weights
    with_bn = tnn.TernaryLIFConv2d(3, 4, 3)
    assert {k for k in with_bn.state_dict() if not k.startswith("bn.")} == {"weight", "bias"}
    lin = tnn.TernaryLIFLinear(6, 2, bn=False)
    lin.load_state_dict(nn.Linear(6, 2).state_dict())
    assert isinstance(conv, nn.Conv2d) and isinstance(lin, nn.Linear)


def test_full_precision_switch_is_plain_conv_bn_lif():
    layer = tnn.TernaryLIFConv2d(2, 3, 3, padding=1, ternary=False)
    x = torch.randn(2, 4, 2, 6, 6)
    y = nn.functional.conv2d(x.flatten(0, 1), layer.weight, layer.bias, padding=1)
    want = F.lif(layer.bn(y).unflatten(0, (2, 4)))
    assert torch.equal(layer(x), want)


def test_static_input_equals_repeated_sequence_and_grads_match():
    a = tnn.TernaryLIFConv2d(3, 4, 3, padding=1, T=5)
    b = tnn.TernaryLIFConv2d(3, 4, 3, padding=1)
    b.load_state_dict(a.state_dict())
    img = torch.randn(2, 3, 8, 8)
    out_static = a(img)
    out_seq = b(img.unsqueeze(0).expand(5, *img.shape))
    assert torch.equal(out_static, out_seq)
    out_static.sum().backward()
    out_seq.sum().backward()
    torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-5, atol=1e-6)
    # BN running stats: statistics of T identical copies equal those of the batch alone.
    torch.testing.assert_close(a.bn.running_mean, b.bn.running_mean)


def test_linear_layer_and_containers():
    lin = tnn.TernaryLIFLinear(12, 5, tau=3.0)
    x = (torch.rand(4, 6, 12) < 0.2).float()
    out = lin(x)
    assert out.shape == (4, 6, 5) and set(out.unique().tolist()) <= {0.0, 1.0}
    pool = tnn.SeqToANN(nn.MaxPool2d(2))
    assert pool(torch.ones(3, 2, 4, 8, 8)).shape == (3, 2, 4, 4, 4)
    assert tnn.MeanOverTime()(torch.arange(6.0).view(3, 2)).tolist() == [2.0, 3.0]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: tnn.TernaryLIFConv2d(3, 4, 3)(torch.randn(2, 3, 5, 5)), "pass T"),
        (lambda: tnn.TernaryLIFConv2d(3, 4, 3)(torch.randn(2, 2, 4, 5, 5)), "input channels"),
        (lambda: tnn.TernaryLIFConv2d(3, 4, 3)(torch.randn(5, 5)), "expects"),
        (lambda: tnn.TernaryLIFLinear(3, 4)(torch.randn(2, 2, 5)), "input features"),
        (lambda: tnn.TernaryLIFConv2d(3, 4, 3, T=0), "T must be"),
        (lambda: tnn.TernaryLIFConv2d(3, 4, 3, taux=2.0), "unknown neuron option"),
        (lambda: SpikingVGG("tiny")(torch.randn(2, 1, 32, 32)), "input channels"),
        (lambda: SpikingVGG("tiny")(torch.randn(2, 32, 32)), "static image"),
    ],
)
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_sgd_step_moves_latent_weights_as_the_ste_says():
    torch.manual_seed(1)
    model = SpikingVGG("tiny", T=2)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    layer = model.features[2]  # second conv: ternary (the first stays full precision by default)
    assert layer.ternary and not model.features[0].ternary
    before = layer.weight.detach().clone()
    nn.functional.cross_entropy(model(x), y).backward()
    grad = layer.weight.grad.clone()
    assert grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    torch.testing.assert_close(layer.weight.detach(), before - 0.1 * grad)


@pytest.mark.parametrize("builder,kwargs,shape", [
    (SpikingVGG, dict(arch="tiny"), (2, 3, 32, 32)),
    (SpikingVGG, dict(arch="digits", in_channels=1, input_size=8), (2, 1, 8, 8)),
    (SpikingVGG, dict(arch="tiny", in_channels=2, input_size=48), (3, 2, 2, 48, 48)),
    (SpikingResNet, dict(arch="resnet_tiny"), (2, 3, 32, 32)),
])
def test_models_forward_backward_and_rebuild(builder, kwargs, shape):
    model = builder(**kwargs)
    x = torch.randn(shape) if len(shape) == 4 else (torch.rand(shape) < 0.2).float()
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_make_twin_same_architecture_other_init_and_rng_untouched():
    model = SpikingVGG("tiny", width_mult=0.5)
    state = torch.random.get_rng_state()
    twin = make_twin(model, seed=123)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [p.shape for p in twin.parameters()] == [p.shape for p in model.parameters()]
    assert not torch.equal(twin.features[0].weight, model.features[0].weight)
    assert torch.equal(make_twin(model, seed=123).features[0].weight, twin.features[0].weight)
    fp = make_twin(model, seed=1, precision="fp")
    assert not any(getattr(m, "ternary", False) for m in fp.modules())
    wide = make_twin(model, seed=1, width_mult=1.0)
    assert wide.features[0].out_channels == 2 * model.features[0].out_channels
    with pytest.raises(ValueError, match="precision"):
        make_twin(model, seed=1, precision="int4")


def test_firing_rates_per_layer():
    model = SpikingVGG("tiny")
    rates = tnn.firing_rates(model, torch.randn(2, 3, 32, 32))
    assert list(rates) == ["features.0", "features.2", "features.4"]
    assert all(0.0 <= r <= 1.0 for r in rates.values())


def test_torch_compile_small_model():
    model = SpikingVGG("digits", in_channels=1, input_size=8, T=2).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager)


def test_torch_compile_training_step_matches_eager():
    """Train mode under torch.compile (fullgraph: no graph break in the STE, the spike-input conv's
    autograd.Function or the LIF ops): two SGD steps give the eager latent-weight gradients, updates
    and batch-norm statistics."""
    torch.manual_seed(0)
    eager = SpikingVGG("digits", in_channels=1, input_size=8, T=2, first_layer_fp=False).train()
    twin = SpikingVGG("digits", in_channels=1, input_size=8, T=2, first_layer_fp=False).train()
    twin.load_state_dict(eager.state_dict())
    runs = [(eager, torch.optim.SGD(eager.parameters(), lr=0.5)),
            (torch.compile(twin, fullgraph=True), torch.optim.SGD(twin.parameters(), lr=0.5))]
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    for _ in range(2):
        before = {n: p.detach().clone() for n, p in twin.named_parameters()}
        for model, opt in runs:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        for (name, p), q in zip(eager.named_parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, msg=name)
            assert not torch.equal(q, before[name]), f"{name} did not move"
        torch.testing.assert_close(twin.state_dict(), eager.state_dict())


@pytest.mark.parametrize("ternary", [True, False])
def test_spike_input_is_saved_bit_packed_and_gradients_match(ternary):
    a = tnn.TernaryLIFConv2d(70, 8, 3, padding=1, stride=2, bias=True, ternary=ternary, spike_input=True)
    b = tnn.TernaryLIFConv2d(70, 8, 3, padding=1, stride=2, bias=True, ternary=ternary, spike_input=False)
    b.load_state_dict(a.state_dict())
    x = (torch.rand(2, 3, 70, 9, 9) < 0.25).float().requires_grad_()
    xb = x.detach().clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out_a = a(x)
    out_b = b(xb)
    assert torch.equal(out_a, out_b)
    g = torch.randn_like(out_a)
    out_a.backward(g)
    out_b.backward(g)
    for pa, pb in ((a.weight, b.weight), (a.bias, b.bias), (x, xb)):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-5)
    # no float copy of the [T·B, 70, 9, 9] input is saved, only its bits (int64 [6, 9, 9, 2])
    assert not any(t.shape == (6, 70, 9, 9) for t in saved)
    assert any(t.dtype == torch.int64 and t.shape == (6, 9, 9, 2) for t in saved)


@pytest.mark.parametrize("ternary", [True, False])
def test_spike_input_layer_trains_under_cpu_bf16_autocast(ternary):
    """The forward's conv runs in bf16 under autocast; its backward must too (it used to mix a bf16
    gradient with float32 weights and fail), giving float32 gradients close to the float32 run's."""
    torch.manual_seed(0)
    a = tnn.TernaryLIFConv2d(16, 8, 3, padding=1, bias=True, ternary=ternary, spike_input=True)
    b = tnn.TernaryLIFConv2d(16, 8, 3, padding=1, bias=True, ternary=ternary, spike_input=True)
    b.load_state_dict(a.state_dict())
    x = (torch.rand(2, 3, 16, 6, 6) < 0.3).float()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(2, 3, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = a._affine(xa.flatten(0, 1))
    assert out.dtype == torch.bfloat16
    out.float().backward(g.flatten(0, 1))
    b._affine(xb.flatten(0, 1)).backward(g.flatten(0, 1))
    for pa, pb in ((a.weight, b.weight), (a.bias, b.bias), (xa, xb)):
        assert pa.grad.dtype == torch.float32
        assert (pa.grad - pb.grad).norm() <= 1e-2 * pb.grad.norm()  # bf16 rounding, not a wrong sum
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the whole layer: conv, BN, LIF
        a(xa).float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in a.parameters())


@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 9), (2, 2, 4, 8, 8)])  # sample size not / a multiple of 64
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", [(2, None, 0, False), (3, 2, 1, True), (2, 1, 0, False)])
def test_spike_max_pool_saves_bits_and_routes_gradients_like_max_pool(shape, kernel, stride, padding, ceil_mode,
                                                                     monkeypatch):
    monkeypatch.setattr(tna_kernels._utils, "CHUNK_ELEMS", 700)  # backward in slices of 2-3 samples
    x = (torch.rand(shape) < 0.3).float()  # windows with no spike, one and several
    a = tnn.SeqToANN(tnn.SpikeMaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode))
    b = tnn.SeqToANN(nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = a(xa)
    want = b(xb)
    assert torch.equal(out, want)
    g = torch.randn_like(out)
    out.backward(g)
    want.backward(g)
    assert torch.equal(xa.grad, xb.grad)
    per_sample = x[0, 0].numel()  # one bit per value, rows of 64 per sample
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(torch.int64, (shape[0] * shape[1], -(-per_sample // 64)))]
    with pytest.raises(RuntimeError, match="only 0 and 1"):
        a(torch.full((1, 1, 1, 2, 2), 0.5, requires_grad=True))
