"""Property-based tests (hypothesis) of every public op against ``tna_kernels.reference``.

Shapes, strides (transposed, strided and offset views, channels-last), dtypes, T and the ops'
hyper-parameters are drawn by hypothesis; tensor values come from a torch generator seeded by a
drawn integer. Spikes, packed words and integer accumulations must be bit-exact (``torch.equal``);
float results are compared with a tolerance for their dtype. LIF inputs are nudged away from the
threshold (a tie can flip a spike between two roundings, and one flipped spike changes the rest of
the trajectory); the fused conv + LIF uses dyadic values on which every LIF step is exact. Every
test also checks that the op leaves its inputs unchanged.

Example counts come from the hypothesis profile in conftest.py (``tna``: 25 examples per test,
derandomized, no database); ``HYPOTHESIS_PROFILE=thorough`` runs many more, randomised.
"""

from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch

from tna_kernels import functional as F
from tna_kernels import reference as R
from tna_kernels._utils import state_dtype
from tna_kernels.formats import FORMAT_VERSION, SURROGATES

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
EPS = {dt: torch.finfo(dt).eps for dt in FLOATS}
LAYOUTS = ["contiguous", "transposed", "strided", "offset"]
seeds = st.integers(0, 2**31 - 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A tensor equal to ``t`` in another memory layout: ``transposed`` (the two last dims swapped in
    memory), ``strided`` (every other element of a larger buffer), ``offset`` (a non-zero storage
    offset) or ``contiguous``."""
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout in ("strided", "transposed"):
        big = torch.zeros((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "offset":
        big = torch.zeros(t.numel() + 3, dtype=t.dtype)
        big[3:] = t.reshape(-1)
        return big[3:].view(t.shape)
    return t.contiguous()


@contextlib.contextmanager
def kernel_path(isa: str, algo: str):
    """Pins the ternary kernels' instruction set and algorithm (read by the native core per call)."""
    old = {k: os.environ.get(k) for k in ("TNA_TERNARY_ISA", "TNA_TERNARY_ALGO")}
    os.environ["TNA_TERNARY_ISA"], os.environ["TNA_TERNARY_ALGO"] = isa, algo
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _supported_paths() -> list[tuple[str, str]]:
    paths = []
    for isa in ("scalar", "avx2", "avx512"):
        with kernel_path(isa, "auto"):
            try:
                torch.ops.tna.ternary_cpu_isa()
            except RuntimeError:
                continue
        paths.append((isa, "popcount"))
        if isa != "scalar":
            paths.append((isa, "event"))
    return paths


PATHS = _supported_paths()
paths = st.sampled_from(PATHS)


def assert_unchanged(pairs):
    for now, before in pairs:
        assert torch.equal(now, before), "an op modified its input"


def rand_codes(g: torch.Generator, shape, zero_frac: float) -> torch.Tensor:
    c = torch.randint(-1, 2, shape, generator=g)
    c[torch.rand(shape, generator=g) < zero_frac] = 0
    return c.to(torch.int8)


# ------------------------------------------------------------------------------------------------ LIF


def nudged_input(g, shape, dtype, v0, *, tau, decay_input, v_threshold, v_reset, margin=1e-3):
    """Currents whose exact (float64) pre-spike membranes all lie at least ``margin`` from the
    threshold, given ``v0``; values are representable in ``dtype``."""
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.6).to(dtype)
    vr = 0.0 if v_reset is None else v_reset
    v = v0.double()
    for t in range(shape[0]):
        for _ in range(16):
            xt = x[t].double()
            h = v + (xt - (v - vr)) / tau if decay_input else v - (v - vr) / tau + xt
            close = (h - v_threshold).abs() < margin
            if not close.any():
                break
            x[t] = torch.where(close, (xt + 0.1).to(dtype), x[t])
        assume(not close.any())
        s = (h >= v_threshold).double()
        v = h - v_threshold * s if v_reset is None else h * (1 - s) + v_reset * s
    return x


LIF_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
}


@st.composite
def neurons(draw):
    """LIF hyper-parameters: tau/decay_input (or, one time in four, beta), threshold, hard/soft
    reset; returned as ``functional.lif``'s arguments and as the reference's."""
    if draw(st.integers(0, 3)) == 0:
        beta = draw(st.floats(0.0, 0.9))
        kw = dict(beta=beta)
        tau, decay = 1.0 / (1.0 - beta), False
    else:
        tau = draw(st.floats(1.0, 4.0))
        decay = draw(st.booleans())
        kw = dict(tau=tau, decay_input=decay)
    v_threshold = draw(st.floats(0.3, 1.5))
    v_reset = draw(st.sampled_from([None, 0.0, -0.3]))
    kw.update(v_threshold=v_threshold, v_reset=v_reset)
    return kw, dict(tau=tau, decay_input=decay, v_threshold=v_threshold, v_reset=v_reset)


@given(seed=seeds, T=st.integers(1, 6), tail=st.lists(st.integers(1, 12), min_size=1, max_size=3),
       dtype=st.sampled_from(FLOATS), neuron=neurons(), detach_reset=st.booleans(),
       surrogate=st.sampled_from(SURROGATES), alpha=st.floats(0.5, 4.0), with_v0=st.booleans(),
       layout=st.sampled_from(LAYOUTS))
def test_lif_forward_and_backward_match_reference(seed, T, tail, dtype, neuron, detach_reset, surrogate, alpha,
                                                  with_v0, layout):
    kw, plain = neuron
    g = gen(seed)
    acc = state_dtype(dtype)
    shape = (T, *tail)
    vr = 0.0 if plain["v_reset"] is None else plain["v_reset"]
    v0 = (torch.rand(shape[1:], generator=g, dtype=torch.float64) * 0.8).to(acc) if with_v0 else \
        torch.full(shape[1:], vr, dtype=acc)
    x = with_layout(nudged_input(g, shape, dtype, v0, **plain), layout)
    v0 = with_layout(v0, layout)
    grad_s = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    grad_v = torch.randn(shape[1:], generator=g, dtype=torch.float64).to(acc)
    x_before, v0_before = x.clone(), v0.clone()

    xa, va = x.detach().requires_grad_(), v0.detach().requires_grad_()  # the strides of x and v0
    common = dict(detach_reset=detach_reset, surrogate=surrogate, alpha=alpha)
    s, v_last = F.lif(xa, va if with_v0 else None, return_v=True, **kw, **common)
    wrt = (xa, va) if with_v0 else (xa,)
    grads = torch.autograd.grad((s, v_last), wrt, (grad_s, grad_v))
    assert_unchanged([(x, x_before), (v0, v0_before)])

    xb, vb = x.detach().clone().requires_grad_(), v0.clone().requires_grad_()
    s_ref, v_ref, _ = R.lif(xb, vb, **plain, **common)
    grads_ref = torch.autograd.grad((s_ref, v_ref), (xb, vb) if with_v0 else (xb,), (grad_s, grad_v))

    assert s.dtype == dtype and s.shape == shape and v_last.dtype == acc
    assert torch.equal(s, s_ref), "spikes differ"
    torch.testing.assert_close(v_last, v_ref, **LIF_TOL[acc])
    torch.testing.assert_close(grads[0], grads_ref[0], **LIF_TOL[dtype])
    if with_v0:
        torch.testing.assert_close(grads[1], grads_ref[1], **LIF_TOL[acc])


@given(seed=seeds, T=st.integers(1, 5), lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
       C=st.integers(1, 140), neuron=neurons(), layout=st.sampled_from(LAYOUTS))
def test_lif_pack_matches_reference(seed, T, lead, C, neuron, layout):
    kw, plain = neuron
    g = gen(seed)
    shape = (T, *lead, C)
    vr = 0.0 if plain["v_reset"] is None else plain["v_reset"]
    v0 = torch.full(shape[1:], vr)
    x = with_layout(nudged_input(g, shape, torch.float32, v0, **plain), layout)
    before = x.clone()
    bits = F.lif_pack(x, **kw)
    assert_unchanged([(x, before)])
    spikes, _, _ = R.lif(x, v0, **plain)
    assert bits.dtype == torch.int64 and bits.shape == (*shape[:-1], (C + 63) // 64)
    assert torch.equal(bits, R.pack_spikes(spikes))


# ---------------------------------------------------------------------------------- ternariser, packing


@st.composite
def weight_shapes(draw):
    n = draw(st.integers(1, 9))
    if draw(st.booleans()):
        return (n, draw(st.integers(1, 140)))
    return (n, draw(st.integers(1, 70)), draw(st.integers(1, 3)), draw(st.integers(1, 3)))


@given(seed=seeds, shape=weight_shapes(), method=st.sampled_from(["twn", "absmean"]), per_channel=st.booleans(),
       dtype=st.sampled_from(FLOATS), zero_row=st.booleans(), layout=st.sampled_from(LAYOUTS),
       clip=st.sampled_from([None, 0.5, 1.0]))
def test_ternarize_ste_and_quantize_pack_match_reference(seed, shape, method, per_channel, dtype, zero_row, layout,
                                                        clip):
    g = gen(seed)
    spread = torch.rand(shape[0], *[1] * (len(shape) - 1), generator=g, dtype=torch.float64) * 3
    w = (torch.randn(shape, generator=g, dtype=torch.float64) * spread).to(dtype)
    if zero_row:
        w[0] = 0  # an all-zero output channel: scale 0 for twn
    w = with_layout(w, layout)
    before = w.clone()

    codes, scale = F.ternarize(w, method=method, per_channel=per_channel)
    rc, rs = R.ternarize(w, method, per_channel)
    assert codes.dtype == torch.int8 and codes.shape == w.shape and scale.dtype == torch.float32
    assert torch.equal(codes, rc)
    torch.testing.assert_close(scale, rs, rtol=1e-6, atol=0)

    p = F.quantize_pack(w, method=method, per_channel=per_channel)
    pack_layout = rc.permute(0, 2, 3, 1) if rc.dim() == 4 else rc
    assert torch.equal(p.words, R.pack_ternary(pack_layout)) and torch.equal(p.scale, scale)
    assert torch.equal(p.codes(), rc)

    wl = w.detach().requires_grad_()  # same strides as w
    out = F.ternary_ste(wl, method=method, per_channel=per_channel, clip=clip)
    wr = w.detach().clone().requires_grad_()
    ref = R.ternary_ste(wr, method, per_channel, clip)
    assert out.dtype == dtype
    # the scales may differ in the last bit (summation order): compare at the dtype's resolution
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=max(1e-6, EPS[dtype]), atol=0)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    (gw,) = torch.autograd.grad(out, wl, grad)
    (gr,) = torch.autograd.grad(ref, wr, grad)
    assert torch.equal(gw, gr)
    assert_unchanged([(w, before)])


@given(seed=seeds, shape=weight_shapes(), zero_frac=st.sampled_from([0.0, 0.3, 1.0]),
       layout=st.sampled_from(LAYOUTS))
def test_pack_and_unpack_ternary_match_reference(seed, shape, zero_frac, layout):
    g = gen(seed)
    codes = with_layout(rand_codes(g, shape, zero_frac), layout)
    before = codes.clone()
    scale = torch.rand(shape[0], generator=g) + 0.1
    p = F.pack_ternary(codes, scale)
    pack_layout = codes.permute(0, 2, 3, 1) if codes.dim() == 4 else codes
    K = pack_layout.shape[-1]
    want = R.pack_ternary(pack_layout)
    assert p.words.dtype == torch.int64 and p.K == K and p.version == FORMAT_VERSION
    assert torch.equal(p.words, want)
    assert torch.equal(F.unpack_ternary(p), codes)
    assert torch.equal(torch.ops.tna.unpack_ternary(want, K, FORMAT_VERSION), R.unpack_ternary(want, K))
    assert_unchanged([(codes, before)])


@st.composite
def spike_shapes(draw):
    """1 to 4 dims: one up to 140 long (the packed axis, often), the others short."""
    shape = [draw(st.integers(1, 5)) for _ in range(draw(st.integers(1, 4)))]
    shape[draw(st.integers(0, len(shape) - 1))] = draw(st.integers(1, 140))
    return shape


@given(seed=seeds, shape=spike_shapes(), dim_pick=st.integers(0, 3), density=st.sampled_from([0.0, 0.2, 0.9, 1.0]),
       dtype=st.sampled_from([torch.bool, torch.uint8, torch.int32, *FLOATS]), layout=st.sampled_from(LAYOUTS),
       out_dtype=st.sampled_from([torch.float32, torch.uint8, torch.bfloat16]))
def test_pack_and_unpack_spikes_match_reference(seed, shape, dim_pick, density, dtype, layout, out_dtype):
    g = gen(seed)
    s01 = torch.rand(shape, generator=g) < density
    s = with_layout(s01.to(dtype), layout)
    before = s.clone()
    dim = dim_pick % len(shape) - (len(shape) if dim_pick % 2 else 0)  # positive and negative dims
    bits = F.pack_spikes(s, dim=dim)
    assert_unchanged([(s, before)])
    assert torch.equal(bits, R.pack_spikes(s01.movedim(dim, -1)))
    back = F.unpack_spikes(bits, shape[dim], dim=dim, dtype=out_dtype)
    assert back.dtype == out_dtype and torch.equal(back, s01.to(out_dtype))
    assert torch.equal(torch.ops.tna.unpack_spikes(bits, shape[dim]), R.unpack_spikes(bits, shape[dim]))


# ----------------------------------------------------------------------------------- ternary linear


def packed_weight(g, N, K, zero_frac, with_bias):
    codes = rand_codes(g, (N, K), zero_frac)
    scale = torch.rand(N, generator=g) + 0.1
    bias = torch.randn(N, generator=g) if with_bias else None
    return codes, scale, bias


@given(seed=seeds, lead=st.lists(st.integers(1, 9), min_size=1, max_size=2), N=st.integers(1, 70),
       K=st.integers(1, 200), density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), zero_frac=st.sampled_from([0.0, 0.4]),
       with_bias=st.booleans(), path=paths, sliced=st.booleans())
def test_spike_ternary_linear_is_exact(seed, lead, N, K, density, zero_frac, with_bias, path, sliced):
    g = gen(seed)
    codes, scale, bias = packed_weight(g, N, K, zero_frac, with_bias)
    s = (torch.rand((*lead, K), generator=g) < density).float()
    bits = F.pack_spikes(s)
    if sliced:  # non-contiguous packed rows: every other row of a larger buffer
        big = torch.zeros((*lead[:-1], 2 * lead[-1], bits.shape[-1]), dtype=torch.int64)
        big[..., ::2, :] = bits
        bits = big[..., ::2, :]
    before = bits.clone()
    with kernel_path(*path):
        p = F.pack_ternary(codes, scale, bias)  # built under the path: its cached K-major copy follows it
        y = F.spike_ternary_linear(bits, p)
    assert_unchanged([(bits, before)])
    assert y.dtype == torch.float32 and y.shape == (*lead, N)
    assert torch.equal(y, R.spike_ternary_linear(s, codes, scale, bias))


def _float_tol(x64, codes, scale, dtype, bias=None):
    """Bound on |y - y_ref| for a ternary product accumulated in float32 (or float64), plus bias,
    rounded to ``dtype``: accumulation error ~ K * eps_acc * sum|x||w|, plus the last roundings."""
    mag = (x64.abs() @ codes.double().abs().T) * scale.double()
    acc_eps = EPS[torch.float64] if dtype == torch.float64 else EPS[torch.float32]
    out = mag if bias is None else mag + bias.double().abs()
    return 4 * x64.shape[-1] * acc_eps * mag + 2 * EPS[dtype] * out + (1e-12 if dtype == torch.float64 else 1e-6)


@given(seed=seeds, lead=st.lists(st.integers(1, 16), min_size=1, max_size=2), N=st.integers(1, 40),
       K=st.integers(1, 150), dtype=st.sampled_from(FLOATS), with_bias=st.booleans(), path=paths,
       layout=st.sampled_from(LAYOUTS))
def test_ternary_linear_forward_and_backward_match_reference(seed, lead, N, K, dtype, with_bias, path, layout):
    g = gen(seed)
    codes, scale, bias = packed_weight(g, N, K, 0.3, with_bias)
    x = with_layout(torch.randn((*lead, K), generator=g, dtype=torch.float64).to(dtype), layout)
    x64 = x.double()  # the values the op sees
    before = x.clone()
    gy = torch.randn((*lead, N), generator=g, dtype=torch.float64).to(dtype)
    with kernel_path(*path):
        p = F.pack_ternary(codes, scale, bias)
        xa = x.detach().requires_grad_()
        y = F.ternary_linear(xa, p)  # float32 with more than 12 rows: torch's GEMM on the cached codes
        (gx,) = torch.autograd.grad(y, xa, gy)
    assert_unchanged([(x, before)])
    x_ref = x64.clone().requires_grad_()
    ref = R.ternary_linear(x_ref, codes, scale, bias)
    (gx_ref,) = torch.autograd.grad(ref, x_ref, gy.double())

    assert y.dtype == dtype and y.shape == (*lead, N) and gx.dtype == dtype
    assert ((y.double() - ref.detach()).abs() <= _float_tol(x64, codes, scale, dtype, bias)).all()
    # grad_x = (grad_y * scale) @ codes: the same bound with the roles of x and the weight swapped
    tol_gx = _float_tol(gy.double() * scale.double(), codes.T.contiguous(), torch.ones(K), dtype)
    assert ((gx.double() - gx_ref).abs() <= tol_gx).all()
    if with_bias:  # the bias gradient, through the op's own autograd (the functional takes a frozen bias)
        b_leaf, xb = bias.clone().requires_grad_(), x.detach().requires_grad_()
        y_op = torch.ops.tna.ternary_linear(xb, p.words, p.scale, b_leaf, FORMAT_VERSION)
        gx_op, gb = torch.autograd.grad(y_op, (xb, b_leaf), gy)
        b_ref, x_ref = bias.double().requires_grad_(), x64.clone().requires_grad_()
        (gb_ref,) = torch.autograd.grad(R.ternary_linear(x_ref, codes, scale, b_ref), b_ref, gy.double())
        assert ((gx_op.double() - gx_ref).abs() <= tol_gx).all()
        # summed in grad_y's dtype, then cast to float32: one rounding to that dtype
        mag_gb = gy.double().abs().flatten(0, -2).sum(0)
        tol_gb = (2 * math.prod(lead) * EPS[torch.float32] + 2 * EPS[dtype]) * mag_gb + 1e-6
        assert ((gb.double() - gb_ref).abs() <= tol_gb).all()


# ------------------------------------------------------------------------------------- ternary conv


@st.composite
def conv_geometries(draw, max_c: int = 70):
    B, C, N = draw(st.integers(1, 3)), draw(st.integers(1, max_c)), draw(st.integers(1, 70))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(H + 2 * padding[0] >= dilation[0] * (kh - 1) + 1 and W + 2 * padding[1] >= dilation[1] * (kw - 1) + 1)
    return B, C, H, W, N, (kh, kw), stride, padding, dilation


@given(seed=seeds, geom=conv_geometries(), density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), with_bias=st.booleans(),
       path=paths, sliced=st.booleans())
def test_spike_ternary_conv2d_is_exact(seed, geom, density, with_bias, path, sliced):
    B, C, H, W, N, k, stride, padding, dilation = geom
    g = gen(seed)
    codes = rand_codes(g, (N, C, *k), 0.3)
    scale = torch.rand(N, generator=g) + 0.1
    bias = torch.randn(N, generator=g) if with_bias else None
    s = (torch.rand(B, C, H, W, generator=g) < density).float()
    bits = F.pack_spikes(s, dim=1)
    if sliced:  # every other image of a larger batch: non-contiguous in B
        big = torch.zeros((2 * B, *bits.shape[1:]), dtype=torch.int64)
        big[::2] = bits
        bits = big[::2]
    before = bits.clone()
    with kernel_path(*path):
        p = F.pack_ternary(codes, scale, bias)
        y = F.spike_ternary_conv2d(bits, p, stride, padding, dilation)
    assert_unchanged([(bits, before)])
    ref = R.spike_ternary_conv2d(s, codes, scale, bias, stride, padding, dilation)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert torch.equal(y, ref)


@given(seed=seeds, geom=conv_geometries(max_c=40), dtype=st.sampled_from(FLOATS), with_bias=st.booleans(),
       layout=st.sampled_from(["contiguous", "channels_last", "strided", "offset"]))
def test_ternary_conv2d_forward_and_backward_match_reference(seed, geom, dtype, with_bias, layout):
    B, C, H, W, N, k, stride, padding, dilation = geom
    g = gen(seed)
    codes = rand_codes(g, (N, C, *k), 0.3)
    scale = torch.rand(N, generator=g) + 0.1
    bias = torch.randn(N, generator=g) if with_bias else None
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else with_layout(x, layout)
    before = x.clone()
    xa = x.detach().requires_grad_()
    y = F.ternary_conv2d(xa, F.pack_ternary(codes, scale, bias), stride, padding, dilation)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
    (gx,) = torch.autograd.grad(y, xa, gy)
    assert_unchanged([(x, before)])
    x_ref = x.double().requires_grad_()
    ref = R.ternary_conv2d(x_ref, codes, scale, bias, stride, padding, dilation)
    (gx_ref,) = torch.autograd.grad(ref, x_ref, gy.double())
    assert y.dtype == dtype and y.shape == ref.shape and gx.dtype == dtype

    def close(got, want, mag):
        taps = C * k[0] * k[1]
        acc_eps = EPS[torch.float64] if dtype == torch.float64 else EPS[torch.float32]
        tol = (4 * taps * acc_eps + 2 * EPS[dtype]) * mag + (1e-12 if dtype == torch.float64 else 1e-5)
        assert ((got.double() - want).abs() <= tol).all()

    w_abs = codes.double().abs() * scale.double().view(-1, 1, 1, 1)
    mag = torch.nn.functional.conv2d(x.double().abs(), w_abs, None, stride, padding, dilation)
    close(y, ref.detach(), mag + (bias.double().abs().view(1, -1, 1, 1) if with_bias else 0))
    mag_gx = torch.nn.grad.conv2d_input(x.shape, w_abs, gy.double().abs(), stride, padding, dilation)
    close(gx, gx_ref, mag_gx)


def _dyadic(g, n, lo, hi, denominator):
    return torch.randint(lo, hi + 1, (n,), generator=g).float() / denominator


@given(seed=seeds, geom=conv_geometries(max_c=40), T=st.integers(1, 3), density=st.sampled_from([0.2, 0.5]),
       with_bias=st.booleans(), path=paths, log_tau=st.integers(0, 2), decay_input=st.booleans(),
       threshold=st.integers(1, 24), v_reset=st.sampled_from([None, 0, -2]), use_beta=st.booleans())
def test_spike_ternary_conv2d_lif_matches_reference(seed, geom, T, density, with_bias, path, log_tau, decay_input,
                                                   threshold, v_reset, use_beta):
    """Dyadic scales, biases, thresholds and resets with tau in {1, 2, 4}: every LIF step is exact
    in float32, so the fused kernel must give the reference's spikes bit for bit."""
    B, C, H, W, N, k, stride, padding, dilation = geom
    g = gen(seed)
    codes = rand_codes(g, (N, C, *k), 0.3)
    scale = _dyadic(g, N, 1, 32, 16)
    bias = _dyadic(g, N, -16, 16, 16) if with_bias else None
    tau = float(2**log_tau)
    neuron = dict(v_threshold=threshold / 8, v_reset=None if v_reset is None else v_reset / 8)
    if use_beta and log_tau > 0:
        neuron.update(beta=1 - 1 / tau)
        decay_input = False
    else:
        neuron.update(tau=tau, decay_input=decay_input)
    s = (torch.rand(T * B, C, H, W, generator=g) < density).float()
    bits = F.pack_spikes(s, dim=1)
    before = bits.clone()
    with kernel_path(*path):
        p = F.pack_ternary(codes, scale, bias)
        out = F.spike_ternary_conv2d_lif(bits, p, T, stride, padding, dilation, **neuron)
    assert_unchanged([(bits, before)])
    cur = R.spike_ternary_conv2d(s, codes, scale, bias, stride, padding, dilation)  # [T*B, N, OH, OW]
    cur = cur.permute(0, 2, 3, 1).unflatten(0, (T, B))  # [T, B, OH, OW, N]
    vr = 0.0 if neuron["v_reset"] is None else neuron["v_reset"]
    spikes, _, _ = R.lif(cur, torch.full(cur.shape[1:], vr), tau=tau, decay_input=decay_input,
                         v_threshold=neuron["v_threshold"], v_reset=neuron["v_reset"])
    want = R.pack_spikes(spikes).flatten(0, 1)
    assert out.dtype == torch.int64 and out.shape == want.shape
    assert torch.equal(out, want)


# -------------------------------------------------------------------------------------------- pooling


@st.composite
def pool_geometries(draw):
    N, C, H, W = draw(st.integers(1, 3)), draw(st.integers(1, 70)), draw(st.integers(1, 10)), draw(st.integers(1, 10))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    assume(H + 2 * padding[0] >= dilation[0] * (k[0] - 1) + 1 and W + 2 * padding[1] >= dilation[1] * (k[1] - 1) + 1)
    return (N, C, H, W), k, stride, padding, dilation


@given(seed=seeds, geom=pool_geometries(), ceil_mode=st.booleans(), dtype=st.sampled_from(FLOATS),
       density=st.sampled_from([0.0, 0.3, 1.0]), layout=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_spike_max_pool2d_forward_and_backward_match_reference(seed, geom, ceil_mode, dtype, density, layout):
    shape, *pool = geom
    g = gen(seed)
    x = (torch.rand(shape, generator=g) < density).to(dtype)
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else with_layout(x, layout)
    before = x.clone()
    try:
        y_ref, bits_ref = R.spike_max_pool2d(x, *pool, ceil_mode)
    except RuntimeError:  # torch refuses this geometry (e.g. an empty output)
        assume(False)
    # A window entirely in the padding (possible with dilation) pools to -inf, as in torch. Its
    # backward is not run: torch's max_pool2d backward and tna::spike_max_pool2d_backward both write
    # outside grad_x for such a window (torch 2.13 CPU; csrc/cpu/spike_pool.cpp unpool_plane takes
    # the window's "first element" at an index past the plane), corrupting the heap.
    empty_window = bool(torch.isinf(y_ref).any())
    xa = x.detach().requires_grad_(not empty_window)
    y, bits = torch.ops.tna.spike_max_pool2d(xa, *pool, ceil_mode)
    assert y.dtype == dtype and torch.equal(y, y_ref) and torch.equal(bits, bits_ref)
    if not empty_window:
        gy = torch.randn(y.shape, generator=g).to(dtype)
        (gx,) = torch.autograd.grad(y, xa, gy)
        assert torch.equal(gx, R.spike_max_pool2d_backward(gy, bits_ref, list(shape), *pool, ceil_mode))
    assert_unchanged([(x, before)])


# ------------------------------------------------------------------------------------------ twin loss


LOSS_TOL = {  # (loss and parts rtol, gradient rtol, gradient atol relative to the largest gradient)
    torch.float64: (1e-10, 1e-10, 1e-12),
    torch.float32: (2e-5, 2e-5, 1e-6),
    torch.bfloat16: (2e-5, 2**-7, 2**-9),  # float32 maths on bf16 values; gradients rounded once
    torch.float16: (2e-5, 2**-9, 2**-11),
}


def _close(got, want, rtol, atol_rel, floor):
    """assert_close with an absolute tolerance relative to the largest expected magnitude (small
    gradients ~1/B are compared at their own scale), and an absolute floor for all-zero results
    (e.g. the cross-entropy of a single class)."""
    scale = want.abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=max(atol_rel * scale, floor))


@given(seed=seeds, B=st.integers(1, 40), C=st.integers(1, 50), dtype=st.sampled_from(FLOATS),
       mse_weight=st.floats(0.0, 2.0), ce_weight_base=st.sampled_from([0.0, 0.5, 1.0]),
       ce_weight_twin=st.sampled_from([0.0, 1.0, 1.7]), mse_reduction=st.sampled_from(["mean", "sum_over_batch"]),
       label_smoothing=st.sampled_from([0.0, 0.1, 0.3]), ignore_frac=st.sampled_from([0.0, 0.3, 1.0]),
       detach_base=st.booleans(), detach_twin=st.booleans(), logit_scale=st.sampled_from([0.1, 3.0, 20.0]),
       layout=st.sampled_from(LAYOUTS))
def test_twin_loss_matches_reference(seed, B, C, dtype, mse_weight, ce_weight_base, ce_weight_twin, mse_reduction,
                                     label_smoothing, ignore_frac, detach_base, detach_twin, logit_scale, layout):
    g = gen(seed)
    a = with_layout((logit_scale * torch.randn(B, C, generator=g, dtype=torch.float64)).to(dtype), layout)
    b = with_layout((logit_scale * torch.randn(B, C, generator=g, dtype=torch.float64)).to(dtype), layout)
    y = torch.randint(0, C, (B,), generator=g)
    y[torch.rand(B, generator=g) < ignore_frac] = -100
    kw = dict(mse_weight=mse_weight, ce_weight_base=ce_weight_base, ce_weight_twin=ce_weight_twin,
              mse_reduction=mse_reduction, label_smoothing=label_smoothing, detach_base=detach_base,
              detach_twin=detach_twin)
    before = [t.clone() for t in (a, b, y)]

    def run(fn, **extra):
        la, lb = a.detach().requires_grad_(), b.detach().requires_grad_()  # same strides as a and b
        out = fn(la, lb, y, **kw, **extra)
        loss, parts = out
        if loss.requires_grad:
            loss.backward()
        return loss.detach(), parts, la.grad, lb.grad

    ours = run(F.twin_loss, return_parts=True)
    ref = run(R.twin_loss)
    assert_unchanged(zip((a, b, y), before, strict=True))
    rtol, grad_rtol, grad_atol = LOSS_TOL[dtype]
    assert ours[0].dtype == ref[0].dtype == state_dtype(dtype)
    floor = 8 * EPS[state_dtype(dtype)] * (1 + logit_scale)
    _close(ours[0], ref[0], rtol, 1e-7, floor)
    _close(ours[1], ref[1], rtol, 1e-7, floor)
    for got, want in zip(ours[2:], ref[2:], strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            assert got.dtype == dtype
            _close(got.to(state_dtype(dtype)), want.to(state_dtype(dtype)), grad_rtol, grad_atol, floor / B)
