"""tna::spike_max_pool2d / tna::spike_max_pool2d_backward against the pure-torch reference
(nn.functional.max_pool2d and its gradient on the unpacked input), bit for bit."""

import itertools

import pytest
import torch

from tna_kernels import reference as R

OPS = torch.ops.tna

# (kernel, stride, padding, dilation): the spiking VGG's 2x2 pools (the fast path when H and W are
# even), overlapping and strided windows, padding, dilation, rectangular kernels
GEOMETRIES = [((2, 2), (2, 2), (0, 0), (1, 1)), ((3, 3), (2, 2), (1, 1), (1, 1)),
              ((2, 2), (1, 1), (0, 0), (1, 1)), ((3, 3), (3, 3), (0, 0), (1, 1)),
              ((2, 3), (2, 1), (1, 0), (1, 1)), ((3, 3), (1, 1), (1, 1), (2, 2)),
              ((1, 1), (2, 2), (0, 0), (1, 1))]
SHAPES = [(2, 3, 8, 8), (3, 2, 7, 9), (1, 5, 4, 16), (2, 70, 6, 6)]  # odd sizes; rows not / of 64 bits


def spikes(shape, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).float()  # windows with no spike, one and several


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_forward_and_backward_equal_max_pool(shape, geometry, ceil_mode):
    x = spikes(shape)
    try:
        y_ref, bits_ref = R.spike_max_pool2d(x, *geometry, ceil_mode)
    except RuntimeError:
        pytest.skip("torch rejects this geometry for this size")
    y, bits = OPS.spike_max_pool2d(x, *geometry, ceil_mode)
    assert torch.equal(y, y_ref) and torch.equal(bits, bits_ref)
    g = torch.randn(y.shape)
    want = R.spike_max_pool2d_backward(g, bits, list(shape), *geometry, ceil_mode)
    got = OPS.spike_max_pool2d_backward(g, bits, list(shape), *geometry, ceil_mode)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("geometry", GEOMETRIES[:2], ids=str)
def test_other_dtypes(dtype, geometry):
    x = spikes((2, 4, 10, 12)).to(dtype)
    y, bits = OPS.spike_max_pool2d(x, *geometry, False)
    y_ref, bits_ref = R.spike_max_pool2d(x, *geometry, False)
    assert y.dtype == dtype and torch.equal(y, y_ref) and torch.equal(bits, bits_ref)
    g = torch.randn(y.shape).to(dtype)
    got = OPS.spike_max_pool2d_backward(g, bits, list(x.shape), *geometry, False)
    assert got.dtype == dtype
    assert torch.equal(got, R.spike_max_pool2d_backward(g, bits, list(x.shape), *geometry, False))


def test_all_zero_and_all_one_windows_route_to_the_first_element():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 2:, 2:] = 1  # bottom-right window full of spikes, the others empty
    y, bits = OPS.spike_max_pool2d(x, (2, 2), (2, 2), (0, 0), (1, 1), False)
    g = torch.arange(1.0, 5.0).view(1, 1, 2, 2)
    got = OPS.spike_max_pool2d_backward(g, bits, [1, 1, 4, 4], (2, 2), (2, 2), (0, 0), (1, 1), False)
    want = torch.zeros(1, 1, 4, 4)
    for i, j in itertools.product(range(2), range(2)):
        want[0, 0, 2 * i, 2 * j] = g[0, 0, i, j]
    assert torch.equal(y, torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]])) and torch.equal(got, want)


def test_large_input_on_two_threads():
    x = spikes((64, 32, 32, 32), p=0.1, seed=1)
    geometry = GEOMETRIES[0]
    y, bits = OPS.spike_max_pool2d(x, *geometry, False)
    assert torch.equal(y, torch.nn.functional.max_pool2d(x, 2))
    g = torch.randn(y.shape)
    want = R.spike_max_pool2d_backward(g, bits, list(x.shape), *geometry, False)
    assert torch.equal(OPS.spike_max_pool2d_backward(g, bits, list(x.shape), *geometry, False), want)


def test_opcheck():
    x = spikes((2, 3, 6, 6))
    geometry = GEOMETRIES[1]
    torch.library.opcheck(OPS.spike_max_pool2d.default, (x, *geometry, True))
    y, bits = OPS.spike_max_pool2d(x, *geometry, True)
    torch.library.opcheck(OPS.spike_max_pool2d_backward.default,
                          (torch.randn(y.shape), bits, list(x.shape), *geometry, True))


def test_bad_input_is_named_and_inputs_are_left_alone():
    x = spikes((1, 2, 4, 4))
    kept = x.clone()
    geometry = GEOMETRIES[0]
    with pytest.raises(RuntimeError, match="only 0 and 1"):
        OPS.spike_max_pool2d(torch.full((1, 1, 2, 2), 0.5), *geometry, False)
    with pytest.raises(RuntimeError, match=r"x must be \[N, C, H, W\]"):
        OPS.spike_max_pool2d(x[0], *geometry, False)
    with pytest.raises(RuntimeError, match="padding must be at most half the kernel size"):
        OPS.spike_max_pool2d(x, (2, 2), (2, 2), (2, 2), (1, 1), False)
    with pytest.raises(RuntimeError, match="stride values must be >= 1"):
        OPS.spike_max_pool2d(x, (2, 2), (0, 2), (0, 0), (1, 1), False)
    with pytest.raises(RuntimeError, match="too small"):
        OPS.spike_max_pool2d(x, (5, 5), (1, 1), (0, 0), (1, 1), False)
    y, bits = OPS.spike_max_pool2d(x, *geometry, False)
    g = torch.randn(y.shape)
    with pytest.raises(RuntimeError, match="grad_y must have shape"):
        OPS.spike_max_pool2d_backward(g[:, :1], bits, list(x.shape), *geometry, False)
    with pytest.raises(RuntimeError, match="bits must have shape"):
        OPS.spike_max_pool2d_backward(g, bits[:, :0], list(x.shape), *geometry, False)
    with pytest.raises(RuntimeError, match="bits must be int64"):
        OPS.spike_max_pool2d_backward(g, bits.int(), list(x.shape), *geometry, False)
    assert torch.equal(x, kept)


@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=str)
def test_composed_cuda_path_equals_the_cpu_kernels(geometry, monkeypatch):
    """The CUDA backend (pack_spikes + max_pool2d; unpack + max_pool2d_with_indices per slice of
    samples) run on CPU tensors gives the C++ kernels' results."""
    import tna_kernels._utils
    from tna_kernels.ops.spike_pool import _spike_max_pool2d_backward_composed, _spike_max_pool2d_composed

    monkeypatch.setattr(tna_kernels._utils, "CHUNK_ELEMS", 700)  # slices of a few samples
    x = spikes((5, 3, 9, 10))
    y, bits = OPS.spike_max_pool2d(x, *geometry, True)
    y2, bits2 = _spike_max_pool2d_composed(x, *geometry, True)
    assert torch.equal(y, y2) and torch.equal(bits, bits2)
    g = torch.randn(y.shape)
    assert torch.equal(_spike_max_pool2d_backward_composed(g, bits, list(x.shape), *geometry, True),
                       OPS.spike_max_pool2d_backward(g, bits, list(x.shape), *geometry, True))


# ------------------------------------------------ autograd (register_autograd on spike_max_pool2d)

@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_with_grad_covers_the_backward(geometry, dtype):
    """x requires grad: opcheck runs the autograd registration check and the AOT dispatch test with
    its backward (tna::spike_max_pool2d_backward through register_autograd)."""
    x = spikes((2, 3, 6, 8)).to(dtype).requires_grad_(True)
    torch.library.opcheck(OPS.spike_max_pool2d.default, (x, *geometry, False))
    torch.library.opcheck(OPS.spike_max_pool2d.default, (x, *geometry, True))


def test_op_autograd_equals_max_pool_gradient():
    x = spikes((3, 4, 9, 10))
    geometry = GEOMETRIES[1]
    X = x.clone().requires_grad_(True)
    y, bits = OPS.spike_max_pool2d(X, *geometry, True)
    assert y.requires_grad and not bits.requires_grad
    g = torch.randn(y.shape)
    (y * g).sum().backward()
    X2 = x.clone().requires_grad_(True)
    ref = torch.nn.functional.max_pool2d(X2, *geometry, True)
    (ref * g).sum().backward()
    assert torch.equal(y.detach(), ref.detach()) and torch.equal(X.grad, X2.grad)


def test_spike_max_pool2d_module_uses_the_op_autograd():
    from tna_kernels import nn as tnn

    x = spikes((2, 3, 8, 8)).requires_grad_(True)
    y = tnn.SpikeMaxPool2d(2)(x)
    assert "GeneratedBackwardFor_tna_spike_max_pool2d" in type(y.grad_fn).__name__
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    torch.nn.functional.max_pool2d(x2, 2).sum().backward()
    assert torch.equal(x.grad, x2.grad)
    # [C, H, W] input, as nn.MaxPool2d takes it
    x3 = x.detach()[0].clone().requires_grad_(True)
    tnn.SpikeMaxPool2d(2)(x3).sum().backward()
    assert torch.equal(x3.grad, x2.grad[0])


def test_backward_skips_windows_that_lie_wholly_in_the_padding():
    """Dilation 2 with padding 1 over a one-row input: every window's rows are -1 and 1, outside
    the input (the forward gives -inf, as torch's). They route no gradient: before, the backward
    added theirs past the plane (heap corruption) or onto the wrong element."""
    torch.manual_seed(0)
    x = (torch.rand(1, 10, 1, 10) < 0.3).float()
    geometry = ((2, 2), (2, 1), (1, 1), (2, 1), False)  # kernel, stride, padding, dilation, ceil_mode
    y, bits = OPS.spike_max_pool2d(x, *geometry)
    assert torch.isinf(y).all()
    g = torch.randn(y.shape)
    for _ in range(50):  # an out-of-bounds write shows up as a crash or a changed result
        gx = OPS.spike_max_pool2d_backward(g, bits, list(x.shape), *geometry)
        assert torch.equal(gx, torch.zeros_like(x))


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 70, 6, 4), (2, 128, 4, 6), (1, 64, 2, 2)], ids=str)
@pytest.mark.parametrize("grad_layout", ["nchw", "channels_last"])
def test_channels_last_2x2_stays_channels_last(shape, grad_layout):
    """A channels-last input (the fused BN + LIF's spikes after a spike conv) is pooled in place:
    y and grad_x channels-last, bits = pack_spikes(x, dim=1); values and routing those of the NCHW
    path, bit for bit, for either layout of grad_y."""
    geometry = ([2, 2], [2, 2], [0, 0], [1, 1])
    x = spikes(shape, p=0.25, seed=4)
    xcl = x.contiguous(memory_format=torch.channels_last)
    y_ref, bits_ref = R.spike_max_pool2d(x, *geometry, False)
    y, bits = OPS.spike_max_pool2d(xcl, *geometry, False)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, y_ref)
    assert torch.equal(bits, OPS.pack_spikes(x, 1)) and bits.shape == (shape[0], shape[2], shape[3],
                                                                       (shape[1] + 63) // 64)
    g = torch.randn(y.shape)
    if grad_layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    want = R.spike_max_pool2d_backward(g.contiguous(), bits_ref, list(shape), *geometry, False)
    got = OPS.spike_max_pool2d_backward(g, bits, list(shape), *geometry, False)
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, want)
    torch.library.opcheck(OPS.spike_max_pool2d.default, (xcl, *geometry, False))
    torch.library.opcheck(OPS.spike_max_pool2d_backward.default, (g, bits, list(shape), *geometry, False))


def test_channels_last_other_geometries_take_the_nchw_path():
    x = spikes((2, 3, 7, 7)).contiguous(memory_format=torch.channels_last)
    y, bits = OPS.spike_max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    assert bits.dim() == 2 and torch.equal(y, R.spike_max_pool2d(x.contiguous(), [3, 3], [2, 2], [1, 1], [1, 1],
                                                                  False)[0])
    with pytest.raises(RuntimeError, match="bits \\[N, H, W, CW\\] \\(a channels-last forward\\) go with 2x2"):
        OPS.spike_max_pool2d_backward(torch.randn(2, 3, 4, 4), torch.zeros(2, 7, 7, 1, dtype=torch.int64),
                                      [2, 3, 7, 7], [3, 3], [2, 2], [1, 1], [1, 1], False)
    with pytest.raises(RuntimeError, match="bits must have shape \\[2, 8, 8, 1\\]"):
        OPS.spike_max_pool2d_backward(torch.randn(2, 3, 4, 4), torch.zeros(2, 8, 8, 2, dtype=torch.int64),
                                      [2, 3, 8, 8], [2, 2], [2, 2], [0, 0], [1, 1], False)


def same_bits(a, b) -> bool:
    """Equal values bit for bit: -0.0 is not +0.0, NaN equals NaN with the same payload."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    same_layout = a.dtype == b.dtype and a.shape == b.shape
    return same_layout and torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


@pytest.mark.parametrize("width", [2, 6, 8, 10, 16, 24, 70, 130], ids=lambda w: f"W{w}")
@pytest.mark.parametrize("grad_layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_nchw_2x2_backward_reads_grad_y_in_any_layout(width, grad_layout, dtype):
    """The NCHW 2x2 backward reads grad_y in place whatever its strides (the spike conv hands it a
    channels-last gradient); widths cover the vector blocks of four windows, their tails and rows of
    more than 32 windows. Bit for bit the reference's: a routed -0.0 lands as +0.0 (torch adds the
    gradient onto zeros), NaN and inf go through, +0.0 everywhere else."""
    geometry = ([2, 2], [2, 2], [0, 0], [1, 1])
    shape = (2, 5, 4, width)
    x = spikes(shape, p=0.3, seed=width).to(dtype)
    y, bits = OPS.spike_max_pool2d(x, *geometry, False)
    g = torch.randn(y.shape).to(dtype)
    g.view(-1)[:4] = torch.tensor([-0.0, float("nan"), float("inf"), -0.0]).to(dtype)
    if grad_layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    elif grad_layout == "strided":
        g = torch.stack([g, torch.randn(y.shape).to(dtype)], -1)[..., 0]
    want = R.spike_max_pool2d_backward(g.contiguous(), bits, list(shape), *geometry, False)
    got = OPS.spike_max_pool2d_backward(g, bits, list(shape), *geometry, False)
    assert got.is_contiguous() and same_bits(got, want)


@pytest.mark.parametrize("grad_layout", ["nchw", "channels_last"])
def test_channels_last_2x2_backward_matches_the_reference_bits(grad_layout):
    """The channels-last 2x2 backward, bit for bit the reference's (-0.0, NaN and inf gradients)."""
    geometry = ([2, 2], [2, 2], [0, 0], [1, 1])
    x = spikes((2, 70, 4, 6), p=0.3, seed=9)
    y, bits = OPS.spike_max_pool2d(x.contiguous(memory_format=torch.channels_last), *geometry, False)
    g = torch.randn(y.shape)
    g.view(-1)[:6] = torch.tensor([-0.0, float("nan"), float("inf"), -0.0, -0.0, -0.0])
    if grad_layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    want = R.spike_max_pool2d_backward(g.contiguous(), R.spike_max_pool2d(x, *geometry, False)[1], list(x.shape),
                                       *geometry, False)
    got = OPS.spike_max_pool2d_backward(g, bits, list(x.shape), *geometry, False)
    assert same_bits(got.contiguous(), want)
