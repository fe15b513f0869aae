"""The full GPU path on the CPU (DESIGN.md lane 3, ``-m gpu_path``, ``make test-gpu-path``).

Routing: every op family registers its CUDA kernels with ``tna_kernels.ops.register_cuda``, which
records the registered function in ``ops.CUDA_KERNELS``. :func:`routed` registers those same
function objects on the CPU dispatch key of their ``tna::`` ops, in a separate
``torch.library.Library("tna", "IMPL")`` (the dispatcher stacks a new registration over the C++
kernels' one for as long as it lives), and destroys that library on exit, which brings the C++
kernels back. Under ``TRITON_INTERPRET=1`` the Triton launchers run their kernels on CPU tensors,
so ``torch.ops.tna.*`` and everything built on it (functional, nn, models, the autograd formulas,
which call the backward ops through the dispatcher, routed too) run the code a GPU runs: the
registered function, its argument handling, the Triton launchers and kernels, and the torch ops of
the compositions. Nothing here copies a GPU kernel or launcher.

Not routed: ops with no CUDA kernel (``ternary_kmajor``: the CPU event-driven layout, which the
Triton launchers ignore; the ``batch_norm_*`` ops: the CPU's way to torch's batch-norm bits, on CUDA
the fused BN + LIF layer runs torch's batch norm; the composite ops ``twin_loss`` and
``ternary_cpu_isa``). Python-level
device policy above the ops stays as on the CPU: ``functional.lif`` saves the membrane only off the
CPU (so F.lif trains through ``lif_bwd_recompute``, which on this path is the Triton forward with
``save_h`` then the Triton ``lif_bwd``; the GPU's ``lif_fwd(save_h=True)`` -> ``lif_bwd`` autograd is
tested on the op directly below); ``functional.ternary_linear`` / ``ternary_conv2d`` run torch on a
cached dequantised weight for float32 CPU tensors (the ops are called directly here); the twin
loss backward hands its saved gradients back for a CPU ``grad_output`` of 1 (tests use 2 to reach
``twin_loss_bwd``).

Tests: :func:`routed` really reroutes and restores; ``torch.library.opcheck`` of every routed op
(forward and backward ops); forward and backward against ``tna_kernels.reference`` (spikes and
integer accumulations with ``torch.equal``, floats within tolerance), including the GPU paths of
``lif_pack``, ``spike_ternary_conv2d_lif``, ``ternary_conv2d`` (+ its input gradient),
``spike_max_pool2d`` and ``spike_conv2d_grad_weight`` (its split-K path too), half / bf16 storage
and strided inputs; three TNA training steps of a tiny
spiking VGG and a tiny spiking ResNet on the C++ path and on the routed path, from identical
states and inputs, and their packed inference (``model.pack()``); every bad input the C++ ops
refuse, refused on the routed path too, on the host, with an error naming the argument.
"""

import contextlib
import copy
import warnings

import pytest
import torch

from tna_kernels import functional as F
from tna_kernels import ops
from tna_kernels import reference as R
from tna_kernels._utils import is_composite
from tna_kernels.formats import SURROGATES
from tna_kernels.models import build_model, make_twin
from tna_kernels.nn import LIF
from tna_kernels.nn.packed import PackedLIFConv2d
from tna_kernels.ops.lif import _lif_hyper

pytestmark = pytest.mark.gpu_path  # skipped (tests/conftest.py) without Triton and TRITON_INTERPRET=1

OPS = torch.ops.tna
NOT_ROUTED = {"ternary_kmajor",  # CPU-only: the K-major layout of the C++ event-driven kernels
              # CPU-only: on CUDA the unfused bn_lif runs torch's batch norm (the fused pair is routed)
              "batch_norm_forward", "batch_norm_apply", "batch_norm_backward_channels_last"}


@contextlib.contextmanager
def routed():
    """Every ``tna::`` op that has a CUDA kernel runs that kernel (the function registered for
    CUDA, ``ops.CUDA_KERNELS``) on CPU tensors; the C++ kernels come back on exit."""
    lib = torch.library.Library("tna", "IMPL")
    try:
        with warnings.catch_warnings():
            # the dispatcher warns (once per process) that a registration overrides another: that
            # is the point here
            warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
            for name, fn in ops.CUDA_KERNELS.items():
                lib.impl(name, fn, "CPU")
        yield
    finally:
        lib._destroy()


@pytest.fixture
def on_gpu_path():
    with routed():
        yield


def _cpu_kernel_site(name: str) -> str:
    """Where the CPU kernel of tna::<name> now in use was registered (the dispatcher's table)."""
    line = next(ln for ln in torch._C._dispatch_dump_table(f"tna::{name}").splitlines() if ln.startswith("CPU:"))
    return line


def _all_ops() -> set[str]:
    return {n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("tna::")}


# ---- routing --------------------------------------------------------------------------------------

def test_every_op_with_a_cuda_kernel_is_routed_and_restored():
    names = _all_ops()
    composite = {n for n in names if is_composite(f"tna::{n}")}
    assert set(ops.CUDA_KERNELS) == names - composite - NOT_ROUTED
    before = {n: _cpu_kernel_site(n) for n in ops.CUDA_KERNELS}
    assert all("tna_kernels/ops/" in site for site in before.values()), before
    with routed():
        for n in ops.CUDA_KERNELS:
            assert "test_gpu_path.py" in _cpu_kernel_site(n), n
    assert {n: _cpu_kernel_site(n) for n in ops.CUDA_KERNELS} == before


class _LaunchCounter:
    """Stands in for a Triton kernel object in its launcher's module: counts launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def test_routed_calls_launch_the_triton_kernels(monkeypatch):
    from tna_kernels.triton import lif as tlif
    from tna_kernels.triton import ternary as tt

    lif_k = _LaunchCounter(tlif._lif_fwd_kernel)
    pack_k = _LaunchCounter(tt._pack_kernel)
    monkeypatch.setattr(tlif, "_lif_fwd_kernel", lif_k)
    monkeypatch.setattr(tt, "_pack_kernel", pack_k)
    x = torch.rand(3, 2, 70) * 2
    want = F.lif(x)
    assert lif_k.launches == 0
    with routed():
        got = F.lif(x)
        bits = F.lif_pack(x)  # the CUDA composition: lif_fwd then pack_spikes, both routed
    assert (lif_k.launches, pack_k.launches) == (2, 1)
    assert torch.equal(got, want) and torch.equal(bits, F.pack_spikes(want))


# ---- opcheck of every routed op (forward and backward ops) -------------------------------------------

def _draw_lif_input(shape, *, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, margin=1e-3):
    """Currents whose pre-spike membranes stay `margin` away from the threshold (exact arithmetic):
    no spike can flip between float32 and float64 (reference) arithmetic."""
    x = torch.randn(shape, dtype=torch.float64) * 1.5 + 0.6
    vr = 0.0 if v_reset is None else v_reset
    v = torch.full(shape[1:], vr, dtype=torch.float64)
    for t in range(shape[0]):
        for _ in range(8):
            h = v + (x[t] - (v - vr)) / tau if decay_input else v - (v - vr) / tau + x[t]
            close = (h - v_threshold).abs() < margin
            if not close.any():
                break
            x[t] = torch.where(close, x[t] + 0.1, x[t])
        assert not close.any()
        s = (h >= v_threshold).double()
        v = h - v_threshold * s if v_reset is None else h * (1 - s) + v_reset * s
    return x.float()


def _codes(*shape):
    return torch.randint(-1, 2, shape, dtype=torch.int8)


def _spikes(*shape, density=0.3):
    return (torch.rand(shape) < density).float()


def _opcheck_samples():
    hyper = (2.0, True, 1.0, 0.0, False, False, "atan", 2.0)
    soft = (2.0, False, 1.0, 0.0, True, True, "sigmoid", 2.0)
    x = _draw_lif_input((3, 2, 5))
    h = R.lif(x, torch.zeros(2, 5))[2].detach()
    lin = F.pack_ternary(_codes(5, 70), scale=torch.rand(5) + 0.1, bias=torch.randn(5))
    conv = F.pack_ternary(_codes(4, 6, 3, 3), scale=torch.rand(4) + 0.1, bias=torch.randn(4))
    bits = F.pack_spikes(_spikes(4, 70))
    cbits = F.pack_spikes(_spikes(4, 6, 7, 5), dim=1)  # [T*B = 4, 7, 5, 1]
    geo = ([1, 1], [1, 1], [1, 1])
    pool = ([2, 2], [2, 2], [0, 0], [1, 1])
    xp = _spikes(2, 3, 6, 6, density=0.5)
    yp, pbits = R.spike_max_pool2d(xp, *pool, False)
    a, b = torch.randn(4, 37), torch.randn(4, 37)
    y = torch.tensor([3, -100, 0, 36])
    gbits = F.pack_spikes(_spikes(2, 70, 5, 4), dim=1)  # [2, 5, 4, 2]: C = 70, two words
    xb = (torch.randn(4, 3, 5, 5) * 2 + 0.5).contiguous(memory_format=torch.channels_last)  # T = 2, B = 2
    wb, bb = torch.rand(3) + 0.5, torch.randn(3)
    _, mb, ib = OPS.batch_norm_lif_forward(xb, wb, bb, None, None, 0.1, 1e-5, 2, *hyper)
    return {
        "batch_norm_lif_forward": [(xb, wb, bb, torch.zeros(3), torch.ones(3), 0.1, 1e-5, 2, *hyper),
                                   (xb, None, None, None, None, 0.1, 1e-5, 2, *soft)],
        "batch_norm_lif_backward": [(torch.randn(xb.shape), xb, mb, ib, wb, bb, 2, *hyper, [True, True, True]),
                                    (torch.randn(xb.shape), xb, mb, ib, None, None, 2, *soft, [True, False, True])],
        "lif_fwd": [(x.clone().requires_grad_(), torch.rand(2, 5).requires_grad_(), *hyper, True),
                    (x.clone().requires_grad_(), None, *soft, False)],
        "lif_bwd": [(torch.randn(3, 2, 5), torch.randn(2, 5), h, *hyper),
                    (torch.randn(3, 2, 5), None, h, 2.0, True, 1.0, 0.0, False, True, "triangle", 2.0)],
        "lif_bwd_recompute": [(torch.randn(3, 2, 5), torch.randn(2, 5), x, torch.rand(2, 5), *hyper),
                              (torch.randn(3, 2, 5), None, x, None, *soft)],
        "lif_pack": [(x.reshape(3, 2, 5).contiguous(), 2.0, True, 1.0, 0.0, False),
                     (torch.rand(2, 3, 70) * 2, 2.0, False, 0.5, 0.0, True)],
        "pack_ternary": [(_codes(3, 70),)],
        "unpack_ternary": [(lin.words, 70, 1)],
        "pack_spikes": [(_spikes(3, 70),), (_spikes(2, 70, 3), 1)],
        "unpack_spikes": [(bits, 70)],
        "ternarize": [(torch.randn(5, 70), "twn", True, True), (torch.randn(4, 6, 3, 3), "absmean", False, False)],
        "ternary_linear": [(torch.randn(2, 3, 70, requires_grad=True), lin.words, lin.scale,
                            lin.bias.clone().requires_grad_(), 1),
                           (torch.randn(3, 70), lin.words, lin.scale, None, 1)],
        "ternary_linear_grad_input": [(torch.randn(3, 5), lin.words, lin.scale, 70, 1)],
        "spike_ternary_linear": [(bits, lin.words, lin.scale, lin.bias, 70, 1)],
        "ternary_conv2d": [(torch.randn(2, 6, 7, 5, requires_grad=True), conv.words, conv.scale,
                            conv.bias.clone().requires_grad_(), [2, 1], [0, 1], [1, 1], 1),
                           (torch.randn(2, 6, 7, 5), conv.words, conv.scale, None, *geo, 1)],
        "ternary_conv2d_grad_input": [(torch.randn(2, 4, 7, 5), conv.words, conv.scale, [2, 6, 7, 5], *geo, 1)],
        "spike_ternary_conv2d": [(cbits, conv.words, conv.scale, conv.bias, 6, *geo, 1)],
        "spike_ternary_conv2d_lif": [(cbits, conv.words, conv.scale, conv.bias, 6, *geo, 1, 2, 2.0, True, 0.5,
                                      0.0, False)],
        "spike_conv2d_grad_weight": [(torch.randn(4, 3, 7, 5), cbits, 6, [3, 3], *geo),
                                     (torch.randn(2, 3, 3, 2).to(memory_format=torch.channels_last), gbits, 70, [3, 3],
                                      [2, 2], [1, 1], [1, 1]),
                                     (torch.randn(2, 4, 3, 4).bfloat16(), gbits, 70, [2, 3], [1, 1], [0, 1], [2, 1])],
        "spike_max_pool2d": [(xp.clone().requires_grad_(), *pool, False),
                             (xp, [3, 3], [2, 2], [1, 1], [1, 1], True)],
        "spike_max_pool2d_backward": [(torch.randn(yp.shape), pbits, list(xp.shape), *pool, False)],
        "twin_loss_fwd": [(a.clone().requires_grad_(), b.clone().requires_grad_(), y, 1.0, 0.5, 0.1, 0, 0.1, -100,
                           True, True),
                          (a.clone().requires_grad_(), b, y, 1.0, 1.0, 0.005, 1, 0.0, -100, True, False)],
        "twin_loss_bwd": [(torch.tensor(1.5), a, b), (torch.tensor(-2.0), a, torch.empty(0))],
    }


def test_every_routed_op_has_opcheck_samples():
    assert set(_opcheck_samples()) == set(ops.CUDA_KERNELS)


@pytest.mark.parametrize("name", sorted(ops.CUDA_KERNELS))
def test_opcheck(name, on_gpu_path):
    """Schema, fake kernel against the routed kernel, autograd registration and, for the ops with
    an autograd formula (inputs that require grad), the backward through AOT dispatch."""
    for args in _opcheck_samples()[name]:
        torch.library.opcheck(getattr(OPS, name).default, args)


# ---- forward and backward against the reference ----------------------------------------------------

TOL32 = dict(rtol=1e-5, atol=1e-6)  # float32 vs the float32 reference (LIF, twin loss): a few ulps


@pytest.mark.parametrize("surrogate,v_reset,detach_reset,decay_input",
                         [(s, (0.0, None, -0.25)[i % 3], i % 2 == 1, i % 4 != 3) for i, s in enumerate(SURROGATES)])
def test_lif_matches_reference(surrogate, v_reset, detach_reset, decay_input, on_gpu_path):
    """functional.lif (backward: lif_bwd_recompute) and the op with save_h=True (backward: lif_bwd,
    what functional.lif uses on a GPU) against the reference: spikes exact, the rest ~ulps."""
    shape = (3, 2, 70)  # 140 neurons: three 64-wide blocks, the last masked
    x = _draw_lif_input(shape, decay_input=decay_input, v_reset=v_reset)
    gs, gv = torch.randn(shape), torch.randn(shape[1:])
    kw = dict(tau=2.0, decay_input=decay_input, v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate,
              alpha=2.5)
    xr, v0 = x.clone().requires_grad_(), torch.full(shape[1:], 0.0 if v_reset is None else v_reset)
    s_ref, v_ref, _ = R.lif(xr, v0, **kw)
    gx_ref = torch.autograd.grad((s_ref, v_ref), xr, (gs, gv))[0]

    xa = x.clone().requires_grad_()
    s, v_last = F.lif(xa, return_v=True, **kw)
    gx = torch.autograd.grad((s, v_last), xa, (gs, gv))[0]
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(v_last, v_ref, **TOL32)
    torch.testing.assert_close(gx, gx_ref, **TOL32)

    xb = x.clone().requires_grad_()
    hyper = _lif_hyper(**kw)  # the arguments functional.lif hands the op
    s, v_last, h = OPS.lif_fwd(xb, None, *hyper, True)
    assert h.shape == shape
    gx = torch.autograd.grad((s, v_last), xb, (gs, gv))[0]
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(gx, gx_ref, **TOL32)


@pytest.mark.parametrize("soft", [False, True])
def test_lif_pack_matches_reference(soft, on_gpu_path):
    """lif_pack's CUDA composition (lif_fwd + pack_spikes): the reference's spikes, packed."""
    v_reset = None if soft else 0.0
    x = _draw_lif_input((3, 2, 4, 70), decay_input=False, v_reset=v_reset, v_threshold=0.8)
    got = F.lif_pack(x, tau=1.5, decay_input=False, v_threshold=0.8, v_reset=v_reset)
    s = R.lif(x, torch.zeros(2, 4, 70), tau=1.5, decay_input=False, v_threshold=0.8, v_reset=v_reset)[0]
    assert got.shape == (3, 2, 4, 2)
    assert torch.equal(got, R.pack_spikes(s))


@pytest.mark.parametrize("K", [1, 63, 64, 65, 130])
def test_packing_matches_reference(K, on_gpu_path):
    codes = _codes(6, K)
    s = _spikes(4, K, density=0.5)
    words = F.pack_ternary(codes).words
    assert torch.equal(words, R.pack_ternary(codes))
    assert torch.equal(F.unpack_ternary(F.pack_ternary(codes)), codes)
    bits = F.pack_spikes(s)
    assert torch.equal(bits, R.pack_spikes(s))
    assert torch.equal(F.unpack_spikes(bits, K), s)
    assert torch.equal(OPS.unpack_spikes(bits, K), R.unpack_spikes(bits, K))  # uint8, as on the CPU
    with pytest.raises(RuntimeError, match="only 0 and 1"):
        F.pack_spikes(s + 0.5)


@pytest.mark.parametrize("method", ["twn", "absmean"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_ternarize_and_ste_match_reference(method, per_channel, on_gpu_path):
    w = torch.randn(6, 5, 3, 3)
    codes, scale = F.ternarize(w, method=method, per_channel=per_channel)
    want_codes, want_scale = R.ternarize(w, method, per_channel)
    assert torch.equal(codes, want_codes)
    torch.testing.assert_close(scale, want_scale, rtol=1e-6, atol=0)  # float64 statistics, one rounding
    wq = w.clone().requires_grad_()
    out = F.ternary_ste(wq, method=method, per_channel=per_channel, clip=1.0)
    out.backward(torch.ones_like(out))
    wr = w.clone().requires_grad_()
    ref = R.ternary_ste(wr, method, per_channel, clip=1.0)
    ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=0)
    assert torch.equal(wq.grad, wr.grad)


@pytest.mark.parametrize("M,N,K", [(3, 5, 70), (17, 9, 130)])
def test_spike_linear_is_exact(M, N, K, on_gpu_path):
    codes, scale, bias = _codes(N, K), torch.rand(N) + 0.1, torch.randn(N)
    p = F.pack_ternary(codes, scale, bias)
    s = _spikes(M, K)
    assert torch.equal(F.spike_ternary_linear(F.pack_spikes(s), p), R.spike_ternary_linear(s, codes, scale, bias))


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), ((2, 1), (0, 1), 1), (2, 1, (2, 1))])
def test_spike_conv_is_exact(stride, padding, dilation, on_gpu_path):
    codes, scale, bias = _codes(5, 70, 3, 3), torch.rand(5) + 0.1, torch.randn(5)
    p = F.pack_ternary(codes, scale, bias)
    s = _spikes(2, 70, 6, 5)
    got = F.spike_ternary_conv2d(F.pack_spikes(s, dim=1), p, stride, padding, dilation)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, R.spike_ternary_conv2d(s, codes, scale, bias, stride, padding, dilation))


def _float_tol(x, codes, scale):
    """|y - y_ref| bound for a float32 ternary GEMM / conv against the float64 reference: the
    float32 sum of K terms errs by at most ~K ulps of the sum of |terms|."""
    k = codes[0].numel()
    return 4 * k * 2.0**-24 * (x.abs().max() * k * scale.max()).item() + 1e-6


def test_float_linear_forward_and_backward(on_gpu_path):
    codes, scale, bias = _codes(9, 130), torch.rand(9) + 0.1, torch.randn(9)
    p = F.pack_ternary(codes, scale, bias)
    x = torch.randn(2, 7, 130)
    xa, ba = x.clone().requires_grad_(), bias.clone().requires_grad_()
    y = OPS.ternary_linear(xa, p.words, p.scale, ba, 1)  # the op: F.ternary_linear runs torch on float32 CPU
    gy = torch.randn(y.shape)
    y.backward(gy)
    xr, br = x.double().requires_grad_(), bias.double().requires_grad_()
    ref = R.ternary_linear(xr, codes, scale.double(), br)
    ref.backward(gy.double())
    assert ((y.double() - ref).abs() <= _float_tol(x, codes, scale)).all()
    assert ((xa.grad.double() - xr.grad).abs() <= _float_tol(gy, codes.T, scale)).all()
    torch.testing.assert_close(ba.grad, br.grad.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), ((2, 1), (0, 1), (1, 2))])
def test_float_conv_forward_and_backward(stride, padding, dilation, on_gpu_path):
    """tna::ternary_conv2d's CUDA path (Triton decode + torch conv) and its input gradient
    (ternary_conv2d_grad_input, through the op's autograd), bias gradient included."""
    codes, scale, bias = _codes(4, 6, 3, 3), torch.rand(4) + 0.1, torch.randn(4)
    p = F.pack_ternary(codes, scale, bias)
    x = torch.randn(2, 6, 7, 6)
    xa, ba = x.clone().requires_grad_(), bias.clone().requires_grad_()
    s, pd, d = ops.ternary.conv_geometry(stride, padding, dilation)
    y = OPS.ternary_conv2d(xa, p.words, p.scale, ba, s, pd, d, 1)
    gy = torch.randn(y.shape)
    y.backward(gy)
    xr, br = x.double().requires_grad_(), bias.double().requires_grad_()
    ref = R.ternary_conv2d(xr, codes, scale.double(), br, stride, padding, dilation)
    ref.backward(gy.double())
    assert y.shape == ref.shape
    assert ((y.double() - ref).abs() <= _float_tol(x, codes, scale)).all()
    assert ((xa.grad.double() - xr.grad).abs() <= _float_tol(gy, codes, scale)).all()
    torch.testing.assert_close(ba.grad, br.grad.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("soft", [False, True])
def test_spike_conv_lif_matches_reference_and_the_fused_cpu_kernel(soft):
    """spike_ternary_conv2d_lif's CUDA composition (spike conv, then lif_pack) is bit-identical to
    the reference composition and to the fused C++ kernel."""
    T, B = 2, 2
    codes, scale, bias = _codes(70, 5, 3, 3), torch.rand(70) * 0.5 + 0.1, torch.randn(70) * 0.5
    p = F.pack_ternary(codes, scale, bias)
    s = _spikes(T * B, 5, 6, 6, density=0.5)
    bits = F.pack_spikes(s, dim=1)
    neuron = dict(tau=2.0, v_threshold=0.7, v_reset=None if soft else 0.0)
    cpu = F.spike_ternary_conv2d_lif(bits, p, T, 2, 1, **neuron)
    with routed():
        got = F.spike_ternary_conv2d_lif(bits, p, T, 2, 1, **neuron)
    current = R.spike_ternary_conv2d(s, codes, scale, bias, 2, 1).permute(0, 2, 3, 1)  # channels last
    current = current.unflatten(0, (T, B))
    spikes = R.lif(current, torch.zeros(current.shape[1:]), **neuron)[0]
    want = R.pack_spikes(spikes).flatten(0, 1)
    assert got.shape == (T * B, 3, 3, 2)
    assert torch.equal(got, want)
    assert torch.equal(got, cpu)


# (B, C, H, W, N, kernel, stride, padding, dilation): C = 70 spans two words (the last one masked)
GRAD_WEIGHT_CASES = {
    "3x3": (2, 70, 7, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1)),
    "stride 2": (2, 70, 7, 6, 5, (3, 3), (2, 2), (1, 1), (1, 1)),
    "padding 2 dilation 2": (2, 70, 7, 6, 5, (3, 3), (1, 1), (2, 2), (2, 2)),
    "2x3 mixed": (3, 6, 6, 7, 20, (2, 3), (2, 1), (0, 1), (1, 2)),
    "linear 1x1": (37, 70, 1, 1, 9, (1, 1), (1, 1), (0, 0), (1, 1)),
}


def _grad_weight_problem(case, dtype=torch.float32, layout="channels_last"):
    """(grad_y, spikes x, bits, C, geometry): grad_y in ``dtype`` and ``layout``: "channels_last"
    (the spike forward's output), "contiguous", or "strided" (every other channel of a wider
    tensor, channels last: no dimension has stride 1 in NCHW order but N)."""
    B, C, H, W, N, k, s, p, d = GRAD_WEIGHT_CASES[case]
    x = _spikes(B, C, H, W, density=0.3)
    oh, ow = ((n + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for n, kk, ss, pp, dd in zip((H, W), k, s, p, d, strict=True))
    if layout == "strided":
        gy = torch.randn(B, oh, ow, 2 * N).to(dtype)[..., ::2].permute(0, 3, 1, 2)
        assert not gy.is_contiguous() and not gy.is_contiguous(memory_format=torch.channels_last)
    else:
        gy = torch.randn(B, N, oh, ow).to(dtype)
        if layout == "channels_last":
            gy = gy.to(memory_format=torch.channels_last)
    return gy, x, F.pack_spikes(x, dim=1), C, [list(v) for v in (k, s, p, d)]


def _check_grad_weight(got, gy, x, C, geo):
    """got against the float64 reference. float32: |err| <= 4 M 2^-24 * sum |terms| (a float32 sum
    of M terms, any order); bf16 / fp16 output: one rounding of the float32 sum to the dtype on top
    (one ulp for bf16: the interpreter's float32 -> bf16 cast truncates, a GPU rounds to nearest)."""
    k, s, p, d = geo
    N = gy.shape[1]
    ref = torch.nn.grad.conv2d_weight(x.double(), (N, C, *k), gy.double(), s, p, d)
    mag = torch.nn.grad.conv2d_weight(x.double(), (N, C, *k), gy.double().abs(), s, p, d)
    M = gy.shape[0] * gy.shape[2] * gy.shape[3]
    bound = 4 * M * 2.0**-24 * mag + 1e-6
    if gy.dtype != torch.float32:
        bound = bound + ref.abs() * (2.0**-7 if gy.dtype == torch.bfloat16 else 2.0**-10)
    assert got.shape == (N, C, *k) and got.dtype == gy.dtype and got.is_contiguous()
    err = (got.double() - ref).abs()
    assert (err <= bound).all(), (err - bound).max()
    return ref


@pytest.mark.parametrize("case", sorted(GRAD_WEIGHT_CASES))
@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "strided"])
def test_spike_grad_weight_matches_reference(case, layout, on_gpu_path):
    """tna::spike_conv2d_grad_weight's CUDA path (the Triton GEMM on the bits) in float32 against
    the float64 reference, and against the C++ kernel (float32 sums in another order)."""
    gy, x, bits, C, geo = _grad_weight_problem(case, layout=layout)
    got = OPS.spike_conv2d_grad_weight(gy, bits, C, *geo)
    ref = _check_grad_weight(got, gy, x, C, geo)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    cpu = ops.spike_train._spike_conv2d_grad_weight_cpu  # the C++ op's implementation (the op is routed here)
    torch.testing.assert_close(got, cpu(gy, bits, C, *geo),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("case", ["stride 2", "linear 1x1"])
def test_spike_grad_weight_low_precision(dtype, case, on_gpu_path):
    """bf16 / fp16 grad_y: tensor-core dots in the dtype on a GPU (0/1 spikes are exact in it),
    float32 sums, one rounding to the dtype at the end. float64: summed in float32, as on the CPU."""
    gy, x, bits, C, geo = _grad_weight_problem(case, dtype)
    got = OPS.spike_conv2d_grad_weight(gy, bits, C, *geo)
    assert got.dtype == dtype
    if dtype == torch.float64:  # float32 sums of the float32-rounded grad_y
        got, gy = got.float(), gy.float()
    _check_grad_weight(got, gy, x, C, geo)


def test_spike_grad_weight_split_k(monkeypatch, on_gpu_path):
    """M cut into several splits (float32 workspace, then the fixed-order sum kernel): the same
    result as one split within float32 rounding, bit-identical from call to call, and each split's
    GEMM and the sum launched once."""
    from tna_kernels.triton import spike_train as tsp

    gy, x, bits, C, geo = _grad_weight_problem("3x3")  # M = 84 rows
    one = OPS.spike_conv2d_grad_weight(gy, bits, C, *geo)
    monkeypatch.setattr(tsp, "MIN_ROWS", 16)
    monkeypatch.setattr(tsp, "ROW_ALIGN", 16)  # >= BM of the interpreter's config
    M = gy.shape[0] * gy.shape[2] * gy.shape[3]
    assert tsp._split(M, 9 * 2, 5 * 70 * 9) == (3, 32)  # 84 rows = 32 + 32 + 20: the last split partial
    gemm32 = _LaunchCounter(tsp._spike_grad_weight_f32_kernel)
    gemm16 = _LaunchCounter(tsp._spike_grad_weight_kernel)
    total = _LaunchCounter(tsp._split_sum_kernel)
    monkeypatch.setattr(tsp, "_spike_grad_weight_f32_kernel", gemm32)
    monkeypatch.setattr(tsp, "_spike_grad_weight_kernel", gemm16)
    monkeypatch.setattr(tsp, "_split_sum_kernel", total)
    got = OPS.spike_conv2d_grad_weight(gy, bits, C, *geo)
    again = OPS.spike_conv2d_grad_weight(gy, bits, C, *geo)
    assert (gemm32.launches, gemm16.launches, total.launches) == (2, 0, 2)
    assert torch.equal(got, again)
    _check_grad_weight(got, gy, x, C, geo)
    torch.testing.assert_close(got, one, rtol=1e-5, atol=1e-5)
    bf = OPS.spike_conv2d_grad_weight(gy.bfloat16(), bits, C, *geo)  # the sum kernel casts to bf16
    assert (gemm32.launches, gemm16.launches, total.launches) == (2, 1, 3)
    _check_grad_weight(bf, gy.bfloat16(), x, C, geo)


def test_spike_grad_weight_split_policy():
    """Small layers (few output tiles) split M to fill the GPU; large ones do not; the workspace
    and the split count stay bounded; every split but the last is a whole number of BM steps."""
    from tna_kernels.triton import spike_train as tsp

    assert tsp._split(1000, 1, 640) == (1, 1024)  # M < MIN_ROWS: one split
    split, rows = tsp._split(1 << 20, 9, 64 * 64 * 9)  # a 64 -> 64 3x3 layer, M = 1M rows
    assert split > 8 and rows % tsp.ROW_ALIGN == 0 and (split - 1) * rows < 1 << 20 <= split * rows
    assert tsp._split(1 << 20, 8 * 9 * 8, 512 * 512 * 9)[0] == 2  # 576 tiles already: two splits
    assert tsp._split(1 << 30, 1, 10)[0] == tsp.MAX_SPLIT
    for L in (1 << 20, 1 << 24, 1 << 26):
        assert tsp._split(1 << 30, 1, L)[0] * L <= max(tsp.MAX_WORKSPACE, L)


def test_spike_grad_weight_through_the_spike_training_path():
    """The op where training calls it: the backward of spike_ternary_conv2d_ste(path="spike")."""
    x = _spikes(2, 70, 6, 5)
    w = torch.randn(5, 70, 3, 3) * 0.1
    gy = torch.randn(2, 5, 3, 3)
    grads = []
    for route in (contextlib.nullcontext, routed):
        wa = w.clone().requires_grad_()
        with route():
            y = F.spike_ternary_conv2d_ste(x, wa, None, 2, 1, path="spike")
            y.backward(gy)
        grads.append(wa.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("geometry", [([2, 2], [2, 2], [0, 0], [1, 1], False),
                                      ([3, 3], [2, 2], [1, 1], [1, 1], True)])
def test_spike_max_pool_matches_reference(geometry, on_gpu_path):
    x = _spikes(2, 3, 7, 6, density=0.4)
    xa = x.clone().requires_grad_()
    y, bits = OPS.spike_max_pool2d(xa, *geometry)
    gy = torch.randn(y.shape)
    y.backward(gy)
    y_ref, bits_ref = R.spike_max_pool2d(x, *geometry)
    assert torch.equal(y, y_ref) and torch.equal(bits, bits_ref)
    # the same torch max-pool backward on the same unpacked input: the same sums, bit for bit
    assert torch.equal(xa.grad, R.spike_max_pool2d_backward(gy, bits_ref, list(x.shape), *geometry))


@pytest.mark.parametrize("grad_output", [1.0, 2.0])
def test_twin_loss_matches_reference(grad_output, on_gpu_path):
    """C = 37 spans two of the interpreter's 32-wide blocks; one ignored row; label smoothing.
    grad_output 2 goes through tna::twin_loss_bwd (as every backward does on a GPU)."""
    a, b = torch.randn(5, 37) * 2, torch.randn(5, 37) * 2
    y = torch.tensor([3, -100, 0, 36, 7])
    kw = dict(mse_weight=0.1, label_smoothing=0.1)
    A, Bt = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss, parts = F.twin_loss(A, Bt, y, return_parts=True, **kw)
    (loss * grad_output).backward()
    Ar, Br = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss_ref, parts_ref = R.twin_loss(Ar, Br, y, **kw)
    (loss_ref * grad_output).backward()
    torch.testing.assert_close(loss, loss_ref, **TOL32)
    torch.testing.assert_close(parts, parts_ref, **TOL32)
    torch.testing.assert_close(A.grad, Ar.grad, **TOL32)
    torch.testing.assert_close(Bt.grad, Br.grad, **TOL32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_reference(dtype, on_gpu_path):
    """Half / bf16 storage (autocast training on a GPU feeds bf16 logits to the twin loss): LIF
    spikes exact (the membrane runs in float32 on both sides), gradients and the float ternary GEMM
    within the storage dtype's rounding; twin-loss values in float32, its gradients in the dtype."""
    low = dict(rtol=2**-7 if dtype == torch.bfloat16 else 2**-10, atol=1e-2 if dtype == torch.bfloat16 else 1e-3)
    x = _draw_lif_input((3, 70)).to(dtype)
    gs = torch.randn(3, 70).to(dtype)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    s = F.lif(xa)
    s.backward(gs)
    s_ref = R.lif(xr, torch.zeros(70))[0]
    s_ref.backward(gs)
    assert s.dtype == dtype and torch.equal(s, s_ref)
    torch.testing.assert_close(xa.grad, xr.grad, **low)

    codes, scale = _codes(5, 70), torch.rand(5) + 0.1
    p = F.pack_ternary(codes, scale)
    xl = torch.randn(4, 70).to(dtype)
    y = OPS.ternary_linear(xl, p.words, p.scale, None, 1)
    assert y.dtype == dtype
    torch.testing.assert_close(y, R.ternary_linear(xl, codes, scale), **low)

    a, b = (torch.randn(6, 37) * 2).to(dtype), (torch.randn(6, 37) * 2).to(dtype)
    y = torch.tensor([3, -100, 0, 36, 7, 1])
    A, Bt = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss = F.twin_loss(A, Bt, y, mse_weight=0.1)
    (loss * 2).backward()
    Ar, Br = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss_ref, _ = R.twin_loss(Ar, Br, y, mse_weight=0.1)
    (loss_ref * 2).backward()
    assert loss.dtype == torch.float32 and A.grad.dtype == dtype
    torch.testing.assert_close(loss, loss_ref, **TOL32)
    torch.testing.assert_close(A.grad, Ar.grad, **low)
    torch.testing.assert_close(Bt.grad, Br.grad, **low)


def test_non_contiguous_inputs_give_the_contiguous_results(on_gpu_path):
    """Strided inputs as the layers pass them (a static current expanded over T, slices, transposes,
    channels-last images): the routed kernels return what they return on contiguous copies."""
    hyper = (2.0, True, 1.0, 0.0, False, False, "atan", 2.0)
    x0 = torch.rand(2, 70) * 3
    x = x0.expand(3, 2, 70)  # stride 0 over time, as nn.bn_lif hands a static input to lif_fwd
    for got, want in zip(OPS.lif_fwd(x, None, *hyper, True), OPS.lif_fwd(x.contiguous(), None, *hyper, True),
                         strict=True):
        assert torch.equal(got, want)
    xs, gs = torch.rand(3, 140)[:, ::2] * 3, torch.randn(3, 140)[:, 1::2]  # every other neuron
    for got, want in zip(OPS.lif_bwd_recompute(gs, None, xs, None, *hyper),
                         OPS.lif_bwd_recompute(gs.contiguous(), None, xs.contiguous(), None, *hyper), strict=True):
        assert torch.equal(got, want)
    codes = _codes(5, 70)
    p = F.pack_ternary(codes, torch.rand(5) + 0.1, torch.randn(5))
    xt = torch.randn(70, 4).t()
    assert torch.equal(OPS.ternary_linear(xt, p.words, p.scale, p.bias, 1),
                       OPS.ternary_linear(xt.contiguous(), p.words, p.scale, p.bias, 1))
    s = _spikes(2, 70, 5, 6).to(memory_format=torch.channels_last)
    assert torch.equal(F.pack_spikes(s, dim=1), F.pack_spikes(s.contiguous(), dim=1))
    y, bits = OPS.spike_max_pool2d(s, [2, 2], [2, 2], [0, 0], [1, 1], False)
    y2, bits2 = OPS.spike_max_pool2d(s.contiguous(), [2, 2], [2, 2], [0, 0], [1, 1], False)
    assert torch.equal(y, y2) and torch.equal(bits, bits2)
    a, b = torch.randn(10, 6).t(), torch.randn(10, 6).t()
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    got = OPS.twin_loss_fwd(a, b, y, 1.0, 1.0, 0.1, 1, 0.0, -100, True, True)
    want = OPS.twin_loss_fwd(a.contiguous(), b.contiguous(), y, 1.0, 1.0, 0.1, 1, 0.0, -100, True, True)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


# ---- TNA training steps: the C++ path against the routed (GPU) path ----------------------------------

# Tiny nets (8x8 inputs, T = 2, B = 2, 4-16 channels) that still have every layer kind: a full-
# precision first conv on a static image, ternary convs on spikes (bit-packed for the weight
# gradient), BN + LIF fused in training, spike max-pooling (VGG), residual blocks with a
# strided 1x1 shortcut (ResNet), a ternary readout, and the twin loss.
TINY = {
    "vgg": dict(name="vgg", arch=[8, "M", 16, "M"], in_channels=1, num_classes=10, input_size=8, T=2,
                neuron=dict(v_threshold=0.5, v_reset=None, surrogate="sigmoid", alpha=4.0)),
    "resnet": dict(name="resnet", arch="resnet_tiny", width_mult=0.25, in_channels=3, num_classes=10,
                   input_size=8, T=2, neuron=dict(v_threshold=0.5)),
}
STEPS = 3


def _tna_steps(base, twin, batches):
    """STEPS TNA steps (both networks trained, SGD with momentum); per step: the spikes of every
    LIF of both networks, the logits, the loss and every parameter's gradient."""
    nets = (base, twin)
    params = [p for net in nets for p in net.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    spikes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: spikes.append(out.detach().clone()))
             for net in nets for m in net.modules() if isinstance(m, LIF)]
    steps = []
    try:
        for x, y in batches:
            spikes.clear()
            opt.zero_grad(set_to_none=True)
            logits = base(x), twin(x)
            loss = F.twin_loss(*logits, y, mse_weight=0.5)
            loss.backward()
            steps.append(dict(spikes=list(spikes), logits=[t.detach() for t in logits], loss=loss.detach(),
                              grads=[p.grad.clone() for p in params]))
            opt.step()
    finally:
        for h in hooks:
            h.remove()
    return steps


@pytest.mark.parametrize("arch", sorted(TINY))
def test_tna_training_steps_match_the_cpp_path(arch):
    """Spikes exact at every step. Losses, logits and gradients within rtol 1e-4, atol 1e-6: both
    paths run the same forward arithmetic up to the spikes (the Triton LIF forward is the C++ one,
    operation for operation) and the same torch conv / BN / linear, but the twin loss's logit
    gradients (another summation order) and the sigmoid surrogate's backward (tl.sigmoid against
    the C++ exp) round differently by float32 ulps, which the backward through BN and the convs
    carries into every parameter gradient and the optimiser into the next steps' weights. Seen:
    gradients <= 1.4e-6 relative to a tensor's largest entry and <= 2.1e-6 absolute, losses and
    logits within 2e-6. The bounds leave a margin of about 70x on the large entries; a wrong
    surrogate, reset or packed bit would change spikes or move gradients far beyond them."""
    cfg = TINY[arch]
    torch.manual_seed(0)
    base = build_model(cfg)
    twin = make_twin(base, seed=1)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(2, cfg["in_channels"], 8, 8, generator=g), torch.randint(0, 10, (2,), generator=g))
               for _ in range(STEPS)]
    nets = (copy.deepcopy(base), copy.deepcopy(twin))
    want = _tna_steps(base, twin, batches)
    with routed():
        got = _tna_steps(*nets, batches)
    for step, (w, o) in enumerate(zip(want, got, strict=True)):
        assert len(o["spikes"]) == len(w["spikes"]) > 0
        for i, (sw, so) in enumerate(zip(w["spikes"], o["spikes"], strict=True)):
            assert torch.equal(so, sw), f"step {step}: spikes of LIF call {i} differ"
        assert sum(float(s.mean()) for s in w["spikes"]) / len(w["spikes"]) > 0.05  # the neurons do fire
        torch.testing.assert_close(o["loss"], w["loss"], rtol=1e-4, atol=1e-6)
        for lo, lw in zip(o["logits"], w["logits"], strict=True):
            torch.testing.assert_close(lo, lw, rtol=1e-4, atol=1e-6)
        for i, (go, gw) in enumerate(zip(o["grads"], w["grads"], strict=True)):
            torch.testing.assert_close(go, gw, rtol=1e-4, atol=1e-6, msg=lambda m, i=i, s=step: f"step {s}, "
                                       f"parameter {i}: {m}")


# ---- bad input: refused on the host, as by the C++ op ------------------------------------------------

def _bad_inputs():
    """name -> (call, regex): arguments every C++ op refuses. The GPU path must refuse them too, before
    a launch, with an error naming the argument: a shape a kernel would trust (v0, grad_v_last, scale,
    bias, words per row, conv geometry) must never reach the device, where it reads or writes out of
    bounds (seen before these checks: heap corruption from lif_fwd with a short v0, a segfault from
    ternarize on a 1-D weight, silently wrong sums from spike_ternary_conv2d on bits packed for
    another channel count)."""
    x = torch.rand(3, 2, 5)
    hyper = (2.0, True, 1.0, 0.0, False, False, "atan", 2.0)
    h = R.lif(x, torch.zeros(2, 5))[2].detach()
    lin = F.pack_ternary(_codes(5, 70), torch.rand(5) + 0.1, torch.randn(5))
    conv = F.pack_ternary(_codes(4, 6, 3, 3), torch.rand(4) + 0.1, torch.randn(4))
    bits = F.pack_spikes(_spikes(4, 70))
    cbits = F.pack_spikes(_spikes(2, 6, 5, 5), dim=1)
    geo = ([1, 1], [1, 1], [1, 1])
    pool = ([2, 2], [2, 2], [0, 0], [1, 1], False)
    a, y = torch.randn(3, 10), torch.tensor([1, 1, 2])
    twin = (1.0, 1.0, 0.0, 1, 0.0, -100, True, True)
    xb = torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    mb, ib, wb = torch.zeros(3), torch.ones(3), torch.ones(3)
    op = OPS
    scale5, bias5 = r"scale must .*\[5\]", r"bias must .*\[5\]"
    scale4, bias4 = r"scale must .*\[4\]", r"bias must .*\[4\]"
    return {
        "lif_fwd int x": (lambda: op.lif_fwd(x.int(), None, *hyper, False), "x_seq must be a floating-point"),
        "lif_fwd v0 shape": (lambda: op.lif_fwd(x, torch.zeros(3), *hyper, False), "v0 must have shape"),
        "lif_fwd v0 dtype": (lambda: op.lif_fwd(x, torch.zeros(2, 5).double(), *hyper, False), "v0 must have dtype"),
        "lif_fwd T=0": (lambda: op.lif_fwd(torch.zeros(0, 5), None, *hyper, False), r"x_seq must be \[T, \.\.\.\]"),
        "lif_fwd tau=0": (lambda: op.lif_fwd(x, None, 0.0, *hyper[1:], False), "tau must be a finite number > 0"),
        "lif_fwd tau=nan": (lambda: op.lif_fwd(x, None, float("nan"), *hyper[1:], False), "tau must be a finite"),
        "lif_fwd surrogate": (lambda: op.lif_fwd(x, None, *hyper[:6], "bogus", 2.0, False), "surrogate must be one"),
        "lif_fwd alpha=0": (lambda: op.lif_fwd(x, None, *hyper[:7], 0.0, False), "alpha must be a finite number"),
        "lif_bwd grad_spikes shape": (lambda: op.lif_bwd(torch.randn(3, 2, 4), None, h, *hyper),
                                      "grad_spikes must have shape"),
        "lif_bwd h_seq dtype": (lambda: op.lif_bwd(torch.randn(3, 2, 5), None, h.double(), *hyper),
                                "h_seq must have dtype"),
        "lif_bwd grad_v_last shape": (lambda: op.lif_bwd(torch.randn(3, 2, 5), torch.zeros(5), h, *hyper),
                                      "grad_v_last must have shape"),
        "lif_bwd_recompute grad_spikes shape": (
            lambda: op.lif_bwd_recompute(torch.randn(3, 2, 4), None, x, None, *hyper), "grad_spikes must have shape"),
        "lif_bwd_recompute v0 shape": (
            lambda: op.lif_bwd_recompute(torch.randn(3, 2, 5), None, x, torch.zeros(5), *hyper), "v0 must have shape"),
        "lif_bwd_recompute grad_v_last shape": (
            lambda: op.lif_bwd_recompute(torch.randn(3, 2, 5), torch.zeros(5), x, None, *hyper),
            "grad_v_last must have shape"),
        "lif_pack float64": (lambda: op.lif_pack(x.double(), 2.0, True, 1.0, 0.0, False), "x_seq must be float32"),
        "lif_pack 1-D": (lambda: op.lif_pack(torch.rand(5), 2.0, True, 1.0, 0.0, False), r"x_seq must be \[T, "),
        "lif_pack tau=0": (lambda: op.lif_pack(x, 0.0, True, 1.0, 0.0, False), "tau must be a finite number > 0"),
        "pack_ternary int32": (lambda: op.pack_ternary(torch.zeros(3, 5, dtype=torch.int32)), "codes must be int8"),
        "pack_ternary bad code": (lambda: op.pack_ternary(torch.full((3, 5), 2, dtype=torch.int8)),
                                  r"codes must contain only -1, 0 and \+1"),
        "pack_ternary 0-d": (lambda: op.pack_ternary(torch.zeros((), dtype=torch.int8)),
                             r"codes must have shape \[\.\.\., K\] with K >= 1"),
        "pack_ternary K=0": (lambda: op.pack_ternary(torch.zeros(3, 0, dtype=torch.int8)),
                             r"codes must have shape \[\.\.\., K\] with K >= 1"),
        "unpack_ternary version": (lambda: op.unpack_ternary(lin.words, 70, 2), "version: .* v1 only, got v2"),
        "unpack_ternary K": (lambda: op.unpack_ternary(lin.words, 200, 1), "packed .*words per plane.*K = 200"),
        "unpack_ternary dtype": (lambda: op.unpack_ternary(lin.words.int(), 70, 1),
                                 "packed must be int64 packed ternary words"),
        "unpack_ternary K=0": (lambda: op.unpack_ternary(lin.words, 0, 1), "K must be >= 1"),
        "pack_spikes 0-d": (lambda: op.pack_spikes(torch.tensor(1.0)), "spikes must have at least one dimension"),
        "pack_spikes dim": (lambda: op.pack_spikes(torch.zeros(3, 4), 2), r"dim must be in \[-2, 1\], got 2"),
        "pack_spikes bad value": (lambda: op.pack_spikes(torch.full((3, 4), 0.5)), "spikes must contain only 0 and 1"),
        "pack_spikes empty axis": (lambda: op.pack_spikes(torch.zeros(3, 0)), "spikes must have a non-empty packing"),
        "pack_spikes complex": (lambda: op.pack_spikes(torch.zeros(3, 4, dtype=torch.complex64)),
                                "spikes must be a real or bool tensor"),
        "unpack_spikes K": (lambda: op.unpack_spikes(bits, 200), r"bits must .*\[\.\.\., 4\] for K = 200"),
        "unpack_spikes K=0": (lambda: op.unpack_spikes(bits, 0), "K must be >= 1"),
        "ternarize 1-D": (lambda: op.ternarize(torch.randn(5), "twn", True, True), r"w must have shape \[out_channels"),
        "ternarize int": (lambda: op.ternarize(torch.ones(5, 3, dtype=torch.int32), "twn", True, True),
                          "w must be a floating-point tensor"),
        "ternarize method": (lambda: op.ternarize(torch.randn(5, 3), "x", True, True), "method must be 'twn' or"),
        "ternarize empty": (lambda: op.ternarize(torch.randn(5, 0), "twn", True, True),
                            r"w must have shape \[out_channels"),
        "ternary_linear int x": (lambda: op.ternary_linear(torch.ones(3, 70, dtype=torch.int32), lin.words, lin.scale,
                                                          None, 1), "x must be a floating-point tensor"),
        "ternary_linear K": (lambda: op.ternary_linear(torch.randn(3, 60), lin.words, lin.scale, None, 1),
                             "packed_w has 2 words per plane but K = 60"),
        "ternary_linear scale shape": (lambda: op.ternary_linear(torch.randn(3, 70), lin.words, torch.ones(3), None, 1),
                                       scale5),
        "ternary_linear scale dtype": (lambda: op.ternary_linear(torch.randn(3, 70), lin.words, lin.scale.double(),
                                                                None, 1), "scale must be float32"),
        "ternary_linear bias shape": (lambda: op.ternary_linear(torch.randn(3, 70), lin.words, lin.scale, torch.ones(2),
                                                               1), bias5),
        "ternary_linear version": (lambda: op.ternary_linear(torch.randn(3, 70), lin.words, lin.scale, None, 2),
                                   "version: .* v1 only, got v2"),
        "ternary_linear words dtype": (lambda: op.ternary_linear(torch.randn(3, 70), lin.words.int(), lin.scale, None,
                                                                1), "packed_w must be int64 packed ternary words"),
        "ternary_linear_grad_input grad_y": (
            lambda: op.ternary_linear_grad_input(torch.randn(4, 10), lin.words, lin.scale, 70, 1),
            r"grad_y must have shape \[\.\.\., 5\]"),
        "ternary_linear_grad_input scale": (
            lambda: op.ternary_linear_grad_input(torch.randn(4, 5), lin.words, torch.ones(3), 70, 1), scale5),
        "ternary_linear_grad_input int": (
            lambda: op.ternary_linear_grad_input(torch.ones(4, 5, dtype=torch.int32), lin.words, lin.scale, 70, 1),
            "grad_y must be a floating-point tensor"),
        "spike_ternary_linear bits dtype": (
            lambda: op.spike_ternary_linear(bits.int(), lin.words, lin.scale, None, 70, 1),
            "spike_bits must be int64 packed spike words"),
        "spike_ternary_linear K": (lambda: op.spike_ternary_linear(bits, lin.words, lin.scale, None, 200, 1),
                                   "packed_w has 2 words per plane but K = 200"),
        "spike_ternary_linear scale": (lambda: op.spike_ternary_linear(bits, lin.words, torch.ones(3), None, 70, 1),
                                       scale5),
        "spike_ternary_linear bias": (lambda: op.spike_ternary_linear(bits, lin.words, lin.scale, torch.ones(9), 70, 1),
                                      bias5),
        "ternary_conv2d 3-D": (lambda: op.ternary_conv2d(torch.randn(6, 5, 5), conv.words, conv.scale, None, *geo, 1),
                               r"x must have shape \[B, C, H, W\]"),
        "ternary_conv2d scale": (lambda: op.ternary_conv2d(torch.randn(2, 6, 5, 5), conv.words, torch.ones(3), None,
                                                          *geo, 1), scale4),
        "ternary_conv2d bias": (lambda: op.ternary_conv2d(torch.randn(2, 6, 5, 5), conv.words, conv.scale,
                                                         torch.ones(3), *geo, 1), bias4),
        "ternary_conv2d stride": (lambda: op.ternary_conv2d(torch.randn(2, 6, 5, 5), conv.words, conv.scale, None,
                                                           [0, 1], [1, 1], [1, 1], 1), "stride must be two integers"),
        "ternary_conv2d int x": (lambda: op.ternary_conv2d(torch.ones(2, 6, 5, 5, dtype=torch.int32), conv.words,
                                                          conv.scale, None, *geo, 1), "x must be a floating-point"),
        "ternary_conv2d_grad_input grad_y": (
            lambda: op.ternary_conv2d_grad_input(torch.randn(2, 4, 4, 4), conv.words, conv.scale, [2, 6, 5, 5], *geo,
                                                1), r"grad_y must have shape \[2, 4, 5, 5\]"),
        "ternary_conv2d_grad_input C": (
            lambda: op.ternary_conv2d_grad_input(torch.randn(2, 4, 5, 5), conv.words, conv.scale, [2, 70, 5, 5], *geo,
                                                1), "packed_w has 1 words per plane but (the input has C|K) = 70"),
        "ternary_conv2d_grad_input scale": (
            lambda: op.ternary_conv2d_grad_input(torch.randn(2, 4, 5, 5), conv.words, torch.ones(3), [2, 6, 5, 5], *geo,
                                                1), scale4),
        "ternary_conv2d_grad_input version": (
            lambda: op.ternary_conv2d_grad_input(torch.randn(2, 4, 5, 5), conv.words, conv.scale, [2, 6, 5, 5], *geo,
                                                2), "version: .* v1 only, got v2"),
        "spike_ternary_conv2d C": (lambda: op.spike_ternary_conv2d(cbits, conv.words, conv.scale, None, 70, *geo, 1),
                                   "packed_w has 1 words per plane but (the input has C|K) = 70"),
        "spike_ternary_conv2d bits words": (
            lambda: op.spike_ternary_conv2d(torch.zeros(2, 5, 5, 2, dtype=torch.int64), conv.words, conv.scale, None, 6,
                                           *geo, 1), r"spike_bits must have shape \[B, H, W, 1\]"),
        "spike_ternary_conv2d bits dtype": (
            lambda: op.spike_ternary_conv2d(cbits.int(), conv.words, conv.scale, None, 6, *geo, 1),
            "spike_bits must be int64 packed spike words"),
        "spike_ternary_conv2d bits 3-D": (
            lambda: op.spike_ternary_conv2d(cbits[0], conv.words, conv.scale, None, 6, *geo, 1),
            r"spike_bits must have shape \[B, H, W, 1\]"),
        "spike_ternary_conv2d scale": (
            lambda: op.spike_ternary_conv2d(cbits, conv.words, torch.ones(3), None, 6, *geo, 1), scale4),
        "spike_ternary_conv2d bias": (
            lambda: op.spike_ternary_conv2d(cbits, conv.words, conv.scale, torch.ones(9), 6, *geo, 1), bias4),
        "spike_ternary_conv2d too small": (
            lambda: op.spike_ternary_conv2d(cbits, conv.words, conv.scale, None, 6, [1, 1], [0, 0], [3, 3], 1),
            "the input 5x5 is too small for kernel 3x3"),
        "spike_ternary_conv2d stride": (
            lambda: op.spike_ternary_conv2d(cbits, conv.words, conv.scale, None, 6, [0, 1], [1, 1], [1, 1], 1),
            "stride must be two integers >= 1"),
        "spike_ternary_conv2d padding": (
            lambda: op.spike_ternary_conv2d(cbits, conv.words, conv.scale, None, 6, [1, 1], [-1, 1], [1, 1], 1),
            "padding must be two integers >= 0"),
        "spike_ternary_conv2d_lif T": (
            lambda: op.spike_ternary_conv2d_lif(cbits, conv.words, conv.scale, None, 6, *geo, 1, 3, 2.0, True, 1.0, 0.0,
                                               False), "T must be >= 1 and divide the leading dimension"),
        "spike_ternary_conv2d_lif T=0": (
            lambda: op.spike_ternary_conv2d_lif(cbits, conv.words, conv.scale, None, 6, *geo, 1, 0, 2.0, True, 1.0, 0.0,
                                               False), "T must be >= 1 and divide the leading dimension"),
        "spike_ternary_conv2d_lif bits words": (
            lambda: op.spike_ternary_conv2d_lif(torch.zeros(2, 5, 5, 2, dtype=torch.int64), conv.words, conv.scale,
                                               None, 6, *geo, 1, 1, 2.0, True, 1.0, 0.0, False),
            r"spike_bits must have shape \[B, H, W, 1\]"),
        "spike_ternary_conv2d_lif tau=0": (
            lambda: op.spike_ternary_conv2d_lif(cbits, conv.words, conv.scale, None, 6, *geo, 1, 1, 0.0, True, 1.0, 0.0,
                                               False), "tau must be a finite number > 0"),
        "spike_conv2d_grad_weight bits dtype": (
            lambda: op.spike_conv2d_grad_weight(torch.randn(2, 4, 5, 5), cbits.int(), 6, [3, 3], *geo),
            "spike_bits must be int64 packed spike words"),
        "spike_conv2d_grad_weight C": (
            lambda: op.spike_conv2d_grad_weight(torch.randn(2, 4, 5, 5), cbits, 70, [3, 3], *geo),
            r"spike_bits must have shape \[B, H, W, 2\] \(C = 70"),
        "spike_conv2d_grad_weight grad_y shape": (
            lambda: op.spike_conv2d_grad_weight(torch.randn(2, 4, 4, 4), cbits, 6, [3, 3], *geo),
            r"grad_y must have shape \[2, N, 5, 5\]"),
        "spike_conv2d_grad_weight int grad_y": (
            lambda: op.spike_conv2d_grad_weight(torch.ones(2, 4, 5, 5, dtype=torch.int32), cbits, 6, [3, 3], *geo),
            "grad_y must be a floating-point tensor"),
        "spike_conv2d_grad_weight kernel_size": (
            lambda: op.spike_conv2d_grad_weight(torch.randn(2, 4, 5, 5), cbits, 6, [0, 3], *geo),
            r"kernel_size must be 2 values >= 1"),
        "spike_max_pool2d bad value": (lambda: op.spike_max_pool2d(torch.full((1, 2, 4, 4), 0.5), *pool),
                                       "spikes must contain only 0 and 1"),
        "spike_max_pool2d 3-D": (lambda: op.spike_max_pool2d(torch.zeros(2, 4, 4), *pool), r"x must be \[N, C, H, W\]"),
        "spike_max_pool2d int": (lambda: op.spike_max_pool2d(torch.zeros(1, 2, 4, 4, dtype=torch.int32), *pool),
                                 "x must be a floating-point tensor"),
        "spike_max_pool2d kernel_size": (
            lambda: op.spike_max_pool2d(torch.zeros(1, 2, 4, 4), [0, 2], [2, 2], [0, 0], [1, 1], False),
            "kernel_size values must be >= 1"),
        "spike_max_pool2d padding": (
            lambda: op.spike_max_pool2d(torch.zeros(1, 2, 4, 4), [2, 2], [2, 2], [2, 2], [1, 1], False),
            "padding must be at most half the kernel size"),
        "spike_max_pool2d_backward grad_y": (
            lambda: op.spike_max_pool2d_backward(torch.randn(1, 2, 3, 3), torch.zeros(1, 1, dtype=torch.int64),
                                                [1, 2, 4, 4], *pool), r"grad_y must have shape \[1, 2, 2, 2\]"),
        "spike_max_pool2d_backward bits shape": (
            lambda: op.spike_max_pool2d_backward(torch.randn(1, 2, 2, 2), torch.zeros(1, 3, dtype=torch.int64),
                                                [1, 2, 4, 4], *pool), r"bits must have shape \[1, 1\]"),
        "spike_max_pool2d_backward bits dtype": (
            lambda: op.spike_max_pool2d_backward(torch.randn(1, 2, 2, 2), torch.zeros(1, 1, dtype=torch.int32),
                                                [1, 2, 4, 4], *pool), "bits must be int64 packed spike words"),
        "spike_max_pool2d_backward input_size": (
            lambda: op.spike_max_pool2d_backward(torch.randn(1, 2, 2, 2), torch.zeros(1, 1, dtype=torch.int64),
                                                [1, 2, 4], *pool), r"input_size must be \[N, C, H, W\]"),
        "twin_loss_fwd target range": (lambda: op.twin_loss_fwd(a, a, torch.tensor([1, 10, 2]), *twin),
                                       r"target must hold class indices in \[0, 10\)"),
        "twin_loss_fwd logits_twin shape": (lambda: op.twin_loss_fwd(a, torch.randn(3, 9), y, *twin),
                                            "logits_twin must have shape"),
        "twin_loss_fwd target dtype": (lambda: op.twin_loss_fwd(a, a, y.int(), *twin),
                                       "target must (have dtype Long|be an int64 tensor)"),
        "twin_loss_fwd 1-D": (lambda: op.twin_loss_fwd(a[0], a[0], y[:1], *twin), "logits_base must be a 2-D"),
        "twin_loss_fwd mse_reduction": (lambda: op.twin_loss_fwd(a, a, y, 1.0, 1.0, 0.0, 7, 0.0, -100, True, True),
                                        "mse_reduction must be 0"),
        "twin_loss_fwd label_smoothing": (lambda: op.twin_loss_fwd(a, a, y, 1.0, 1.0, 0.0, 1, 2.0, -100, True, True),
                                          r"label_smoothing must be in \[0, 1\]"),
        "twin_loss_fwd ce_weight_base": (
            lambda: op.twin_loss_fwd(a, a, y, float("nan"), 1.0, 0.0, 1, 0.0, -100, True, True),
            "ce_weight_base must be finite"),
        "twin_loss_fwd int logits": (lambda: op.twin_loss_fwd(a.int(), a.int(), y, *twin),
                                     "logits_base must be (a floating-point|float32)"),
        "twin_loss_bwd grad_loss dim": (lambda: op.twin_loss_bwd(torch.ones(2), a, a), "grad_loss must be a 0-dim"),
        "twin_loss_bwd grad_twin dtype": (lambda: op.twin_loss_bwd(torch.tensor(1.0), a, a.double()),
                                          "grad_twin must have dtype"),
        "twin_loss_bwd grad_loss dtype": (lambda: op.twin_loss_bwd(torch.tensor(1.0).double(), a, a),
                                          "grad_loss must have dtype"),
        "batch_norm_lif_forward T": (lambda: op.batch_norm_lif_forward(xb, None, None, None, None, 0.1, 1e-5, 3,
                                                                       *hyper), r"x must have T\*B samples for T = 3"),
        "batch_norm_lif_forward 3-D x": (lambda: op.batch_norm_lif_forward(xb[:, :, 0], None, None, None, None, 0.1,
                                                                           1e-5, 2, *hyper), r"\[N, C, H, W\]"),
        "batch_norm_lif_forward double x": (lambda: op.batch_norm_lif_forward(xb.double(), None, None, None, None,
                                                                              0.1, 1e-5, 2, *hyper), "x must have dtype"),
        "batch_norm_lif_forward weight shape": (lambda: op.batch_norm_lif_forward(xb, wb[:2], None, None, None, 0.1,
                                                                                  1e-5, 2, *hyper),
                                                r"weight must have shape \[3\]"),
        "batch_norm_lif_forward running_var shape": (
            lambda: op.batch_norm_lif_forward(xb, None, None, torch.zeros(3), torch.ones(4), 0.1, 1e-5, 2, *hyper),
            r"running_var must have shape \[3\]"),
        "batch_norm_lif_forward one value": (
            lambda: op.batch_norm_lif_forward(torch.randn(1, 3, 1, 1), None, None, None, None, 0.1, 1e-5, 1, *hyper),
            "more than one value per channel"),
        "batch_norm_lif_forward surrogate": (
            lambda: op.batch_norm_lif_forward(xb, None, None, None, None, 0.1, 1e-5, 2, *hyper[:6], "bogus", 2.0),
            "surrogate must be one of"),
        "batch_norm_lif_forward tau=0": (
            lambda: op.batch_norm_lif_forward(xb, None, None, None, None, 0.1, 1e-5, 2, 0.0, *hyper[1:]), "tau must"),
        "batch_norm_lif_backward grad shape": (
            lambda: op.batch_norm_lif_backward(torch.randn(4, 3, 5, 4), xb, mb, ib, None, None, 2, *hyper,
                                               [True] * 3), r"grad_spikes must have x's shape"),
        "batch_norm_lif_backward invstd shape": (
            lambda: op.batch_norm_lif_backward(torch.randn(xb.shape), xb, mb, ib[:2], None, None, 2, *hyper,
                                               [True] * 3), r"invstd must have shape \[3\]"),
    }


BAD_INPUTS = _bad_inputs()
ERRORS = (RuntimeError, ValueError, TypeError)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_on_the_host_like_the_cpu_op(case):
    call, match = BAD_INPUTS[case]
    with pytest.raises(ERRORS, match=match):  # the C++ op: what the message must say
        call()
    with routed(), pytest.raises(ERRORS, match=match):
        call()


@pytest.mark.parametrize("arch", sorted(TINY))
def test_packed_inference_matches_the_cpp_path(arch):
    """model.pack() (bit-packed spikes between layers: spike_ternary_conv2d_lif, lif_pack,
    spike_ternary_conv2d, pack/unpack, the packed ternary readout) on both paths: every packed
    layer's output bits exact; logits within float32 rounding (the readout's float x ternary GEMM
    sums in another order in Triton's tl.dot)."""
    cfg = TINY[arch]
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative averages: the running statistics are the batches' own
    with torch.no_grad():  # batch-norm running statistics from two batches (C++ path)
        for _ in range(2):
            model(torch.rand(4, cfg["in_channels"], 8, 8, generator=g))
    packed = model.eval().pack()
    x = torch.rand(2, cfg["in_channels"], 8, 8, generator=g)

    def run():
        bits = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: bits.append(out.clone()))
                 for m in packed.modules() if isinstance(m, PackedLIFConv2d)]
        try:
            with torch.no_grad():
                return packed(x), bits
        finally:
            for h in hooks:
                h.remove()

    want, want_bits = run()
    with routed():
        got, got_bits = run()
    assert len(got_bits) == len(want_bits) > 0
    for i, (bo, bw) in enumerate(zip(got_bits, want_bits, strict=True)):
        assert torch.equal(bo, bw), f"packed layer {i}"
    assert any(bool(b.any()) for b in want_bits)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
