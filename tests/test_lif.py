"""Fused multi-step LIF: every backend against tna_kernels.reference.lif."""

import itertools

import pytest
import torch

from tna_kernels import functional as F
from tna_kernels import nn as tnn
from tna_kernels import reference
from tna_kernels._utils import state_dtype
from tna_kernels._utils import triton_test_device as triton_device

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
}
SURROGATES = reference.SURROGATES


def draw_input(shape, dtype, *, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0,
               v0=None, margin=1e-3):
    """Random currents nudged so that no pre-spike membrane lies within `margin` of the threshold
    (in exact arithmetic): a tie could flip a spike between float32 and float64, and one flipped
    spike changes the rest of the trajectory. Also returns the fp64 membranes for inspection."""
    x = (torch.randn(shape, dtype=torch.float64) * 1.5 + 0.6).to(dtype)
    vr = 0.0 if v_reset is None else v_reset
    v = torch.full(shape[1:], vr, dtype=torch.float64) if v0 is None else v0.double()
    for t in range(shape[0]):
        for _ in range(8):
            xt = x[t].double()
            h = v + (xt - (v - vr)) / tau if decay_input else v - (v - vr) / tau + xt
            close = (h - v_threshold).abs() < margin
            if not close.any():
                break
            x[t] = torch.where(close, (xt + 0.1).to(dtype), x[t])
        assert not close.any(), "could not draw an input away from the threshold"
        s = (h >= v_threshold).double()
        v = h - v_threshold * s if v_reset is None else h * (1 - s) + v_reset * s
    return x


def run_both(x, v0, grad_s, grad_v, **kw):
    """Forward + backward through the fused op and through the reference, same inputs."""
    xa, va = x.clone().requires_grad_(), v0.clone().requires_grad_()
    s, v_last = F.lif(xa, va, return_v=True, **kw)
    gx, gv = torch.autograd.grad((s, v_last), (xa, va), (grad_s, grad_v))
    xb, vb = x.clone().requires_grad_(), v0.clone().requires_grad_()
    ref_kw = {k: val for k, val in kw.items()}
    s_ref, v_ref, _ = reference.lif(xb, vb, **ref_kw)
    gx_ref, gv_ref = torch.autograd.grad((s_ref, v_ref), (xb, vb), (grad_s, grad_v))
    return (s, v_last, gx, gv), (s_ref, v_ref, gx_ref, gv_ref)


def assert_lif_close(got, want, dtype):
    s, v_last, gx, gv = got
    s_ref, v_ref, gx_ref, gv_ref = want
    assert torch.equal(s, s_ref), "spikes differ"
    assert s.dtype == dtype and v_last.dtype == state_dtype(dtype) and gx.dtype == dtype
    torch.testing.assert_close(v_last, v_ref, **TOL[state_dtype(dtype)])
    torch.testing.assert_close(gx, gx_ref, **TOL[dtype])
    torch.testing.assert_close(gv, gv_ref, **TOL[state_dtype(dtype)])


def make_case(shape, dtype, v_reset, decay_input, tau=2.0):
    acc = state_dtype(dtype)
    v0 = (torch.rand(shape[1:], dtype=torch.float64) * 0.8).to(acc)
    x = draw_input(shape, dtype, tau=tau, decay_input=decay_input, v_reset=v_reset, v0=v0)
    grad_s = torch.randn(shape, dtype=torch.float64).to(dtype)
    grad_v = torch.randn(shape[1:], dtype=torch.float64).to(acc)
    return x, v0, grad_s, grad_v


GRID = list(itertools.product(SURROGATES, [0.0, -0.25, None], [False, True], [True, False]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("surrogate,v_reset,detach_reset,decay_input", GRID)
def test_matches_reference(dtype, surrogate, v_reset, detach_reset, decay_input):
    shape = (5, 3, 37)
    x, v0, gs, gv = make_case(shape, dtype, v_reset, decay_input)
    kw = dict(tau=2.0, decay_input=decay_input, v_threshold=1.0, v_reset=v_reset,
              detach_reset=detach_reset, surrogate=surrogate, alpha=2.5)
    got, want = run_both(x, v0, gs, gv, **kw)
    assert_lif_close(got, want, dtype)


# The last three stream their stores; float32 runs the tile kernels (csrc/cpu/lif_tiles.h) on AVX2
# CPUs where T is short enough, with the block kernels for the last N % 64 neurons.
@pytest.mark.parametrize("shape", [(1, 4100), (64, 700), (3, 2, 3, 17, 19), (4, 9001), (2, 1),
                                   (12, 4104), (2, 1_048_579), (2, 1_048_600), (4, 1_048_576)])
def test_sizes_spanning_threads_and_blocks(shape):
    x, v0, gs, gv = make_case(shape, torch.float32, 0.0, True, tau=1.7)
    got, want = run_both(x, v0, gs, gv, tau=1.7)
    assert_lif_close(got, want, torch.float32)


_TILES_VS_BLOCKS = r"""
import sys, torch
torch.manual_seed(0)
ops, out = torch.ops.tna, {}
import tna_kernels  # noqa: F401  (registers the ops)
SURROGATES = ["atan", "sigmoid", "fast_sigmoid", "triangle", "rectangle"]
# (T, N): tiles and a tail, one tile, a tail only, T = 7 (the longest tile backward), T = 16 (tile
# forward, block backward), streamed rows with and without a tail
shapes = [(4, 64 * 3 + 5), (5, 64), (1, 63), (7, 200), (16, 130), (3, 1 << 20), (2, (1 << 20) + 24)]
for T, N in shapes:
    x = torch.randn(T, N, dtype=torch.float64).mul(1.5).add(0.6).float()
    gs = torch.randn(T, N)
    v0, gv = torch.rand(N) * 0.8, torch.randn(N)
    combos = [(s, soft, det, dec) for s in SURROGATES for soft in (False, True)
              for det in (False, True) for dec in (True, False)]
    if N > 100_000:
        combos = combos[::7]
    for sur, soft, det, dec in combos:
        hyper = (1.7, dec, 1.0, 0.0 if soft else -0.25, soft, det, sur, 2.5)
        for v0_, gv_ in ((None, None), (v0, gv)):
            key = (T, N, sur, soft, det, dec, v0_ is None)
            out[key + ("fwd",)] = ops.lif_fwd(x, v0_, *hyper, True)
            out[key + ("bwd",)] = ops.lif_bwd_recompute(gs, gv_, x, v0_, *hyper)
torch.save(out, sys.argv[1])
"""


def test_tile_kernels_give_the_block_kernels_bits(tmp_path):
    """Float32 on AVX2 CPUs takes the tile kernels (csrc/cpu/lif_tiles.h) for short sequences;
    TNA_LIF_TILES=0 sends everything through the block kernels. Both paths run the same step code
    (csrc/cpu/lif_step.h) on vectors or single lanes, so every output must agree bit for bit: spikes,
    membranes, saved h, gradients, over every surrogate, reset mode, detach and decay_input."""
    import os
    import subprocess
    import sys

    results = []
    for tiles in ("1", "0"):
        path = tmp_path / f"tiles_{tiles}.pt"
        env = {**os.environ, "TNA_LIF_TILES": tiles}
        run = subprocess.run([sys.executable, "-c", _TILES_VS_BLOCKS, str(path)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        results.append(torch.load(path))
    tiles, blocks = results
    assert tiles.keys() == blocks.keys()
    for key, got in tiles.items():
        for a, b in zip(got, blocks[key], strict=True):
            assert torch.equal(a, b), key


def test_streaming_path_bfloat16_odd_rows():
    shape = (2, 2_097_153)  # rows start at odd offsets: exercises the unaligned store head/tail
    x, v0, gs, gv = make_case(shape, torch.bfloat16, None, False)
    got, want = run_both(x, v0, gs, gv, v_reset=None, decay_input=False)
    assert_lif_close(got, want, torch.bfloat16)


@pytest.mark.parametrize("view", ["transpose", "stride2", "expanded"])
def test_non_contiguous_input(view):
    base = draw_input((6, 40, 30), torch.float32)
    x = {"transpose": base.transpose(1, 2), "stride2": base[:, :, ::2],
         "expanded": base[:, :1, :].expand(6, 5, 30)}[view]
    assert not x.is_contiguous()
    before = x.clone()
    s = F.lif(x)
    s_ref, _, _ = reference.lif(x, torch.zeros(x.shape[1:]))
    assert torch.equal(s, s_ref)
    assert torch.equal(x, before)


@pytest.mark.parametrize("soft", [False, True])
def test_input_repeated_over_time_is_read_in_place(soft):
    """x.expand(T, ...) (stride 0 along T, a static first-layer current): read without a T-fold
    copy; spikes, final membrane and gradients equal those of the materialised input."""
    v_reset = None if soft else 0.0
    base = draw_input((3, 7, 11), torch.float32)
    a = base.clone().requires_grad_()
    b = base.clone().requires_grad_()
    x_rep = a.unsqueeze(0).expand(5, *base.shape)
    assert x_rep.stride(0) == 0
    s1, v1 = F.lif(x_rep, v_reset=v_reset, return_v=True)
    s2, v2 = F.lif(b.unsqueeze(0).expand(5, *base.shape).contiguous(), v_reset=v_reset, return_v=True)
    assert s1.is_contiguous() and torch.equal(s1, s2) and torch.equal(v1, v2)
    assert 0 < s1.mean() < 1
    g = torch.randn_like(s1)
    (s1 * g).sum().backward()
    (s2 * g).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-7)


def test_backward_saves_one_tensor_and_inference_saves_none():
    x = draw_input((8, 64), torch.float32).requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        s = F.lif(x, surrogate="sigmoid")
    # only one [T, ...] tensor: on the CPU the input itself (backward recomputes the membrane)
    assert len(saved) == 1 and saved[0].shape == x.shape
    s.sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        s2, _, h = torch.ops.tna.lif_fwd(x, torch.zeros(64), 2.0, True, 1.0, 0.0, False, False,
                                         "atan", 2.0, False)
    assert h.numel() == 0 and torch.equal(s2, s.detach())
    with torch.no_grad():
        assert F.lif(x).grad_fn is None


def test_beta_parameterisation_equals_paper_recurrence():
    """u[t] = beta*u[t-1]*(1 - s[t-1]) + I[t], s[t] = u[t] >= theta, hard reset to 0."""
    beta, theta = 0.8, 1.0
    T, n = 16, 500
    current = torch.rand(T, n, dtype=torch.float64) * 0.6
    u = torch.zeros(n, dtype=torch.float64)
    s_prev = torch.zeros(n, dtype=torch.float64)
    spikes, membranes = [], []
    for t in range(T):
        u = beta * u * (1 - s_prev) + current[t]
        s_prev = (u >= theta).double()
        spikes.append(s_prev)
        membranes.append(u)
    paper = torch.stack(spikes)
    keep = (torch.stack(membranes) - theta).abs().amin(0) > 1e-9  # neurons with no exact tie
    ours = F.lif(current, beta=beta, v_threshold=theta, v_reset=0.0)
    assert keep.float().mean() > 0.99
    assert torch.equal(ours[:, keep], paper[:, keep])
    assert paper.sum() > 0.1 * paper.numel()  # the comparison really exercises spikes and resets
    with pytest.raises(ValueError, match="beta"):
        F.lif(current, beta=0.5, tau=3.0)
    with pytest.raises(ValueError, match="beta"):
        F.lif(current, beta=1.0)


@pytest.mark.parametrize("v_reset", [0.0, None])
def test_streaming_in_chunks_equals_one_call(v_reset):
    x = draw_input((12, 300), torch.float32, v_reset=v_reset)
    s_all, v_all = F.lif(x, v_reset=v_reset, return_v=True)
    v, parts = None, []
    for chunk in x.split([5, 1, 6]):
        s, v = F.lif(chunk, v, v_reset=v_reset, return_v=True)
        parts.append(s)
    assert torch.equal(torch.cat(parts), s_all)
    assert torch.equal(v, v_all)


def _samples():
    x = draw_input((4, 3, 5), torch.float32)
    v0 = torch.rand(3, 5)
    out = []
    for save_h, soft in [(True, False), (False, True)]:
        out.append((x.clone().requires_grad_(save_h), v0.clone(), 2.0, True, 1.0, 0.0, soft, False,
                    "atan", 2.0, save_h))
    return out


def test_opcheck_lif_fwd():
    for args in _samples():
        torch.library.opcheck(torch.ops.tna.lif_fwd.default, args)


def test_opcheck_lif_bwd():
    x = draw_input((4, 7), torch.float32)
    _, _, h = torch.ops.tna.lif_fwd(x, torch.zeros(7), 2.0, True, 1.0, 0.0, False, False, "atan",
                                     2.0, True)
    for sur, detach in [("atan", False), ("triangle", True)]:
        args = (torch.randn(4, 7), torch.randn(7), h, 2.0, True, 1.0, 0.0, False, detach, sur, 2.0)
        torch.library.opcheck(torch.ops.tna.lif_bwd.default, args)


HYPER = (2.0, True, 1.0, 0.0, False, False, "atan", 2.0)


def _hyper(surrogate="atan", soft=False, detach=False, decay_input=True, tau=2.0, v_reset=-0.25):
    return (tau, decay_input, 1.0, 0.0 if soft else v_reset, soft, detach, surrogate, 2.0)


# (T, N): one block, several blocks per worker with a short last block, T large enough to shrink
# the recompute block (T * block <= 16 Ki floats, at most 512 neurons), and one over the
# streaming-store threshold.
@pytest.mark.parametrize("T,N", [(1, 5), (3, 1025), (4, 5000), (64, 700), (17, 2100), (4, 600_000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_recompute_backward_equals_backward_from_saved_membrane(T, N, dtype):
    """lif_bwd_recompute (what autograd uses on the CPU) must give exactly what lif_bwd gives on
    the membrane the forward saved: same spikes, so the same surrogate and reset terms."""
    acc = state_dtype(dtype)
    x = (torch.randn(T, N, dtype=torch.float64) * 1.5 + 0.6).to(dtype)
    gs = torch.randn(T, N, dtype=torch.float64).to(dtype)
    for surrogate, soft, detach in [("atan", False, False), ("sigmoid", True, False),
                                    ("triangle", False, True)]:
        hyper = _hyper(surrogate, soft, detach)
        for v0, gv in [(None, None), ((torch.rand(N, dtype=torch.float64) * 0.8).to(acc),
                                      torch.randn(N, dtype=torch.float64).to(acc))]:
            h = torch.ops.tna.lif_fwd(x, v0, *hyper, True)[2]
            gx_want, gv0_want = torch.ops.tna.lif_bwd(gs, gv, h, *hyper)
            gx, gv0 = torch.ops.tna.lif_bwd_recompute(gs, gv, x, v0, *hyper)
            assert torch.equal(gx, gx_want), (surrogate, soft, detach, v0 is None)
            if v0 is None:
                assert gv0.numel() == 0  # a constant start has no gradient to return
            else:
                assert torch.equal(gv0, gv0_want)


def test_sigmoid_surrogate_over_the_whole_float_range():
    """The float32 sigmoid surrogate uses a vectorised exp (csrc/cpu/fast_exp.h, clamped to
    [-88, 88]): gradients match the reference from tiny to huge arguments, never inf or nan."""
    h = torch.cat([torch.linspace(-60, 60, 4001), torch.tensor([-1e30, -500.0, 500.0, 1e30])])
    x = h.reshape(1, -1)  # v0 = v_reset = 0, T = 1, decay_input=False: h = x
    kw = dict(tau=2.0, decay_input=False, surrogate="sigmoid", alpha=4.0)
    xa = x.clone().requires_grad_()
    F.lif(xa, **kw).sum().backward()
    xb = x.clone().requires_grad_()
    reference.lif(xb, torch.zeros(x.shape[1:]), **kw)[0].sum().backward()
    assert torch.isfinite(xa.grad).all()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("view", ["expanded", "transpose", "neuron_slice"])
def test_lif_ops_read_strided_input(view):
    """Rows read in place (a step-0 expand, a slice of neurons: each step contiguous) or copied
    (a transpose) give what the contiguous tensor gives, forward and recompute backward."""
    base = draw_input((3, 40, 33), torch.float32)
    if view == "expanded":
        x = base[:1].expand(5, 40, 33)
    elif view == "transpose":
        x = base.transpose(1, 2)
    else:
        x = base.reshape(3, -1)[:, 100:1100]
    gs_base = torch.randn(3 if view != "expanded" else 5, 2000)
    gs = gs_base[:, 500:500 + x[0].numel()].reshape(x.shape) if view == "neuron_slice" else torch.randn(x.shape)
    got = torch.ops.tna.lif_bwd_recompute(gs, None, x, None, *HYPER)[0]
    want = torch.ops.tna.lif_bwd_recompute(gs.contiguous(), None, x.contiguous(), None, *HYPER)[0]
    assert torch.equal(got, want)
    assert torch.equal(torch.ops.tna.lif_fwd(x, None, *HYPER, True)[2],
                       torch.ops.tna.lif_fwd(x.contiguous(), None, *HYPER, True)[2])


def test_in_place_edit_of_the_input_after_forward_is_caught():
    """The CPU backward reads x_seq again: editing it in place before backward must raise (autograd's
    version counter), never give silently wrong gradients."""
    x = draw_input((4, 64), torch.float32).requires_grad_()
    y = x * 1.0
    s = F.lif(y)
    with torch.no_grad():
        y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        s.sum().backward()


def test_opcheck_lif_bwd_recompute():
    x = draw_input((4, 7), torch.float32)
    for sur, detach, v0 in [("atan", False, None), ("triangle", True, torch.rand(7))]:
        args = (torch.randn(4, 7), torch.randn(7), x, v0, 2.0, True, 1.0, 0.0, False, detach, sur, 2.0)
        torch.library.opcheck(torch.ops.tna.lif_bwd_recompute.default, args)


def test_recompute_errors_name_the_argument():
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="grad_spikes must have shape"):
        torch.ops.tna.lif_bwd_recompute(torch.randn(3, 5), None, x, None, *HYPER)
    with pytest.raises(RuntimeError, match="grad_spikes must have dtype"):
        torch.ops.tna.lif_bwd_recompute(x.double(), None, x, None, *HYPER)
    with pytest.raises(RuntimeError, match="v0 must have shape"):
        torch.ops.tna.lif_bwd_recompute(x, None, x, torch.zeros(5), *HYPER)
    with pytest.raises(RuntimeError, match="grad_v_last must have dtype"):
        torch.ops.tna.lif_bwd_recompute(x, torch.zeros(4, dtype=torch.float64), x, None, *HYPER)


def test_torch_compile_fullgraph():
    def step(x, w):
        return F.lif(x * w, surrogate="sigmoid", alpha=4.0).mean(0)

    compiled = torch.compile(step, fullgraph=True)
    x = draw_input((4, 2, 16), torch.float32)
    w = torch.ones(16, requires_grad=True)
    out = compiled(x, w)
    out.sum().backward()
    w_eager = torch.ones(16, requires_grad=True)
    ref = step(x, w_eager)
    ref.sum().backward()
    assert torch.equal(out, ref)
    torch.testing.assert_close(w.grad, w_eager.grad)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda x: F.lif(x.to(torch.int32)), TypeError, "x_seq must be a floating-point"),
        (lambda x: F.lif(x, torch.zeros(3)), ValueError, "v0 must have shape"),
        (lambda x: F.lif(x[:0]), ValueError, "T >= 1"),
        (lambda x: F.lif(x, tau=0.0), ValueError, "tau must be"),
        (lambda x: F.lif(x, tau=-2.0), ValueError, "tau must be"),
        (lambda x: F.lif(x, surrogate="relu"), ValueError, "surrogate must be one of"),
        (lambda x: F.lif(x, alpha=0.0), ValueError, "alpha must be"),
        (lambda x: F.lif(x, v_reset=float("nan")), ValueError, "v_reset"),
    ],
)
def test_bad_input_raises_and_leaves_input_alone(call, exc, match):
    x = torch.randn(4, 2, 5)
    before = x.clone()
    with pytest.raises(exc, match=match):
        call(x)
    assert torch.equal(x, before)


def test_cpp_boundary_errors_name_the_argument():
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="v0 must have dtype"):
        torch.ops.tna.lif_fwd(x, torch.zeros(4, dtype=torch.float64), 2.0, True, 1.0, 0.0, False,
                              False, "atan", 2.0, False)
    with pytest.raises(RuntimeError, match="surrogate must be one of"):
        torch.ops.tna.lif_bwd(x, torch.zeros(4), x, 2.0, True, 1.0, 0.0, False, False, "nope", 2.0)
    with pytest.raises(RuntimeError, match="h_seq"):
        torch.ops.tna.lif_bwd(x, torch.zeros(4), torch.empty(0), 2.0, True, 1.0, 0.0, False, False,
                              "atan", 2.0)


def test_module_is_stateless_and_streams():
    lif = tnn.LIF(tau=3.0, v_reset=None, surrogate="triangle", alpha=1.5)
    assert "tau=3.0" in repr(lif) and "surrogate='triangle'" in repr(lif)
    assert len(lif.state_dict()) == 0
    x = draw_input((6, 4, 10), torch.float32, tau=3.0, v_reset=None)
    assert torch.equal(lif(x), lif(x))
    streaming = tnn.LIF(tau=3.0, v_reset=None, return_v=True)
    s1, v = streaming(x[:3])
    s2, _ = streaming(x[3:], v)
    assert torch.equal(torch.cat([s1, s2]), lif(x))
    with pytest.raises(ValueError, match="surrogate"):
        tnn.LIF(surrogate="bogus")


# ---- Triton lane (TRITON_INTERPRET=1 on CPU, or a GPU) ----------------------------------------

@pytest.mark.triton
@pytest.mark.parametrize("surrogate,v_reset,detach_reset,decay_input",
                         list(itertools.product(SURROGATES, [0.0, None], [False, True], [True, False])))
def test_triton_matches_reference(surrogate, v_reset, detach_reset, decay_input):
    from tna_kernels.triton import lif as tl_lif

    dev = triton_device()
    shape = (3, 2, 70)  # 140 neurons: three 64-wide blocks, the last one masked
    x, v0, gs, gv = make_case(shape, torch.float32, v_reset, decay_input)
    hyper = (2.0, decay_input, 1.0, 0.0 if v_reset is None else v_reset, v_reset is None,
             detach_reset, surrogate, 2.5)
    s, v_last, h = tl_lif.lif_fwd(x.to(dev), v0.to(dev), *hyper, True)
    gx, gv0 = tl_lif.lif_bwd(gs.to(dev), gv.to(dev), h, *hyper[:-3], detach_reset, surrogate, 2.5)
    kw = dict(tau=2.0, decay_input=decay_input, v_reset=v_reset, detach_reset=detach_reset,
              surrogate=surrogate, alpha=2.5)
    _, want = run_both(x, v0, gs, gv, **kw)
    assert_lif_close((s.cpu(), v_last.cpu(), gx.cpu(), gv0.cpu()), want, torch.float32)


@pytest.mark.triton
@pytest.mark.parametrize("with_v0", [False, True])
def test_triton_recompute_backward_matches_cpu(with_v0):
    from tna_kernels.triton import lif as tl_lif

    dev = triton_device()
    x, v0, gs, gv = make_case((3, 140), torch.float32, -0.25, True)
    v0 = v0 if with_v0 else None
    hyper = _hyper("sigmoid")
    gx, gv0 = tl_lif.lif_bwd_recompute(gs.to(dev), gv.to(dev), x.to(dev),
                                       None if v0 is None else v0.to(dev), *hyper)
    want_gx, want_gv0 = torch.ops.tna.lif_bwd_recompute(gs, gv, x, v0, *hyper)
    torch.testing.assert_close(gx.cpu(), want_gx, **TOL[torch.float32])
    assert gv0.shape == want_gv0.shape
    torch.testing.assert_close(gv0.cpu(), want_gv0, **TOL[torch.float32])


@pytest.mark.triton
@pytest.mark.parametrize("v_reset", [-0.25, None])
def test_triton_without_state_matches_cpu(v_reset):
    """No v0 and no grad_v_last: the kernels start from the reset value and a zero carry themselves
    (no filled tensors), as the C++ op does."""
    from tna_kernels.triton import lif as tl_lif

    dev = triton_device()
    x, _, gs, _ = make_case((3, 140), torch.float32, v_reset, True)
    hyper = (2.0, True, 1.0, 0.0 if v_reset is None else v_reset, v_reset is None, False, "atan", 2.0)
    s, v_last, h = tl_lif.lif_fwd(x.to(dev), None, *hyper, True)
    want_s, want_v, want_h = torch.ops.tna.lif_fwd(x, None, *hyper, True)
    assert torch.equal(s.cpu(), want_s)
    torch.testing.assert_close(v_last.cpu(), want_v, **TOL[torch.float32])
    torch.testing.assert_close(h.cpu(), want_h, **TOL[torch.float32])
    gx, gv0 = tl_lif.lif_bwd(gs.to(dev), None, h, *hyper)
    want_gx, want_gv0 = torch.ops.tna.lif_bwd(gs, None, want_h, *hyper)
    torch.testing.assert_close(gx.cpu(), want_gx, **TOL[torch.float32])
    torch.testing.assert_close(gv0.cpu(), want_gv0, **TOL[torch.float32])


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision(dtype):
    from tna_kernels.triton import lif as tl_lif

    dev = triton_device()
    x, v0, gs, gv = make_case((4, 90), dtype, 0.0, True)
    hyper = (2.0, True, 1.0, 0.0, False, False, "atan", 2.0)
    s, v_last, h = tl_lif.lif_fwd(x.to(dev), v0.to(dev), *hyper, True)
    gx, gv0 = tl_lif.lif_bwd(gs.to(dev), gv.to(dev), h, *hyper)
    _, want = run_both(x, v0, gs, gv)
    assert h.dtype == torch.float32
    assert_lif_close((s.cpu(), v_last.cpu(), gx.cpu(), gv0.cpu()), want, dtype)


@pytest.mark.triton
def test_triton_rejects_float64():
    from tna_kernels.triton import lif as tl_lif

    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        tl_lif.lif_fwd(x, torch.zeros(3, dtype=torch.float64), 2.0, True, 1.0, 0.0, False, False,
                       "atan", 2.0, False)


@pytest.mark.cuda
def test_cuda_autograd_through_op():
    x = draw_input((4, 3, 1000), torch.float32)
    v0 = torch.zeros(3, 1000)
    gs = torch.randn(4, 3, 1000)
    got, want = run_both(x.cuda(), v0.cuda(), gs.cuda(), torch.zeros(3, 1000).cuda())
    assert_lif_close(tuple(t.cpu() for t in got), tuple(t.cpu() for t in want), torch.float32)


def test_backward_when_only_one_output_is_used():
    x, v0, gs, gv = make_case((5, 40), torch.float32, 0.0, True)
    _, want = run_both(x, v0, torch.zeros_like(gs), gv)  # only v_last carries gradient
    xa = x.clone().requires_grad_()
    _, v_last = F.lif(xa, v0, return_v=True)
    v_last.backward(gv)
    torch.testing.assert_close(xa.grad, want[2], **TOL[torch.float32])
    _, want = run_both(x, v0, gs, torch.zeros_like(gv))  # only the spikes carry gradient
    xb = x.clone().requires_grad_()
    F.lif(xb, v0).backward(gs)
    torch.testing.assert_close(xb.grad, want[2], **TOL[torch.float32])


@pytest.mark.parametrize("v_reset", [-0.25, None])
def test_op_without_v0_starts_at_the_reset_value(v_reset):
    x = draw_input((6, 3000), torch.float32, v_reset=v_reset)
    hyper = (2.0, True, 1.0, 0.0 if v_reset is None else v_reset, v_reset is None, False, "atan", 2.0)
    v0 = torch.full((3000,), 0.0 if v_reset is None else v_reset)
    implicit = torch.ops.tna.lif_fwd(x, None, *hyper, True)
    explicit = torch.ops.tna.lif_fwd(x, v0, *hyper, True)
    for a, b in zip(implicit, explicit, strict=True):
        assert torch.equal(a, b)
    gs = torch.randn_like(x)
    no_gv = torch.ops.tna.lif_bwd(gs, None, implicit[2], *hyper)
    zero_gv = torch.ops.tna.lif_bwd(gs, torch.zeros(3000), implicit[2], *hyper)
    for a, b in zip(no_gv, zero_gv, strict=True):
        assert torch.equal(a, b)
    torch.library.opcheck(torch.ops.tna.lif_fwd.default, (x[:, :10].clone().requires_grad_(), None, *hyper, True))


# ---- opcheck of every op of the family on small CPU samples (schema, fake kernel, autograd) ------

@pytest.mark.parametrize("save_h", [True, False])
@pytest.mark.parametrize("with_v0", [True, False])
@pytest.mark.parametrize("soft", [False, True])
def test_opcheck_lif_fwd_every_variant(save_h, with_v0, soft):
    x = draw_input((4, 3, 5), torch.float32, v_reset=None if soft else 0.0)
    v0 = torch.rand(3, 5).requires_grad_() if with_v0 else None
    args = (x.clone().requires_grad_(), v0, 2.0, True, 1.0, 0.0, soft, False, "sigmoid", 2.0, save_h)
    torch.library.opcheck(torch.ops.tna.lif_fwd.default, args)


@pytest.mark.parametrize("view", ["expanded", "neuron_slice"])
def test_opcheck_lif_fwd_strided_input(view):
    """Inputs the CPU kernel reads in place (each step contiguous, any step between them)."""
    base = draw_input((3, 40), torch.float32)
    x = base[:1].expand(4, 40) if view == "expanded" else base[:, 5:25]
    torch.library.opcheck(torch.ops.tna.lif_fwd.default, (x, None, *HYPER, False))
    torch.library.opcheck(torch.ops.tna.lif_bwd_recompute.default,
                          (torch.randn(x.shape), None, x, None, *HYPER))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("with_gv", [True, False])
def test_opcheck_lif_bwd_every_variant(dtype, with_gv):
    acc = state_dtype(dtype)
    x = draw_input((4, 7), dtype)
    h = torch.ops.tna.lif_fwd(x, None, *HYPER, True)[2]
    gv = torch.randn(7, dtype=acc) if with_gv else None
    for hyper in (HYPER, _hyper("rectangle", soft=True, detach=True, decay_input=False)):
        torch.library.opcheck(torch.ops.tna.lif_bwd.default, (torch.randn(4, 7).to(dtype), gv, h, *hyper))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("with_v0", [True, False])
def test_opcheck_lif_bwd_recompute_every_variant(dtype, with_v0):
    acc = state_dtype(dtype)
    x = draw_input((4, 7), dtype)
    v0 = torch.rand(7, dtype=acc) if with_v0 else None
    for gv in (None, torch.randn(7, dtype=acc)):
        args = (torch.randn(4, 7).to(dtype), gv, x, v0, *_hyper("fast_sigmoid"))
        torch.library.opcheck(torch.ops.tna.lif_bwd_recompute.default, args)


@pytest.mark.parametrize("soft", [False, True])
def test_opcheck_lif_pack(soft):
    x = torch.randn(3, 2, 5, 70)
    torch.library.opcheck(torch.ops.tna.lif_pack.default, (x, 1.5, not soft, 0.8, -0.5, soft))
    torch.library.opcheck(torch.ops.tna.lif_pack.default, (x.transpose(1, 2), 2.0, True, 1.0, 0.0, soft))


def test_native_core_surrogate_order_is_the_reference_one():
    """The C++ kernels take the surrogate by index: their list must be reference.SURROGATES."""
    from tna_kernels import _C

    assert tuple(_C.LIF_SURROGATES) == tuple(reference.SURROGATES)


def test_cpu_kernel_checks_tensor_arguments():
    x = torch.randn(3, 4)
    h = torch.ops.tna.lif_fwd(x, None, *HYPER, True)[2]
    with pytest.raises(RuntimeError, match="h_seq must have dtype"):
        torch.ops.tna.lif_bwd(x, None, h.double(), *HYPER)
    with pytest.raises(RuntimeError, match="grad_v_last must have shape"):
        torch.ops.tna.lif_bwd(x, torch.zeros(5), h, *HYPER)
    with pytest.raises(RuntimeError, match="x_seq must be a floating-point"):
        torch.ops.tna.lif_fwd(x.int(), None, *HYPER, False)
    with pytest.raises(RuntimeError, match="tau must be a finite number > 0"):
        torch.ops.tna.lif_fwd(x, None, float("inf"), *HYPER[1:], False)
    with pytest.raises(RuntimeError, match="x_seq must be \\[T, ..., C\\]"):
        torch.ops.tna.lif_pack(torch.randn(2, 0), 2.0, True, 1.0, 0.0, False)


@pytest.mark.triton
@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("soft, detach", [(False, False), (True, False), (False, True), (True, True)])
def test_triton_recompute_backward_one_kernel(T, static, soft, detach):
    """The fused kernel against the C++ op: a sequence or a static input expanded over time (read
    in place: stride 0), hard and soft reset, with and without detach; no h is materialised."""
    from tna_kernels.triton import lif as tl_lif

    dev = triton_device()
    torch.manual_seed(T)
    N = 150
    x = (torch.rand(1 if static else T, N) * 3 - 0.5)
    x = x.expand(T, N) if static else x
    gs, gv = torch.randn(T, N), torch.randn(N)
    hyper = (2.0, True, 1.0, 0.0 if not soft else 0.0, soft, detach, "atan", 2.0)
    want_gx, _ = torch.ops.tna.lif_bwd_recompute(gs, gv, x, None, *hyper)
    xd = x.to(dev) if not static else x[:1].to(dev).expand(T, N)
    gx, gv0 = tl_lif.lif_bwd_recompute(gs.to(dev), gv.to(dev), xd, None, *hyper)
    torch.testing.assert_close(gx.cpu(), want_gx, **TOL[torch.float32])
    assert gv0.numel() == 0
    spikes = tl_lif.lif_fwd(xd, None, *hyper, False)[0]  # the strided forward reads in place too
    assert torch.equal(spikes.cpu(), torch.ops.tna.lif_fwd(x, None, *hyper, False)[0])
