"""Ternary conv2d kernels (spikes bit-packed along channels, float input) and the ternary modules
(TernaryLinear / TernaryConv2d, .pack())."""

import pytest
import torch
from conftest import triton_device
from torch import nn

from tna_kernels import functional as F
from tna_kernels import nn as tnn
from tna_kernels import reference as R
from tna_kernels.ops.ternary import PackedTernary


def rand_codes(*shape):
    c = torch.randint(-1, 2, shape)
    c[torch.rand(shape) < 0.3] = 0
    return c.to(torch.int8)


def make(N, C, k, bias=True):
    codes = rand_codes(N, C, *k)
    scale = torch.rand(N) + 0.1
    b = torch.randn(N) if bias else None
    return codes, scale, b, F.pack_ternary(codes, scale, b)


# (B, C, H, W, N, kernel, stride, padding, dilation)
GEOMS = [
    (2, 3, 7, 5, 4, (3, 3), 1, 1, 1),
    (1, 64, 9, 9, 8, (3, 3), 2, 1, 1),
    (3, 70, 6, 7, 5, (3, 2), (1, 2), (0, 1), 1),
    (2, 130, 5, 5, 6, (1, 1), 1, 0, 1),
    (1, 16, 11, 10, 3, (3, 3), 2, 2, 2),
    (2, 5, 4, 4, 7, (4, 4), 1, 0, 1),
    # C <= 32 packs several taps per gathered word (64 // C of them): a last word half full (32),
    # a C that does not divide 64 (24), and 33 channels, one tap per word again
    (2, 32, 6, 6, 33, (3, 3), 1, 1, 1),
    (2, 24, 5, 7, 9, (3, 3), 1, 1, 1),
    (1, 33, 5, 5, 4, (3, 3), 1, 1, 1),
]


@pytest.mark.parametrize("geom", GEOMS, ids=str)
def test_spike_conv_bit_exact(isa, geom):
    B, C, H, W, N, k, stride, padding, dilation = geom
    codes, scale, b, p = make(N, C, k)
    s = (torch.rand(B, C, H, W) < 0.2).float()
    y = F.spike_ternary_conv2d(F.pack_spikes(s, dim=1), p, stride, padding, dilation)
    ref = R.spike_ternary_conv2d(s, codes, scale, b, stride, padding, dilation)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert torch.equal(y, ref)


def test_spike_conv_with_cached_kmajor(isa):
    codes, scale, b, p = make(9, 70, (3, 3))
    km = torch.ops.tna.ternary_kmajor(p.words, 70, 1)
    assert km.shape == (9 * 2 * 64, 128)
    s = (torch.rand(2, 70, 6, 5) < 0.1).float()
    bits = F.pack_spikes(s, dim=1)
    y = torch.ops.tna.spike_ternary_conv2d(bits, p.words, p.scale, p.bias, 70, [1, 1], [1, 1], [1, 1], 1, km)
    assert torch.equal(y, R.spike_ternary_conv2d(s, codes, scale, b, 1, 1, 1))


@pytest.mark.parametrize("C", [16, 32, 3])
def test_spike_conv_with_cached_kmajor_taps_sharing_words(isa, C):
    """With C <= 32 the K-major copy has a row per bit of the gathered row (taps share words):
    16 channels x 9 taps in 3 words, 32 x 9 in 5, 3 x 9 in 1."""
    codes, scale, b, p = make(40, C, (3, 3))
    km = torch.ops.tna.ternary_kmajor(p.words, C, 1)
    assert km.shape == ({16: 3, 32: 5, 3: 1}[C] * 64, 128)
    s = (torch.rand(4, C, 6, 5) < 0.15).float()
    y = torch.ops.tna.spike_ternary_conv2d(F.pack_spikes(s, dim=1), p.words, p.scale, p.bias, C, [1, 1], [1, 1],
                                           [1, 1], 1, km)
    assert torch.equal(y, R.spike_ternary_conv2d(s, codes, scale, b, 1, 1, 1))


def test_spike_conv_no_bias_dense_and_no_mutation(isa):
    codes, scale, _, p = make(6, 66, (3, 3), bias=False)
    s = torch.ones(2, 66, 5, 6)
    bits = F.pack_spikes(s, dim=1)
    before = (bits.clone(), p.words.clone())
    y = F.spike_ternary_conv2d(bits, p, 1, 1, 1)
    assert torch.equal(y, R.spike_ternary_conv2d(s, codes, scale, None, 1, 1, 1))
    assert torch.equal(bits, before[0]) and torch.equal(p.words, before[1])


@pytest.mark.parametrize("geom", GEOMS[:4], ids=str)
def test_float_conv_matches_torch(geom):
    B, C, H, W, N, k, stride, padding, dilation = geom
    codes, scale, b, p = make(N, C, k)
    x = torch.randn(B, C, H, W)
    y = F.ternary_conv2d(x, p, stride, padding, dilation)
    ref = nn.functional.conv2d(x.double(), p.dequantize(torch.float64), b.double(), stride, padding, dilation)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(y, R.ternary_conv2d(x, codes, scale, b, stride, padding, dilation),
                               rtol=1e-5, atol=1e-4)


def test_float_conv_gradcheck():
    codes, scale, b, p = make(3, 4, (3, 3))
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    for geom in ((1, 1, 1), (2, 0, 1), ((2, 1), (1, 0), 2)):
        assert torch.autograd.gradcheck(lambda x, geom=geom: F.ternary_conv2d(x, p, *geom), (x,))


def test_float_conv_bias_grad_and_opcheck():
    codes, scale, b, p = make(4, 5, (3, 3))
    bias = b.clone().requires_grad_()
    x = torch.randn(2, 5, 7, 7, requires_grad=True)
    y = torch.ops.tna.ternary_conv2d(x, p.words, p.scale, bias, [2, 2], [1, 1], [1, 1], 1)
    g = torch.randn_like(y)
    gx, gb = torch.autograd.grad(y, (x, bias), g)
    x2, b2 = x.detach().clone().requires_grad_(), b.clone().requires_grad_()
    ref = nn.functional.conv2d(x2, p.dequantize(), b2, 2, 1)
    gx2, gb2 = torch.autograd.grad(ref, (x2, b2), g)
    torch.testing.assert_close(gx, gx2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb, gb2, rtol=1e-5, atol=1e-5)
    bits = F.pack_spikes((torch.rand(2, 5, 7, 7) < 0.3).float(), dim=1)
    ops = torch.ops.tna
    for op, args in [
        (ops.ternary_conv2d, (x, p.words, p.scale, bias, [2, 2], [1, 1], [1, 1], 1)),
        (ops.ternary_conv2d_grad_input, (g, p.words, p.scale, [2, 5, 7, 7], [2, 2], [1, 1], [1, 1], 1)),
        (ops.spike_ternary_conv2d, (bits, p.words, p.scale, p.bias, 5, [1, 2], [1, 0], [1, 1], 1)),
        (ops.ternary_kmajor, (p.words, 5, 1)),
    ]:
        torch.library.opcheck(op, args)


def test_conv_bad_input():
    codes, scale, b, p = make(4, 5, (3, 3))
    bits = F.pack_spikes((torch.rand(2, 5, 7, 7) < 0.3).float(), dim=1)
    with pytest.raises(RuntimeError, match="version: .*got v3"):
        torch.ops.tna.spike_ternary_conv2d(bits, p.words, p.scale, None, 5, [1, 1], [0, 0], [1, 1], 3)
    with pytest.raises(RuntimeError, match=r"the input has C = 70 channels \(needs ceil\(C/64\) = 2\)"):
        torch.ops.tna.spike_ternary_conv2d(bits, p.words, p.scale, None, 70, [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match=r"spike_bits must have shape \[B, H, W, 1\]"):
        torch.ops.tna.spike_ternary_conv2d(bits.permute(0, 3, 1, 2), p.words, p.scale, None, 5, [1, 1],
                                           [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="stride must be two integers >= 1"):
        torch.ops.tna.spike_ternary_conv2d(bits, p.words, p.scale, None, 5, [0, 1], [0, 0], [1, 1], 1)
    with pytest.raises(ValueError, match="padding must be an int or a pair of ints >= 0"):
        F.spike_ternary_conv2d(bits, p, padding=-1)
    with pytest.raises(RuntimeError, match="too small for kernel 3x3"):
        F.spike_ternary_conv2d(F.pack_spikes(torch.zeros(1, 5, 2, 2), dim=1), p)
    with pytest.raises(ValueError, match="x has 6 channels but the weight expects 5"):
        F.ternary_conv2d(torch.randn(1, 6, 8, 8), p)
    with pytest.raises(ValueError, match="weight must be a conv2d weight"):
        F.ternary_conv2d(torch.randn(1, 5, 8, 8), F.pack_ternary(rand_codes(4, 5)))
    with pytest.raises(RuntimeError, match=r"packed_w must have shape \[N, kh, kw, 2, CW\]"):
        torch.ops.tna.ternary_conv2d(torch.randn(1, 5, 8, 8), p.words.reshape(4, 2, 9), p.scale, None, [1, 1],
                                     [0, 0], [1, 1], 1)


# ---- modules ------------------------------------------------------------------------------------

def test_module_state_dict_compatible_with_torch():
    lin = tnn.TernaryLinear(20, 7)
    ref = nn.Linear(20, 7)
    assert lin.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(lin.state_dict())
    lin.load_state_dict(nn.Linear(20, 7).state_dict())
    conv = tnn.TernaryConv2d(3, 8, 3, stride=2, padding=1, bias=False)
    cref = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    assert conv.state_dict().keys() == cref.state_dict().keys()
    conv.load_state_dict(cref.state_dict())
    assert torch.equal(conv.weight, cref.weight)
    assert isinstance(conv, nn.Conv2d) and isinstance(lin, nn.Linear)
    with pytest.raises(ValueError, match="groups must be 1"):
        tnn.TernaryConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="method must be 'twn' or 'absmean'"):
        tnn.TernaryLinear(3, 3, method="sign")


@pytest.mark.parametrize("method", ["twn", "absmean"])
def test_linear_module_trains_latent_weights_with_ste(method):
    torch.manual_seed(1)
    lin = tnn.TernaryLinear(16, 5, method=method, clip=1.0)
    x = torch.randn(8, 16)
    y = lin(x)
    codes, scale = R.ternarize(lin.weight, method, True)
    torch.testing.assert_close(y, x @ (codes.float() * scale[:, None]).T + lin.bias)
    g = torch.randn_like(y)
    y.backward(g)
    expect = (g.T @ x) * (lin.weight.detach().abs() <= 1.0)
    torch.testing.assert_close(lin.weight.grad, expect)
    torch.testing.assert_close(lin.bias.grad, g.sum(0))


def test_linear_pack_equals_eval_module():
    lin = tnn.TernaryLinear(100, 9, method="absmean").eval()
    x = torch.randn(2, 3, 100)
    with torch.no_grad():
        y_eval = lin(x)
    packed = lin.pack()
    assert torch.equal(packed(x), y_eval)
    # and within float32 rounding of the training-mode (STE, F.linear) computation
    torch.testing.assert_close(y_eval, lin.train()(x).detach(), rtol=1e-5, atol=1e-5)
    s = (torch.rand(6, 100) < 0.2).float()
    assert torch.equal(packed.forward_spikes(F.pack_spikes(s)), packed(s))
    w_bytes = packed.words.numel() * 8
    assert w_bytes * 16 <= lin.weight.numel() * 4 + 16 * 8 * 2 * 9  # 2 bits/weight (+ padding words)


def test_conv_pack_equals_eval_module():
    conv = tnn.TernaryConv2d(70, 6, 3, stride=2, padding=1, dilation=1).eval()
    x = torch.randn(2, 70, 9, 8)
    with torch.no_grad():
        y_eval = conv(x)
    packed = conv.pack()
    assert torch.equal(packed(x), y_eval)
    torch.testing.assert_close(y_eval, conv.train()(x).detach(), rtol=1e-4, atol=1e-4)
    s = (torch.rand(2, 70, 9, 8) < 0.2).float()
    # The float conv folds the scale into the weights (torch's conv2d speed), so on 0/1 inputs it
    # agrees with the exact spike kernel within float32 rounding.
    y_spk = packed.forward_spikes(F.pack_spikes(s, dim=1))
    torch.testing.assert_close(y_spk, packed(s), rtol=1e-5, atol=1e-5)


def test_packed_module_state_dict_carries_version():
    packed = tnn.TernaryLinear(10, 4).pack()
    sd = packed.state_dict()
    assert int(sd["format_version"]) == 1 and {"words", "scale", "bias"} <= sd.keys()
    fresh = tnn.PackedTernaryLinear(PackedTernary(torch.zeros_like(sd["words"]), torch.ones(4), 10))
    fresh.bias = torch.zeros(4)
    fresh.load_state_dict(sd)
    x = torch.randn(3, 10)
    assert torch.equal(fresh(x), packed(x))
    bad = {**sd, "format_version": torch.tensor(2)}
    msg = "format_version: this build reads packed ternary format v1 only, got v2"
    with pytest.raises(RuntimeError, match=msg):
        fresh.load_state_dict(bad)


# ---- Triton --------------------------------------------------------------------------------------

@pytest.mark.triton
def test_triton_spike_conv_matches_cpu():
    from tna_kernels.triton import ternary as T

    dev = triton_device()
    codes, scale, b, p = make(5, 70, (3, 3))
    s = (torch.rand(2, 70, 5, 6) < 0.3).float()
    bits = F.pack_spikes(s, dim=1)
    y = T.spike_ternary_conv2d(bits.to(dev), p.words.to(dev), scale.to(dev), b.to(dev), 70, [2, 1],
                               [1, 1], [1, 1], 1)
    assert torch.equal(y.cpu(), F.spike_ternary_conv2d(bits, p, (2, 1), 1, 1))


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("geom", [GEOMS[0], GEOMS[2], GEOMS[3]], ids=str)
def test_triton_float_conv_and_grad_input_round_once(dtype, geom):
    """ternary_conv2d and ternary_conv2d_grad_input (Triton decode + torch conv in float32; half
    inputs: TF32-exact operands, the grad's scale split in two): the float64 result rounded once to
    the input dtype, plus float32 summation error."""
    from tna_kernels.triton import ternary as T

    dev = triton_device()
    B, C, H, W, N, k, stride, padding, dilation = geom
    s, pd, d = (v if isinstance(v, tuple) else (v, v) for v in (stride, padding, dilation))
    codes, scale, b, p = make(N, C, k)
    x = (torch.randn(B, C, H, W) * 4).to(dtype)
    y = T.ternary_conv2d(x.to(dev), p.words.to(dev), scale.to(dev), b.to(dev), list(s), list(pd), list(d), 1)
    y = y.cpu()
    assert y.dtype == dtype
    eps, eps32 = torch.finfo(dtype).eps, torch.finfo(torch.float32).eps
    conv = lambda a, w: torch.nn.functional.conv2d(a, w, None, s, pd, d)  # noqa: E731
    ref = conv(x.double(), codes.double()) * scale.double().view(1, -1, 1, 1) + b.double().view(1, -1, 1, 1)
    mag = conv(x.double().abs(), codes.double().abs()) * scale.double().view(1, -1, 1, 1)
    terms = C * k[0] * k[1]
    assert ((y.double() - ref).abs() <= 0.5 * eps * ref.abs() + 4 * terms * eps32 * mag + 1e-6).all()
    gy = torch.randn(*y.shape).to(dtype)
    gx = T.ternary_conv2d_grad_input(gy.to(dev), p.words.to(dev), scale.to(dev), list(x.shape), list(s), list(pd),
                                     list(d), 1).cpu()
    assert gx.dtype == dtype and gx.shape == x.shape
    w = codes.double() * scale.double().view(-1, 1, 1, 1)
    gref = torch.nn.grad.conv2d_input(list(x.shape), w, gy.double(), s, pd, d)
    gmag = torch.nn.grad.conv2d_input(list(x.shape), w.abs(), gy.double().abs(), s, pd, d)
    assert ((gx.double() - gref).abs() <= 0.5 * eps * gref.abs() + 4 * N * k[0] * k[1] * eps32 * gmag + 1e-6).all()


# ---- larger randomized grid (every kernel path, bit-exact) ---------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_random_grid_bit_exact(isa, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    density = [0.02, 0.1, 0.3, 0.7][seed % 4]
    # linear: M, N, K spanning several tiles, words and vector tails
    M, N, K = r(1, 300), r(1, 300), r(1, 2500)
    codes = rand_codes(N, K)
    scale, b = torch.rand(N) + 0.1, torch.randn(N)
    p = F.pack_ternary(codes, scale, b)
    s = (torch.rand(M, K, generator=g) < density).float()
    y = F.spike_ternary_linear(F.pack_spikes(s), p)
    assert torch.equal(y, R.spike_ternary_linear(s, codes, scale, b))
    # conv: channels across word boundaries, odd sizes, random stride/padding/dilation
    C, N, k = r(1, 200), r(1, 70), (r(1, 4), r(1, 4))
    H, W = r(k[0] + 2, 14), r(k[1] + 2, 14)
    stride, padding, dilation = (r(1, 2), r(1, 3)), (r(0, 2), r(0, 2)), (r(1, 2), 1)
    codes = rand_codes(N, C, *k)
    scale, b = torch.rand(N) + 0.1, torch.randn(N)
    p = F.pack_ternary(codes, scale, b)
    s = (torch.rand(r(1, 5), C, H, W, generator=g) < density).float()
    y = F.spike_ternary_conv2d(F.pack_spikes(s, dim=1), p, stride, padding, dilation)
    assert torch.equal(y, R.spike_ternary_conv2d(s, codes, scale, b, stride, padding, dilation))


def test_packed_module_cache_follows_reloaded_weights():
    # The event-driven kernels' K-major copy is cached on the module; reloading weights must drop it.
    a, b = tnn.TernaryLinear(300, 40).pack(), tnn.TernaryLinear(300, 40).pack()
    s = (torch.rand(8, 300) < 0.1).float()
    bits = F.pack_spikes(s)
    ya = a.forward_spikes(bits)
    a.load_state_dict(b.state_dict())
    codes = b.packed.codes()
    expect = R.spike_ternary_linear(s, codes, b.scale, b.bias)
    assert torch.equal(a.forward_spikes(bits), expect) and not torch.equal(ya, expect)
    conv_a = tnn.TernaryConv2d(20, 8, 3, padding=1).pack()
    conv_b = tnn.TernaryConv2d(20, 8, 3, padding=1).pack()
    sc = (torch.rand(2, 20, 5, 5) < 0.1).float()
    conv_a.forward_spikes(F.pack_spikes(sc, dim=1))
    conv_a.load_state_dict(conv_b.state_dict())
    assert torch.equal(conv_a.forward_spikes(F.pack_spikes(sc, dim=1)),
                       conv_b.forward_spikes(F.pack_spikes(sc, dim=1)))


# ------------------------------------------------- conv with the LIF in its epilogue (packed out)

@pytest.mark.parametrize("geom", GEOMS[:4], ids=str)
@pytest.mark.parametrize("T", [1, 3])
def test_spike_conv_lif_equals_conv_then_lif_pack(isa, geom, T):
    B, C, H, W, N, k, stride, padding, dilation = geom
    N = N + 64  # output channels across a word boundary
    codes, scale, b, p = make(N, C, k)
    s = (torch.rand(T * B, C, H, W) < 0.25).float()
    bits = F.pack_spikes(s, dim=1)
    neuron = dict(tau=2.0, v_threshold=0.5, v_reset=0.0)
    out = F.spike_ternary_conv2d_lif(bits, p, T, stride, padding, dilation, **neuron)
    y = F.spike_ternary_conv2d(bits, p, stride, padding, dilation).permute(0, 2, 3, 1)
    want = F.lif_pack(y.unflatten(0, (T, B)), **neuron).flatten(0, 1)
    assert out.shape == want.shape == (T * B, y.shape[1], y.shape[2], (N + 63) // 64)
    assert torch.equal(out, want)
    spikes = F.unpack_spikes(out, N)
    assert 0 < spikes.mean() < 1  # the comparison is not between all-zero tensors


@pytest.mark.parametrize("neuron", [dict(v_reset=None, v_threshold=0.3), dict(beta=0.5)], ids=str)
def test_spike_conv_lif_neuron_variants_and_no_mutation(neuron):
    codes, scale, b, p = make(70, 20, (3, 3))
    bits = F.pack_spikes((torch.rand(8, 20, 5, 6) < 0.3).float(), dim=1)
    before = bits.clone()
    out = F.spike_ternary_conv2d_lif(bits, p, 4, 1, 1, **neuron)
    y = F.spike_ternary_conv2d(bits, p, 1, 1).permute(0, 2, 3, 1)
    assert torch.equal(out, F.lif_pack(y.unflatten(0, (4, 2)), **neuron).flatten(0, 1))
    assert torch.equal(bits, before)


def test_spike_conv_lif_opcheck():
    codes, scale, b, p = make(9, 70, (3, 3))
    bits = F.pack_spikes((torch.rand(4, 70, 5, 5) < 0.2).float(), dim=1)
    torch.library.opcheck(torch.ops.tna.spike_ternary_conv2d_lif.default,
                          (bits, p.words, p.scale, p.bias, 70, [1, 1], [1, 1], [1, 1], 1, 2, 2.0, True, 1.0,
                           0.0, False))


def test_spike_conv_lif_bad_input():
    codes, scale, b, p = make(9, 70, (3, 3))
    bits = F.pack_spikes((torch.rand(6, 70, 5, 5) < 0.2).float(), dim=1)
    with pytest.raises(ValueError, match="T must be an int >= 1 that divides"):
        F.spike_ternary_conv2d_lif(bits, p, 4)
    with pytest.raises(RuntimeError, match="T must be >= 1 and divide"):
        torch.ops.tna.spike_ternary_conv2d_lif(bits, p.words, p.scale, p.bias, 70, [1, 1], [1, 1], [1, 1], 1,
                                               4, 2.0, True, 1.0, 0.0, False)
    with pytest.raises(ValueError, match="tau must be"):
        F.spike_ternary_conv2d_lif(bits, p, 3, tau=-1.0)
    with pytest.raises(TypeError, match="spike_bits must be int64"):
        F.spike_ternary_conv2d_lif(bits.float(), p, 3)


def test_float_conv_uses_a_cached_dequantized_weight_and_equals_the_op():
    codes, scale, b, p = make(6, 5, (3, 3))
    x = torch.randn(2, 5, 7, 7)
    y = F.ternary_conv2d(x, p, 1, 1)
    assert p.dequantized() is p.dequantized()
    assert torch.equal(y, torch.ops.tna.ternary_conv2d(x, p.words, p.scale, p.bias, [1, 1], [1, 1], [1, 1], 1))
