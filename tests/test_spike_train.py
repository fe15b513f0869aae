"""The spike_train family: tna::spike_conv2d_grad_weight (event-driven weight gradient from
bit-packed spikes) against the reference, and the straight-through training forms
(spike_ternary_conv2d_ste / spike_ternary_linear_ste, TernaryLIFConv2d's train_path) against dense
QAT (``conv2d(x, ternary_ste(w))``): the spike forward's integer sums exactly, everything else
within float32 rounding."""

import os
import subprocess
import sys

import pytest
import torch

from tna_kernels import functional as F
from tna_kernels import reference as R
from tna_kernels.nn import TernaryLIFConv2d, set_train_path, train_paths
from tna_kernels.ops import spike_train
from tna_kernels.ops.ternary import _ternary_cpu_isa

OPS = torch.ops.tna


def spikes(shape, p=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).float()


def out_size(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def grad_weight(x, grad_y, k, s, p, d):
    bits = F.pack_spikes(x, dim=1)
    return OPS.spike_conv2d_grad_weight(grad_y, bits, x.shape[1], list(k), list(s), list(p), list(d))


# (B, C, H, W, N, kernel, stride, padding, dilation): the VGG layers' 3x3/pad 1, strided, dilated,
# rectangular and 1x1 ("linear") geometries; C across and off 64-bit words; N off the vector widths
# (tails of 1..15 floats) and above the 256-float register block
CASES = [
    (2, 3, 5, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1)),
    (3, 70, 6, 7, 33, (3, 3), (2, 2), (1, 1), (1, 1)),
    (2, 130, 9, 8, 300, (3, 3), (1, 1), (2, 2), (2, 2)),
    (5, 64, 1, 1, 17, (1, 1), (1, 1), (0, 0), (1, 1)),
    (2, 5, 7, 7, 18, (2, 3), (3, 1), (0, 1), (1, 1)),
    (4, 128, 8, 8, 256, (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 64, 4, 4, 512, (3, 3), (1, 1), (1, 1), (1, 1)),
    # 3-wide kernels at stride 1 take three taps at a time in chunks the columns divide: 32, 24 and
    # 48 columns (4, 3 and 6 vectors of 8), dilated, unpadded and over-padded
    (2, 16, 9, 7, 32, (3, 3), (1, 1), (1, 1), (2, 2)),
    (3, 20, 6, 6, 24, (3, 3), (1, 1), (0, 0), (1, 1)),
    (2, 8, 5, 5, 48, (5, 3), (1, 1), (2, 2), (1, 1)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("density", [0.0, 0.2, 1.0])
def test_grad_weight_matches_reference(case, density):
    B, C, H, W, N, k, s, p, d = case
    x = spikes((B, C, H, W), density)
    grad_y = torch.randn(B, N, out_size(H, k[0], s[0], p[0], d[0]), out_size(W, k[1], s[1], p[1], d[1]))
    got = grad_weight(x, grad_y, k, s, p, d)
    want = R.spike_conv2d_grad_weight(grad_y, x, k, s, p, d)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * (1 + want.abs().max().item()))
    if density == 0.0:
        assert not got.any()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_grad_weight_reads_any_grad_layout_and_leaves_inputs(layout):
    x = spikes((3, 20, 6, 6))
    base = torch.randn(3, 24, 6, 6)
    grad_y = {"contiguous": base, "channels_last": base.to(memory_format=torch.channels_last),
              "sliced": torch.randn(3, 48, 6, 6)[:, ::2]}[layout]
    before = grad_y.clone()
    bits = F.pack_spikes(x, dim=1)
    bits_before = bits.clone()
    got = OPS.spike_conv2d_grad_weight(grad_y, bits, 20, [3, 3], [1, 1], [1, 1], [1, 1])
    torch.testing.assert_close(got.double(), R.spike_conv2d_grad_weight(grad_y, x, 3, 1, 1, 1), rtol=1e-5, atol=1e-5)
    assert torch.equal(grad_y, before) and torch.equal(bits, bits_before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_grad_weight_other_dtypes(dtype):
    x = spikes((2, 10, 5, 5))
    grad_y = torch.randn(2, 7, 5, 5).to(dtype)
    got = grad_weight(x, grad_y, (3, 3), (1, 1), (1, 1), (1, 1))
    assert got.dtype == dtype
    want = R.spike_conv2d_grad_weight(grad_y, x, 3, 1, 1, 1)
    tol = 1e-5 if dtype == torch.float64 else 2e-2
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * (1 + want.abs().max().item()))


def test_grad_weight_same_bits_for_any_thread_count():
    x = spikes((64, 96, 8, 8))  # several tiles of samples, several output-channel chunks
    grad_y = torch.randn(64, 200, 8, 8)
    old = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(grad_weight(x, grad_y, (3, 3), (1, 1), (1, 1), (1, 1)))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(r, results[0]) for r in results)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_grad_weight_every_instruction_set(isa):
    """Each ISA's kernel (TNA_TERNARY_ISA forces it; skipped where the CPU lacks it), in a fresh
    process as the variable is read per call but the check below must see only that kernel."""
    code = ("import torch, tna_kernels; from tna_kernels import functional as F, reference as R\n"
            "from tna_kernels.ops.ternary import _ternary_cpu_isa\n"
            "g = torch.Generator().manual_seed(1)\n"
            "x = (torch.rand(3, 70, 6, 6, generator=g) < 0.3).float()\n"
            "gy = torch.randn(3, 61, 6, 6, generator=g)\n"
            "bits = F.pack_spikes(x, dim=1)\n"
            "got = torch.ops.tna.spike_conv2d_grad_weight(gy, bits, 70, [3, 3], [1, 1], [1, 1], [1, 1])\n"
            "want = R.spike_conv2d_grad_weight(gy, x, 3, 1, 1, 1)\n"
            "torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)\n"
            "print(_ternary_cpu_isa())\n")
    env = dict(os.environ, TNA_TERNARY_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if "supports at most" in out.stderr:
        pytest.skip(f"this CPU has no {isa}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa


def test_grad_weight_opcheck():
    x = spikes((2, 70, 5, 5))
    bits = F.pack_spikes(x, dim=1)
    for grad_y, geo in ((torch.randn(2, 9, 5, 5), ([3, 3], [1, 1], [1, 1], [1, 1])),
                        (torch.randn(2, 4, 3, 3), ([3, 3], [2, 2], [1, 1], [1, 1]))):
        torch.library.opcheck(OPS.spike_conv2d_grad_weight.default, (grad_y, bits, 70, *geo))


@pytest.mark.parametrize("bad, match", [
    (lambda gy, b: (gy.long(), b, 10, [3, 3], [1, 1], [1, 1], [1, 1]), "grad_y must be a floating-point"),
    (lambda gy, b: (gy, b.int(), 10, [3, 3], [1, 1], [1, 1], [1, 1]), "spike_bits must be int64"),
    (lambda gy, b: (gy, b, 100, [3, 3], [1, 1], [1, 1], [1, 1]), r"spike_bits must have shape \[B, H, W, 2\]"),
    (lambda gy, b: (gy[:, :, :4], b, 10, [3, 3], [1, 1], [1, 1], [1, 1]), "grad_y must have shape"),
    (lambda gy, b: (gy, b, 10, [3, 3], [0, 1], [1, 1], [1, 1]), "stride must be 2 values >= 1"),
    (lambda gy, b: (gy, b, 10, [3, 3], [1, 1], [-1, 1], [1, 1]), "padding must be 2 values >= 0"),
])
def test_grad_weight_bad_arguments(bad, match):
    x = spikes((2, 10, 5, 5))
    args = bad(torch.randn(2, 3, 5, 5), F.pack_spikes(x, dim=1))
    with pytest.raises(RuntimeError, match=match):
        OPS.spike_conv2d_grad_weight(*args)


def test_spike_density():
    x = spikes((3, 70, 5, 5), 0.3)
    assert spike_train.spike_density(F.pack_spikes(x, dim=1), x.numel()) == pytest.approx(x.mean().item())
    words = torch.tensor([-1, 0, 5, 1 << 62, -(1 << 63)], dtype=torch.int64)
    assert int(spike_train._device_popcount(words)) == 64 + 0 + 2 + 1 + 1


# ---- the straight-through training forms --------------------------------------------------------

STE_CASES = [  # (B, C, H, N, stride, padding, dilation, clip, bias)
    (4, 70, 9, 33, 1, 1, 1, None, False),
    (3, 20, 8, 16, 2, 1, 1, 0.05, True),
    (2, 64, 6, 10, 1, 2, 2, None, True),
]


def dense_qat(x, w, b, s, p, d, clip, g):
    x2, w2 = x.detach().requires_grad_(), w.detach().requires_grad_()
    b2 = None if b is None else b.detach().requires_grad_()
    y = torch.nn.functional.conv2d(x2, F.ternary_ste(w2, clip=clip), b2, s, p, d)
    grads = torch.autograd.grad(y, [x2, w2] + ([b2] if b is not None else []), g)
    return y, grads


@pytest.mark.parametrize("case", STE_CASES, ids=str)
@pytest.mark.parametrize("path", ["spike", "dense", "auto"])
def test_conv_ste_matches_dense_qat(case, path):
    B, C, H, N, s, p, d, clip, has_bias = case
    x = spikes((B, C, H, H)).requires_grad_()
    w = (torch.randn(N, C, 3, 3) * 0.1).requires_grad_()
    b = torch.randn(N).requires_grad_() if has_bias else None
    x0, w0 = x.detach().clone(), w.detach().clone()
    y = F.spike_ternary_conv2d_ste(x, w, b, s, p, d, clip=clip, path=path)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, w] + ([b] if has_bias else []), g)
    y_ref, grads_ref = dense_qat(x, w, b, s, p, d, clip, g)
    assert y.is_contiguous()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(grads[0], grads_ref[0])  # grad_input: dense QAT's op on the same ternary weight
    for got, want in zip(grads[1:], grads_ref[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert torch.equal(x.detach(), x0) and torch.equal(w.detach(), w0)


def test_conv_ste_spike_forward_is_the_packed_models_arithmetic():
    """The spike path's forward is the popcount kernel's: the exact integer sum times the scale
    (the reference's float32 epilogue), bit for bit."""
    x = spikes((3, 40, 7, 7))
    w = torch.randn(24, 40, 3, 3)
    y = F.spike_ternary_conv2d_ste(x, w.requires_grad_(), None, 1, 1, 1, path="spike")
    codes, scale = F.ternarize(w.detach())
    assert torch.equal(y, R.spike_ternary_conv2d(x, codes, scale, None, 1, 1, 1))


def test_linear_ste_matches_dense_qat():
    x = spikes((5, 7, 100), 0.3).requires_grad_()
    w = (torch.randn(40, 100) * 0.1).requires_grad_()
    b = torch.randn(40).requires_grad_()
    y = F.spike_ternary_linear_ste(x, w, b, path="spike")
    y_ref = torch.nn.functional.linear(x, F.ternary_ste(w), b)
    assert y.shape == (5, 7, 40)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, [x, w, b], g), torch.autograd.grad(y_ref, [x, w, b], g), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_ste_refuses_bad_input():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="only 0 and 1"):
        F.spike_ternary_conv2d_ste(torch.full((1, 3, 5, 5), 0.5), w, path="spike")
    with pytest.raises(ValueError, match="path must be one of"):
        F.spike_ternary_conv2d_ste(spikes((1, 3, 5, 5)), w, path="sparse")
    with pytest.raises(ValueError, match=r"weight must be \[N, 3, kh, kw\]"):
        F.spike_ternary_conv2d_ste(spikes((1, 3, 5, 5)), torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="needs float32"):
        F.spike_ternary_conv2d_ste(spikes((1, 3, 5, 5)).double(), w.double(), path="spike")
    with pytest.raises(ValueError, match="clip must be None"):
        F.spike_ternary_conv2d_ste(spikes((1, 3, 5, 5)), w, clip=-1.0)


def test_auto_takes_dense_for_other_dtypes_and_under_autocast():
    x, w = spikes((2, 8, 6, 6)), torch.randn(5, 8, 3, 3)
    bits = F.pack_spikes(x, dim=1)
    assert spike_train.resolve_train_path(x.double(), bits, w.double(), [1, 1], [1, 1], [1, 1], "auto") == "dense"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert spike_train.resolve_train_path(x, bits, w, [1, 1], [1, 1], [1, 1], "auto") == "dense"


def test_choose_path_measures_once_per_shape_and_density_band(monkeypatch):
    calls = []
    monkeypatch.setattr(spike_train, "PATH_CHOICES", {})
    monkeypatch.setattr(spike_train, "PATH_TIMES", {})
    monkeypatch.setattr(spike_train, "_measure_conv", lambda *a: calls.append(1) or ("dense", 2.0, 1.0))
    w = torch.randn(6, 8, 3, 3)
    for density, seed in ((0.12, 0), (0.13, 1), (0.6, 2)):
        x = spikes((2, 8, 6, 6), density, seed)
        path, measured = spike_train.choose_path(x, F.pack_spikes(x, dim=1), w, [1, 1], [1, 1], [1, 1])
        assert path == "dense" and measured == pytest.approx(x.mean().item())
    assert len(calls) == 2  # 0.12 and 0.13 share the (0.1, 0.15] band; 0.6 is another
    assert sorted(k[-1] for k in spike_train.PATH_CHOICES) == [0.15, 0.7]
    assert all(v == [2.0, 1.0] for v in spike_train.PATH_TIMES.values())


# ---- the layer ------------------------------------------------------------------------------------

def _layer_step(path, seed=0):
    torch.manual_seed(seed)
    layer = TernaryLIFConv2d(16, 24, 3, padding=1, bias=False, spike_input=True, train_path=path)
    x = spikes((2 * 3, 16, 8, 8), 0.25).view(2, 3, 16, 8, 8)
    out = layer(x)
    loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
    loss.backward()
    return layer, out, loss


def test_layer_train_paths_agree_and_are_reported():
    dense, out_d, loss_d = _layer_step("dense")
    spike, out_s, loss_s = _layer_step("spike")
    assert train_paths(spike) == {"": "spike"} and train_paths(dense) == {"": "dense"}
    # the currents agree within float32 rounding, so the spikes do except at a threshold tie
    assert (out_s != out_d).float().mean() < 1e-3
    torch.testing.assert_close(spike.weight.grad, dense.weight.grad, rtol=1e-4, atol=1e-3)
    auto, _, _ = _layer_step("auto")
    assert train_paths(auto)[""] in ("spike", "dense")


def test_set_train_path_and_bad_option():
    model = torch.nn.Sequential(TernaryLIFConv2d(4, 4, 3, spike_input=True), TernaryLIFConv2d(4, 4, 3))
    set_train_path(model, "dense")
    assert {m.train_path for m in model} == {"dense"}
    with pytest.raises(ValueError, match="train_path must be one of"):
        TernaryLIFConv2d(4, 4, 3, train_path="fast")
    with pytest.raises(ValueError, match="path must be one of"):
        set_train_path(model, "fast")


def test_isa_query_still_answers():
    assert _ternary_cpu_isa() in ("avx512", "avx2", "scalar")


def test_measuring_leaves_the_global_rng_alone():
    x, w = spikes((2, 8, 6, 6)), torch.randn(5, 8, 3, 3)
    state = torch.get_rng_state()
    spike_train._measure_conv(x, F.pack_spikes(x, dim=1), w, [1, 1], [1, 1], [1, 1])
    assert torch.equal(torch.get_rng_state(), state)


def test_info_lists_the_training_paths():
    from tna_kernels.info import train_path_table

    lines = train_path_table("tiny", batch=4)
    assert "features.2" in lines[0] and len(lines) >= 2
    assert all(("spike (" in ln or "dense (" in ln) for ln in lines[1:])


def test_measurement_times_both_gradients_in_the_spike_paths_layout(monkeypatch):
    """The path chooser times forward, weight gradient and input gradient; on the channels-last
    spike path the output gradient and the grad_input weight are channels-last, as in training."""
    seen = []
    real = spike_train.conv2d_input

    def spy(input_size, weight, grad_y, *args):
        seen.append((spike_train.is_channels_last(weight), spike_train.is_channels_last(grad_y)))
        return real(input_size, weight, grad_y, *args)

    monkeypatch.setattr(spike_train, "conv2d_input", spy)
    x, w = spikes((2, 8, 6, 6)), torch.randn(5, 8, 3, 3)
    path, t_spike, t_dense = spike_train._measure_conv(x, F.pack_spikes(x, dim=1), w, [1, 1], [1, 1], [1, 1],
                                                       True)
    assert path in ("spike", "dense") and t_spike > 0 and t_dense > 0
    assert (True, True) in seen and (False, False) in seen  # the spike path's and dense QAT's
    seen.clear()
    spike_train._measure_conv(x, F.pack_spikes(x, dim=1), w, [1, 1], [1, 1], [1, 1], False)
    assert set(seen) == {(False, False)}
