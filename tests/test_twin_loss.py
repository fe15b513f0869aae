"""Fused twin loss (tna::twin_loss_fwd / twin_loss_bwd) against the unfused torch composition and
reference.py, plus the KD / DML baselines against hand-written formulas."""

import math
import os

import pytest
import torch
import torch.nn.functional as tF

from tna_kernels import functional as F
from tna_kernels import nn as tnn
from tna_kernels import reference as R


def triton_device() -> str:
    """Device for Triton-lane tests: the GPU when there is one, else CPU tensors + interpreter."""
    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def _inputs(B, C, dtype=torch.float32, scale=3.0, ignore=(), device="cpu"):
    a = (scale * torch.randn(B, C, dtype=torch.float64)).to(dtype).to(device)
    b = (scale * torch.randn(B, C, dtype=torch.float64)).to(dtype).to(device)
    y = torch.randint(0, C, (B,), device=device)
    for i in ignore:
        y[i] = -100
    return a, b, y


def _leaf(x):
    return x.detach().clone().requires_grad_(True)


def _ours(a, b, y, *, go=1.0, **kw):
    """Fused loss, parts and both gradients for a loss scaled by go (grad_output = go)."""
    a, b = _leaf(a), _leaf(b)
    loss, parts = F.twin_loss(a, b, y, return_parts=True, **kw)
    (go * loss).backward()
    return loss.detach(), parts, a.grad, b.grad


def _ref(a, b, y, *, go=1.0, **kw):
    a, b = _leaf(a), _leaf(b)
    loss, parts = R.twin_loss(a, b, y, **kw)
    (go * loss).backward()
    return loss.detach(), parts, a.grad, b.grad


def _close(actual, expected, rtol=2e-5, atol_rel=1e-6):
    """assert_close with an absolute floor relative to the largest expected magnitude, so small
    gradients (~1/B) are compared at their own scale, not against a fixed atol."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=max(atol_rel * scale, 1e-30))


def _check_all(ours, ref, **tol):
    for x, r in zip(ours, ref, strict=False):
        if r is None:
            assert x is None
        else:
            _close(x, r, **tol)


# ------------------------------------------------------------------------------------- CPU kernel

@pytest.mark.parametrize("B,C", [(4000, 10), (300, 100), (64, 1000), (48, 1500), (5, 1), (7, 3)])
def test_matches_reference_and_unfused_composition(B, C):
    a, b, y = _inputs(B, C, ignore=(1,) if B > 4 else ())
    kw = dict(mse_weight=0.3, ce_weight_base=1.0, ce_weight_twin=0.7, mse_reduction="mean")
    ours = _ours(a, b, y, **kw)
    _check_all(ours, _ref(a, b, y, **kw))
    # The plain unfused composition the fused loss replaces (mean CE, F.mse_loss mean).
    A, Bt = _leaf(a), _leaf(b)
    loss = tF.cross_entropy(A, y) + 0.7 * tF.cross_entropy(Bt, y) + 0.3 * tF.mse_loss(A, Bt)
    loss.backward()
    _close(ours[0], loss.detach())
    _close(ours[2], A.grad)
    _close(ours[3], Bt.grad)


@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0)])
def test_each_term_alone(weights):
    wa, wb, lam = weights
    a, b, y = _inputs(37, 23, ignore=(0, 5))
    kw = dict(ce_weight_base=wa, ce_weight_twin=wb, mse_weight=lam, mse_reduction="sum_over_batch")
    loss, parts, ga, gb = _ours(a, b, y, **kw)
    _check_all((loss, parts, ga, gb), _ref(a, b, y, **kw))
    valid = y != -100
    ce_a = tF.cross_entropy(a[valid], y[valid])
    ce_b = tF.cross_entropy(b[valid], y[valid])
    mse = ((a - b) ** 2).sum() / a.shape[0]
    _close(parts, torch.stack([ce_a, ce_b, mse]))
    _close(loss, wa * ce_a + wb * ce_b + lam * mse)
    if (wa, wb, lam) == (0.0, 0.0, 1.0):  # pure MSE: the gradient by hand
        _close(ga, 2 * (a - b) / a.shape[0])
        _close(gb, -2 * (a - b) / a.shape[0])
    if lam == 0.0:  # a network whose CE weight is 0 gets exactly nothing
        if wb == 0.0:
            assert torch.equal(gb, torch.zeros_like(gb))
        if wa == 0.0:
            assert torch.equal(ga, torch.zeros_like(ga))


def test_ignore_index_rows():
    a, b, y = _inputs(50, 17)
    y[::3] = 7  # a custom ignore_index that is also a valid class elsewhere is not allowed: use -5
    y[::4] = -5
    kw = dict(ignore_index=-5, mse_weight=0.2, label_smoothing=0.05)
    ours = _ours(a, b, y, **kw)
    _check_all(ours, _ref(a, b, y, **kw))
    A = _leaf(a)
    tF.cross_entropy(A, y, ignore_index=-5, label_smoothing=0.05).backward()
    _close(ours[1][0], tF.cross_entropy(a, y, ignore_index=-5, label_smoothing=0.05))
    ignored = y == -5  # ignored rows get only the MSE gradient
    _close(ours[2][ignored], (2 * 0.2 / 50 * (a - b))[ignored])


def test_all_ignored_batch_is_defined():
    a, b, y = _inputs(6, 11)
    y.fill_(-100)
    loss, parts, ga, gb = _ours(a, b, y, mse_weight=0.0)
    assert torch.equal(parts[:2], torch.zeros(2))
    assert loss.item() == 0.0
    assert torch.equal(ga, torch.zeros_like(ga)) and torch.equal(gb, torch.zeros_like(gb))
    loss, parts, ga, gb = _ours(a, b, y, mse_weight=0.5)  # only the MSE remains
    assert torch.isfinite(loss) and torch.isfinite(ga).all() and torch.isfinite(gb).all()
    _close(loss, 0.5 * ((a - b) ** 2).sum() / 6)
    _check_all((loss, parts, ga, gb), _ref(a, b, y, mse_weight=0.5))


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_label_smoothing(eps):
    a, b, y = _inputs(40, 30, ignore=(3,))
    ours = _ours(a, b, y, label_smoothing=eps, mse_weight=0.0)
    A, Bt = _leaf(a), _leaf(b)
    loss = tF.cross_entropy(A, y, label_smoothing=eps) + tF.cross_entropy(Bt, y, label_smoothing=eps)
    loss.backward()
    _close(ours[0], loss.detach())
    _close(ours[2], A.grad)
    _close(ours[3], Bt.grad)


def test_mse_conventions():
    a, b, y = _inputs(33, 10)
    l_mean, p_mean, ga_mean, _ = _ours(a, b, y, mse_weight=1.0, mse_reduction="mean")
    l_sum, p_sum, ga_sum, _ = _ours(a, b, y, mse_weight=1.0, mse_reduction="sum_over_batch")
    _close(p_mean[2], tF.mse_loss(a, b))
    _close(p_sum[2], tF.mse_loss(a, b, reduction="sum") / 33)
    _close(p_sum[2], 10 * p_mean[2])
    # lambda_mean = C * lambda_sum_over_batch gives the same loss and gradients
    l2, _, ga2, _ = _ours(a, b, y, mse_weight=0.1, mse_reduction="sum_over_batch")
    l3, _, ga3, _ = _ours(a, b, y, mse_weight=1.0, mse_reduction="mean")
    _close(l2, l3)
    _close(ga2, ga3)


def test_default_is_the_authors_convention():
    a, b, y = _inputs(16, 10)
    loss = F.twin_loss(a, b, y)
    mse_sum = tF.mse_loss(a, b, reduction="sum")
    expected = tF.cross_entropy(a, y) + tF.cross_entropy(b, y) + 0.005 * mse_sum / 16
    _close(loss, expected)


@pytest.mark.parametrize("which", ["twin", "base", "both"])
def test_detach(which):
    a, b, y = _inputs(20, 12, ignore=(2,))
    A, Bt = _leaf(a), _leaf(b)
    kw = dict(detach_twin=which in ("twin", "both"), detach_base=which in ("base", "both"), mse_weight=0.4)
    loss = F.twin_loss(A, Bt, y, **kw)
    ref_loss, _ = R.twin_loss(A, Bt, y, **kw)
    _close(loss.detach(), ref_loss.detach())
    if which == "both":  # as if both were passed detached: nothing to differentiate
        assert not loss.requires_grad
        return
    ga, gb = torch.autograd.grad(loss, (A, Bt), allow_unused=True, materialize_grads=True)
    if kw["detach_twin"]:
        assert torch.equal(gb, torch.zeros_like(gb))
    if kw["detach_base"]:
        assert torch.equal(ga, torch.zeros_like(ga))
    rga, rgb = torch.autograd.grad(ref_loss, (A, Bt), allow_unused=True, materialize_grads=True)
    _close(ga, rga)
    _close(gb, rgb)


@pytest.mark.parametrize("which", ["twin", "base"])
def test_detach_large_one_sided_backward(which):
    """One gradient only, large enough that the backward op splits it across threads."""
    a, b, y = _inputs(1000, 100, ignore=(7,))
    kw = dict(detach_twin=which == "twin", detach_base=which == "base", mse_weight=0.3)
    ours = _ours(a, b, y, go=-1.5, **kw)
    _check_all(ours, _ref(a, b, y, go=-1.5, **kw))


def test_frozen_twin_is_logit_matching_to_a_constant():
    a, b, y = _inputs(10, 7)
    A = _leaf(a)
    F.twin_loss(A, b, y, detach_twin=True, ce_weight_twin=0.0, mse_weight=1.0).backward()
    A2 = _leaf(a)
    (tF.cross_entropy(A2, y) + ((A2 - b) ** 2).sum() / 10).backward()
    _close(A.grad, A2.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum_over_batch"])
def test_gradcheck_float64(reduction):
    a, b, y = _inputs(6, 5, dtype=torch.float64, scale=1.0, ignore=(1,))
    A, Bt = _leaf(a), _leaf(b)

    def fn(x, z):
        return F.twin_loss(x, z, y, mse_weight=0.7, ce_weight_twin=0.6, label_smoothing=0.1,
                           mse_reduction=reduction)

    assert torch.autograd.gradcheck(fn, (A, Bt))


@pytest.mark.parametrize("go", [2.0, -0.37])
def test_grad_output_not_one(go):
    a, b, y = _inputs(25, 40, ignore=(4,))
    kw = dict(mse_weight=0.05, label_smoothing=0.1)
    ours = _ours(a, b, y, go=go, **kw)
    _check_all(ours, _ref(a, b, y, go=go, **kw))
    _, _, ga1, gb1 = _ours(a, b, y, **kw)
    _close(ours[2], go * ga1)
    _close(ours[3], go * gb1)


def test_retain_graph_backward_twice_accumulates():
    """grad_output = 1 hands back the saved gradients without a copy; with retain_graph they stay
    saved, so a second backward sees them unchanged and .grad accumulates to exactly twice."""
    a, b, y = _inputs(12, 30, ignore=(3,))
    A, Bt = _leaf(a), _leaf(b)
    loss = F.twin_loss(A, Bt, y, mse_weight=0.1)
    loss.backward(retain_graph=True)
    first = A.grad.clone(), Bt.grad.clone()
    loss.backward()
    assert torch.equal(A.grad, 2 * first[0]) and torch.equal(Bt.grad, 2 * first[1])
    _, _, rga, rgb = _ref(a, b, y, mse_weight=0.1)
    _close(first[0], rga)
    _close(first[1], rgb)


def test_changing_a_returned_gradient_in_place_is_caught_with_retain_graph():
    a, b, y = _inputs(6, 10)
    A, Bt = _leaf(a), _leaf(b)
    loss = F.twin_loss(A, Bt, y)
    ga, _ = torch.autograd.grad(loss, (A, Bt), retain_graph=True)
    expected = ga.clone()
    ga.mul_(3.0)  # the tensor the saved gradient lives in: its version counter moves
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss, (A, Bt))
    ga2, _ = torch.autograd.grad(F.twin_loss(A, Bt, y), (A, Bt))
    assert torch.equal(ga2, expected)


def test_double_backward_raises():
    a, b, y = _inputs(4, 5)
    A = _leaf(a)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(F.twin_loss(A, b, y), (A,), create_graph=True)


def test_loss_in_a_larger_graph():
    """Not the last layer: gradients reach the parameters that produced the logits."""
    x = torch.randn(8, 5)
    la, lb = torch.nn.Linear(5, 10), torch.nn.Linear(5, 10)
    y = torch.randint(0, 10, (8,))
    (2 * F.twin_loss(la(x), lb(x), y, mse_weight=0.1) + la.weight.sum()).backward()
    g_ours = [p.grad.clone() for p in (*la.parameters(), *lb.parameters())]
    for p in (*la.parameters(), *lb.parameters()):
        p.grad = None
    (2 * R.twin_loss(la(x), lb(x), y, mse_weight=0.1)[0] + la.weight.sum()).backward()
    for g, p in zip(g_ours, (*la.parameters(), *lb.parameters()), strict=False):
        _close(g, p.grad)


@pytest.mark.parametrize("C", [10, 100, 1000])
def test_bfloat16(C):
    a, b, y = _inputs(64, C, dtype=torch.bfloat16, ignore=(0,))
    kw = dict(mse_weight=0.01, label_smoothing=0.1)
    loss, parts, ga, gb = _ours(a, b, y, **kw)
    assert loss.dtype == parts.dtype == torch.float32 and ga.dtype == gb.dtype == torch.bfloat16
    rl, rp, rga, rgb = _ref(a, b, y, **kw)  # float32 maths on the same bf16 values
    _close(loss, rl)
    _close(parts, rp)
    # the gradient is computed in float32 and rounded once: within a bf16 rounding step
    _close(ga.float(), rga.float(), rtol=2 ** -7, atol_rel=2 ** -9)
    _close(gb.float(), rgb.float(), rtol=2 ** -7, atol_rel=2 ** -9)


def test_float16_and_float64_dtypes():
    for dtype, out in ((torch.float16, torch.float32), (torch.float64, torch.float64)):
        a, b, y = _inputs(9, 13, dtype=dtype, scale=1.0)
        loss, parts, ga, gb = _ours(a, b, y, mse_weight=0.2)
        assert loss.dtype == out and ga.dtype == dtype
        rl, _, rga, _ = _ref(a, b, y, mse_weight=0.2)
        _close(loss, rl, rtol=1e-5 if dtype == torch.float16 else 1e-12)
        _close(ga.float(), rga.float(), rtol=2 ** -9, atol_rel=2 ** -11)


def test_extreme_logits():
    """Logits far apart: exp underflows for most classes; no NaN/inf, still the reference."""
    a, b, y = _inputs(16, 50, scale=60.0)
    _check_all(_ours(a, b, y, mse_weight=1e-4), _ref(a, b, y, mse_weight=1e-4))


def test_non_contiguous_inputs_and_inputs_unchanged():
    base = torch.randn(30, 24)
    twin = torch.randn(24, 30).t()  # a transposed view
    a = base[:, ::2]  # a strided view [30, 12]
    b = twin[:, :12]
    y = torch.randint(0, 12, (60,))[::2]
    saved = [t.clone() for t in (base, twin, y)]
    ours = _ours(a, b, y, mse_weight=0.3)
    _check_all(ours, _ref(a.contiguous(), b.contiguous(), y.contiguous(), mse_weight=0.3))
    for t, s in zip((base, twin, y), saved, strict=False):
        assert torch.equal(t, s)


def test_inputs_never_modified_by_forward_and_backward():
    a, b, y = _inputs(12, 9, ignore=(3,))
    A, Bt = _leaf(a), _leaf(b)
    y0 = y.clone()
    F.twin_loss(A, Bt, y, mse_weight=0.5).backward()
    assert torch.equal(A.detach(), a) and torch.equal(Bt.detach(), b) and torch.equal(y, y0)


def test_thread_count_does_not_change_the_result():
    a, b, y = _inputs(2000, 37, ignore=(5, 77))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.tna.twin_loss_fwd(a, b, y, 1.0, 1.0, 0.1, 1, 0.1, -100, True, True)
        torch.set_num_threads(max(threads, 2))
        many = torch.ops.tna.twin_loss_fwd(a, b, y, 1.0, 1.0, 0.1, 1, 0.1, -100, True, True)
    finally:
        torch.set_num_threads(threads)
    for x, z in zip(one, many, strict=False):
        assert torch.equal(x, z)


def test_no_grad_computes_no_gradient_buffers():
    a, b, y = _inputs(8, 10)
    out = torch.ops.tna.twin_loss_fwd(a, b, y, 1.0, 1.0, 0.1, 0, 0.0, -100, False, False)
    assert out[2].numel() == 0 and out[3].numel() == 0
    with torch.no_grad():
        loss = F.twin_loss(_leaf(a), _leaf(b), y)
    assert not loss.requires_grad
    _close(loss, R.twin_loss(a, b, y)[0])


def test_parts_are_for_logging_only():
    a, b, y = _inputs(8, 10)
    A = _leaf(a)
    loss, parts = F.twin_loss(A, b, y, return_parts=True)
    assert loss.requires_grad and not parts.requires_grad


def test_empty_batch():
    a = torch.randn(0, 10, requires_grad=True)
    b = torch.randn(0, 10)
    loss, parts = F.twin_loss(a, b, torch.zeros(0, dtype=torch.int64), return_parts=True)
    assert loss.item() == 0.0 and torch.equal(parts, torch.zeros(3))
    loss.backward()
    assert a.grad.shape == (0, 10)


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("make,exc,match", [
    (lambda a, b, y: F.twin_loss(a, b[:, :-1], y), ValueError, "logits_twin must have the shape"),
    (lambda a, b, y: F.twin_loss(a, b[:-1], y), ValueError, "logits_twin must have the shape"),
    (lambda a, b, y: F.twin_loss(a, b.double(), y), TypeError, "logits_twin must have the dtype"),
    (lambda a, b, y: F.twin_loss(a.long(), b.long(), y), TypeError, "logits_base must be a floating"),
    (lambda a, b, y: F.twin_loss(a[0], b[0], y), ValueError, "logits_base must be a 2-D"),
    (lambda a, b, y: F.twin_loss(a, b, y.int()), TypeError, "target must hold class indices with dtype"),
    (lambda a, b, y: F.twin_loss(a, b, y.float()), TypeError, "target must hold class indices"),
    (lambda a, b, y: F.twin_loss(a, b, y[:-1]), ValueError, "target must have shape"),
    (lambda a, b, y: F.twin_loss(a, b, y.clone().fill_(10)), RuntimeError, r"target\[0\] = 10"),
    (lambda a, b, y: F.twin_loss(a, b, y.clone().fill_(-1)), RuntimeError,
     "target must hold class indices in"),
    (lambda a, b, y: F.twin_loss(a, b, y, mse_reduction="sum"), ValueError, "mse_reduction must be one of"),
    (lambda a, b, y: F.twin_loss(a, b, y, label_smoothing=1.5), ValueError, "label_smoothing must be"),
    (lambda a, b, y: F.twin_loss(a, b, y, mse_weight=math.nan), ValueError, "mse_weight must be"),
    (lambda a, b, y: F.twin_loss(a, b, y, ce_weight_base="1"), ValueError, "ce_weight_base must be"),
    (lambda a, b, y: F.twin_loss(a, b, y, ignore_index=1.5), TypeError, "ignore_index must be an int"),
    (lambda a, b, y: F.twin_loss(a.tolist(), b, y), TypeError, "logits_base must be a torch.Tensor"),
])
def test_bad_input_errors_name_the_argument(make, exc, match):
    a, b, y = _inputs(4, 10)
    with pytest.raises(exc, match=match):
        make(a, b, y)


def test_op_level_errors_name_the_argument():
    a, b, y = _inputs(4, 10)
    op = torch.ops.tna.twin_loss_fwd
    with pytest.raises(RuntimeError, match="logits_twin must have shape"):
        op(a, b[:, :5], y, 1.0, 1.0, 0.1, 0, 0.0, -100, True, True)
    with pytest.raises(RuntimeError, match="target must have dtype Long"):
        op(a, b, y.int(), 1.0, 1.0, 0.1, 0, 0.0, -100, True, True)
    with pytest.raises(RuntimeError, match="mse_reduction must be 0"):
        op(a, b, y, 1.0, 1.0, 0.1, 2, 0.0, -100, True, True)
    with pytest.raises(RuntimeError, match="grad_loss must have dtype"):
        torch.ops.tna.twin_loss_bwd(torch.tensor(1.0, dtype=torch.float64), a, b)


# ------------------------------------------------------------------- op registration, compile

def _opcheck_samples():
    a, b, y = _inputs(6, 10, ignore=(2,))
    a16, b16, _ = _inputs(6, 10, dtype=torch.bfloat16)
    yield (_leaf(a), _leaf(b), y, 1.0, 0.5, 0.1, 0, 0.1, -100, True, True)
    yield (_leaf(a), b, y, 1.0, 1.0, 0.005, 1, 0.0, -100, True, False)
    yield (a, b, y, 1.0, 1.0, 0.005, 1, 0.0, -100, False, False)
    yield (_leaf(a16), _leaf(b16), y, 1.0, 1.0, 0.005, 1, 0.0, -100, True, True)


@pytest.mark.parametrize("i", range(4))
def test_opcheck_fwd(i):
    args = list(_opcheck_samples())[i]
    torch.library.opcheck(torch.ops.tna.twin_loss_fwd.default, args)


def test_opcheck_bwd():
    g = torch.randn(5, 7)
    torch.library.opcheck(torch.ops.tna.twin_loss_bwd.default, (torch.tensor(1.5), g, g.clone()))
    torch.library.opcheck(torch.ops.tna.twin_loss_bwd.default, (torch.tensor(1.5), g, torch.empty(0)))
    g16 = g.bfloat16()
    torch.library.opcheck(torch.ops.tna.twin_loss_bwd.default, (torch.tensor(-2.0), g16, g16))


@pytest.mark.parametrize("i", range(4))
def test_opcheck_autograd_op(i):
    """tna::twin_loss (the C++ autograd op functional.twin_loss calls): schema, fake, autograd
    registration, AOT dispatch; the detach flags map to need_grad of the fwd samples above."""
    a, b, y, wa, wb, lam, red, eps, ign, need_a, need_b = list(_opcheck_samples())[i]
    torch.library.opcheck(torch.ops.tna.twin_loss.default,
                          (a, b, y, wa, wb, lam, red, eps, ign, not need_a, not need_b))


def test_autograd_op_under_inference_mode():
    a, b, y = _inputs(7, 12)
    with torch.inference_mode():
        loss, parts = torch.ops.tna.twin_loss(a, b, y, 1.0, 1.0, 0.005, 1, 0.0, -100, False, False)
    rl, rp, _, _ = _ref(a, b, y)
    _close(loss, rl)
    _close(parts, rp)


def test_op_level_autograd_registration():
    """Calling tna::twin_loss_fwd directly differentiates through register_autograd (the same
    backward op as the functional path)."""
    a, b, y = _inputs(9, 14, ignore=(2,))
    A, Bt = _leaf(a), _leaf(b)
    loss, parts, _, _ = torch.ops.tna.twin_loss_fwd(A, Bt, y, 1.0, 0.5, 0.2, 0, 0.1, -100, True, True)
    assert not parts.requires_grad
    (-3.0 * loss).backward()
    _, _, rga, rgb = _ref(a, b, y, go=-3.0, ce_weight_twin=0.5, mse_weight=0.2, mse_reduction="mean",
                          label_smoothing=0.1)
    _close(A.grad, rga)
    _close(Bt.grad, rgb)
    A.grad = None
    loss, *_ = torch.ops.tna.twin_loss_fwd(A, Bt, y, 1.0, 0.5, 0.2, 0, 0.1, -100, True, False)
    ga, gb = torch.autograd.grad(loss, (A, Bt), allow_unused=True)
    assert gb is None  # need_grad_twin=False: the twin is treated as detached
    _close(ga, rga / -3.0)


def test_torch_compile_fullgraph():
    a, b, y = _inputs(16, 10, ignore=(1,))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(x, z, t):
        loss, parts = F.twin_loss(x, z, t, mse_weight=0.1, return_parts=True)
        return loss * 2, parts

    A, Bt = _leaf(a), _leaf(b)
    loss, parts = step(A, Bt, y)
    loss.backward()
    rl, rp, rga, rgb = _ref(a, b, y, go=2.0, mse_weight=0.1)
    _close(loss.detach(), 2 * rl)
    _close(parts, rp)
    _close(A.grad, rga)
    _close(Bt.grad, rgb)


# ------------------------------------------------------------------- Triton (interpreter / GPU)

@pytest.mark.triton
@pytest.mark.parametrize("C", [10, 37, 100])
@pytest.mark.parametrize("reduction", [0, 1])
def test_triton_matches_cpu_kernel(C, reduction):
    from tna_kernels.triton import twin_loss as tk

    dev = triton_device()
    a, b, y = _inputs(6, C, ignore=(2,))
    args = (1.0, 0.7, 0.3, reduction, 0.1, -100, True, True)
    expected = torch.ops.tna.twin_loss_fwd(a, b, y, *args)
    got = tk.twin_loss_fwd(a.to(dev), b.to(dev), y.to(dev), *args)
    for g, e in zip(got, expected, strict=False):
        _close(g.cpu(), e)


@pytest.mark.triton
def test_triton_all_ignored_bf16_and_partial_grads():
    from tna_kernels.triton import twin_loss as tk

    dev = triton_device()
    a, b, y = _inputs(4, 45, dtype=torch.bfloat16)
    y.fill_(-100)
    loss, parts, ga, gb = tk.twin_loss_fwd(a.to(dev), b.to(dev), y.to(dev), 1.0, 1.0, 0.0, 1, 0.0,
                                           -100, True, False)
    assert gb.numel() == 0 and ga.dtype == torch.bfloat16
    assert loss.item() == 0.0 and torch.equal(parts[:2].cpu(), torch.zeros(2))
    _close(parts[2].cpu(), ((a.float() - b.float()) ** 2).sum() / 4)  # parts are unweighted
    assert torch.equal(ga.cpu(), torch.zeros_like(a))
    y = torch.randint(0, 45, (4,))
    got = tk.twin_loss_fwd(a.to(dev), b.to(dev), y.to(dev), 1.0, 1.0, 0.01, 0, 0.0, -100, True, True)
    expected = torch.ops.tna.twin_loss_fwd(a, b, y, 1.0, 1.0, 0.01, 0, 0.0, -100, True, True)
    _close(got[0].cpu(), expected[0])
    _close(got[2].cpu().float(), expected[2].float(), rtol=2 ** -7, atol_rel=2 ** -9)
    _close(got[3].cpu().float(), expected[3].float(), rtol=2 ** -7, atol_rel=2 ** -9)


@pytest.mark.triton
def test_triton_empty_batch_matches_cpu_kernel():
    from tna_kernels.triton import twin_loss as tk

    dev = triton_device()
    a, b, y = _inputs(0, 10)
    expected = torch.ops.tna.twin_loss_fwd(a, b, y, 1.0, 1.0, 0.1, 1, 0.0, -100, True, False)
    got = tk.twin_loss_fwd(a.to(dev), b.to(dev), y.to(dev), 1.0, 1.0, 0.1, 1, 0.0, -100, True, False)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        assert torch.equal(g.cpu(), e)


@pytest.mark.triton
@pytest.mark.parametrize("bad", [10, -5])
def test_triton_bad_target_is_reported(bad):
    """Flagged by the count kernel (and never read through: the row's loads stay inside it), then
    reported by the assert on that flag."""
    from tna_kernels.triton import twin_loss as tk

    if triton_device() != "cpu":
        pytest.skip("a device-side assert would poison the CUDA context of the test session")
    a, b, y = _inputs(3, 10)
    y[1] = bad
    with pytest.raises(RuntimeError, match="target must hold class indices"):
        tk.twin_loss_fwd(a, b, y, 1.0, 1.0, 0.0, 1, 0.0, -100, True, True)


@pytest.mark.cuda
def test_cuda_op_dispatches_to_triton():
    a, b, y = _inputs(64, 100, ignore=(3,), device="cuda")
    ours = _ours(a, b, y, mse_weight=0.1, label_smoothing=0.1)
    _check_all([t.cpu() for t in ours], _ref(a.cpu(), b.cpu(), y.cpu(), mse_weight=0.1, label_smoothing=0.1))


# ----------------------------------------------------------------------------- KD / DML, modules

def test_kd_loss_hand_formula():
    s, t, y = _inputs(12, 10, scale=2.0, ignore=(4,))
    S, Tt = _leaf(s), _leaf(t)
    T, alpha = 3.0, 0.8
    loss = F.kd_loss(S, Tt, y, temperature=T, alpha=alpha)
    loss.backward()
    assert Tt.grad is None  # the teacher is detached
    S2 = _leaf(s)
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(S2 / T, 1))).sum(1).mean()
    valid = y != -100
    ce = -torch.log_softmax(S2[valid], 1).gather(1, y[valid, None]).mean()
    expected = alpha * T * T * kl + (1 - alpha) * ce
    expected.backward()
    _close(loss.detach(), expected.detach())
    _close(S.grad, S2.grad)
    # pure distillation needs no target; identical logits give zero loss
    assert F.kd_loss(s, t, None, alpha=1.0).item() > 0
    assert abs(F.kd_loss(s, s, None, alpha=1.0).item()) < 1e-6
    with pytest.raises(ValueError, match="target is required"):
        F.kd_loss(s, t, None, alpha=0.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        F.kd_loss(s, t, y, temperature=0.0)


def test_dml_loss_hand_formula():
    a, b, y = _inputs(9, 6, scale=2.0)
    A, Bt = _leaf(a), _leaf(b)
    loss = F.dml_loss(A, Bt, y)
    loss.backward()
    A2, B2 = _leaf(a), _leaf(b)
    pa, pb = torch.softmax(A2, 1), torch.softmax(B2, 1)
    kl_ba = (pb * (pb.log() - pa.log())).sum(1).mean()
    kl_ab = (pa * (pa.log() - pb.log())).sum(1).mean()
    ce = -pa.log().gather(1, y[:, None]).mean() - pb.log().gather(1, y[:, None]).mean()
    expected = ce + kl_ab + kl_ba
    expected.backward()
    _close(loss.detach(), expected.detach())
    _close(A.grad, A2.grad)
    _close(Bt.grad, B2.grad)
    with pytest.raises(ValueError, match="logits_b must have the shape"):
        F.dml_loss(a, b[:, :3], y)


def test_modules():
    a, b, y = _inputs(10, 10, ignore=(0,))
    m = tnn.TwinLoss(0.1, mse_reduction="mean", return_parts=True, label_smoothing=0.1)
    loss, parts = m(a, b, y)
    rl, rp = R.twin_loss(a, b, y, mse_weight=0.1, mse_reduction="mean", label_smoothing=0.1)
    _close(loss, rl)
    _close(parts, rp)
    assert "mse_reduction='mean'" in repr(m)
    _close(tnn.KDLoss(2.0, 0.5)(a, b, y), R.kd_loss(a, b, y, temperature=2.0, alpha=0.5))
    _close(tnn.DMLLoss()(a, b, y), R.dml_loss(a, b, y))
    with pytest.raises(ValueError, match="mse_reduction"):
        tnn.TwinLoss(mse_reduction="batchmean")
    with pytest.raises(ValueError, match="alpha"):
        tnn.KDLoss(alpha=2.0)


# ---------------------------------------------- one autograd (register_autograd on twin_loss_fwd)

def test_twin_loss_has_one_autograd_the_fwd_ops():
    """tna::twin_loss is a composition over tna::twin_loss_fwd: the graph node of the loss is the
    register_autograd node of the fwd op, and the op has no autograd kernel of its own."""
    from tna_kernels._utils import is_composite

    a, b, y = _inputs(5, 7)
    loss = F.twin_loss(_leaf(a), _leaf(b), y)
    assert "GeneratedBackwardFor_tna_twin_loss_fwd" in type(loss.grad_fn).__name__
    assert is_composite("tna::twin_loss")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("reduction", [0, 1])
def test_opcheck_fwd_more_samples(dtype, reduction):
    a, b, y = _inputs(9, 13, dtype=dtype, ignore=(4,))
    torch.library.opcheck(torch.ops.tna.twin_loss_fwd.default,
                          (_leaf(a), _leaf(b), y, 0.7, 1.2, 0.3, reduction, 0.05, -100, True, True))
    torch.library.opcheck(torch.ops.tna.twin_loss.default,
                          (_leaf(a), _leaf(b), y, 0.7, 1.2, 0.3, reduction, 0.05, -100, False, True))


def test_opcheck_bwd_float64_and_half():
    g = torch.randn(4, 6, dtype=torch.float64)
    torch.library.opcheck(torch.ops.tna.twin_loss_bwd.default, (torch.tensor(0.5, dtype=torch.float64), g, g))
    h = g.half()
    torch.library.opcheck(torch.ops.tna.twin_loss_bwd.default, (torch.tensor(3.0), torch.empty(0).half(), h))


def test_autograd_cost_probe_runs():
    """scripts/autograd_cost_probe.py (the record behind docs/BENCHMARKS.md's dispatch figures)
    checks its prototype's gradients against the library op and prints both timings."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, str(root / "scripts" / "autograd_cost_probe.py"), "--calls", "5",
                          "--rounds", "1"], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("hand-written Autograd-key kernel") == 2, out.stdout
