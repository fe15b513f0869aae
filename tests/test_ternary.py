"""Ternary weights: packed format v1, ternariser, STE, and the linear kernels (C++ CPU on every
instruction-set path this machine has; Triton under the interpreter in the `triton` lane).
Conv kernels and modules: tests/test_ternary_conv.py."""

import pytest
import torch
from conftest import triton_device

from tna_kernels import functional as F
from tna_kernels import reference as R
from tna_kernels.ops.ternary import FORMAT_VERSION, PackedTernary

AWKWARD_K = (1, 3, 63, 64, 65, 511, 513)
def rand_codes(*shape, p_zero=0.4):
    u = torch.rand(shape)
    c = torch.where(u < p_zero, 0, torch.where(torch.rand(shape) < 0.5, -1, 1))
    return c.to(torch.int8)


def rand_spikes(*shape, density=0.15, dtype=torch.float32):
    return (torch.rand(shape) < density).to(dtype)


# ---- format v1 ----------------------------------------------------------------------------------

def test_golden_packing_example():
    # Pins the bit layout by hand. Row 0, K = 65: c[0] = +1, c[1] = -1, c[3] = +1, c[63] = +1,
    # c[64] = -1. Row 1: all +1. Row 2: all 0.
    codes = torch.zeros(3, 65, dtype=torch.int8)
    codes[0, [0, 3, 63]] = 1
    codes[0, [1, 64]] = -1
    codes[1] = 1
    words = torch.ops.tna.pack_ternary(codes)
    assert words.dtype == torch.int64 and words.shape == (3, 2, 2)
    expect = torch.tensor([
        [[(1 << 0) | (1 << 3) | -(1 << 63), 0],   # P: bits 0, 3, 63 (bit 63 is the int64 sign bit)
         [1 << 1, 1 << 0]],                      # N: bit 1 of word 0, bit 0 of word 1 (k = 64)
        [[-1, 1], [0, 0]],                       # all +1: word 0 all ones, word 1 only bit 0
        [[0, 0], [0, 0]],
    ], dtype=torch.int64)
    assert torch.equal(words, expect)
    assert torch.equal(R.pack_ternary(codes), expect)
    # Spikes use the same bit order, one plane.
    s = torch.zeros(2, 65)
    s[0, [0, 2, 64]] = 1
    assert torch.equal(torch.ops.tna.pack_spikes(s), torch.tensor([[5, 1], [0, 0]]))


@pytest.mark.parametrize("K", AWKWARD_K)
def test_pack_roundtrip_awkward_k(K):
    codes = rand_codes(7, K)
    words = torch.ops.tna.pack_ternary(codes)
    assert words.shape == (7, 2, (K + 63) // 64)
    assert torch.equal(words, R.pack_ternary(codes))
    assert torch.equal(torch.ops.tna.unpack_ternary(words, K, FORMAT_VERSION), codes)
    assert torch.equal(R.unpack_ternary(words, K), codes)
    s = rand_spikes(5, K, density=0.5)
    bits = torch.ops.tna.pack_spikes(s)
    assert torch.equal(bits, R.pack_spikes(s))
    assert torch.equal(torch.ops.tna.unpack_spikes(bits, K), s.to(torch.uint8))


def test_pack_leading_dims_and_functional_layouts():
    codes = rand_codes(4, 3, 5, 70)
    assert torch.equal(torch.ops.tna.pack_ternary(codes), R.pack_ternary(codes))
    conv = rand_codes(6, 70, 3, 3)  # torch conv layout [N, C, kh, kw]
    packed = F.pack_ternary(conv, scale=torch.rand(6))
    assert packed.words.shape == (6, 3, 3, 2, 2) and packed.K == 70 and packed.is_conv
    assert torch.equal(F.unpack_ternary(packed), conv)
    s = rand_spikes(2, 70, 5, 4, density=0.5)
    bits = F.pack_spikes(s, dim=1)
    assert bits.shape == (2, 5, 4, 2)
    assert torch.equal(F.unpack_spikes(bits, 70, dim=1), s)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int32, torch.float16, torch.bfloat16,
                                   torch.float64])
def test_pack_spikes_dtypes(dtype):
    s = rand_spikes(3, 100, density=0.3)
    assert torch.equal(torch.ops.tna.pack_spikes(s.to(dtype)), R.pack_spikes(s))
    # packing across inner axes (NCHW along C): float32 takes the vectorised path for 8-pixel groups
    s4 = rand_spikes(2, 100, 5, 7, density=0.3)
    for t in (s4.to(dtype), s4):
        assert torch.equal(F.pack_spikes(t, dim=1), R.pack_spikes(s4.movedim(1, -1)))


@pytest.mark.parametrize("K", [8, 16, 20, 24, 32, 63, 72, 130])
def test_pack_spikes_float_rows_in_groups_of_eight(K):
    """float32 rows pack 8 values per compare (a partial last word too: 16- and 32-channel rows);
    the K % 8 values left over join the same word. A value other than 0/1 is refused wherever it
    sits (in a group of 8 or among the leftovers)."""
    s = rand_spikes(9, K, density=0.4)
    assert torch.equal(torch.ops.tna.pack_spikes(s), R.pack_spikes(s))
    for col in {0, K // 2, K - 1}:
        bad = s.clone()
        bad[4, col] = 2.0
        with pytest.raises(RuntimeError, match="0 and 1"):
            torch.ops.tna.pack_spikes(bad)


@pytest.mark.parametrize("shape", [(2, 70, 5, 4), (3, 64, 2, 3), (1, 5, 3, 3), (2, 130, 1, 2)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_pack_spikes_along_channels_reads_channels_last_in_place(shape, dtype):
    """A channels-last [B, C, H, W] packs along C straight from memory (no NCHW copy): the same
    words as the NCHW tensor, and 0/1 still checked."""
    s = rand_spikes(*shape, density=0.4).to(dtype)
    cl = s.contiguous(memory_format=torch.channels_last)
    assert torch.equal(F.pack_spikes(cl, dim=1), F.pack_spikes(s, dim=1))
    if dtype == torch.float32:
        bad = cl.clone()
        bad[0, 0, 0, 0] = 0.5
        with pytest.raises(RuntimeError, match="0 and 1"):
            F.pack_spikes(bad, dim=1)


def test_packing_never_modifies_inputs():
    codes = rand_codes(5, 130).t().contiguous().t()  # non-contiguous view
    s = rand_spikes(3, 130)[:, ::1]
    before_c, before_s = codes.clone(), s.clone()
    torch.ops.tna.pack_ternary(codes)
    F.pack_spikes(s)
    assert torch.equal(codes, before_c) and torch.equal(s, before_s)


def test_bad_codes_rejected():
    codes = rand_codes(4, 10)
    codes[2, 7] = 2
    msg = r"codes must contain only -1, 0 and \+1.*found 2 at flat index 27"
    with pytest.raises(RuntimeError, match=msg):
        torch.ops.tna.pack_ternary(codes)
    with pytest.raises(RuntimeError, match="codes must be int8"):
        torch.ops.tna.pack_ternary(codes.float())
    with pytest.raises(TypeError, match="codes must be an int8"):
        F.pack_ternary(codes.to(torch.int32))
    with pytest.raises(ValueError, match=r"codes must be a linear weight \[N, K\] or a conv2d"):
        F.pack_ternary(rand_codes(2, 3, 4))


@pytest.mark.parametrize("K,where", [(64, 5), (64, 40), (130, 70), (130, 101), (130, 129)])
def test_bad_code_found_in_full_words_and_tails(K, where):
    """A code outside {-1, 0, 1} anywhere in a row (the vector path's two 32-code halves of a full
    word, the scalar tail) is rejected with its flat index; valid rows pack as the reference."""
    codes = rand_codes(3, K)
    assert torch.equal(torch.ops.tna.pack_ternary(codes), R.pack_ternary(codes))
    for bad in (2, -2, 127, -128):
        c = codes.clone()
        c[1, where] = bad
        with pytest.raises(RuntimeError, match=rf"found {bad} at flat index {K + where}"):
            torch.ops.tna.pack_ternary(c)


def test_bad_spikes_rejected():
    s = rand_spikes(3, 80)
    s[1, 5] = 0.5
    with pytest.raises(RuntimeError, match="spikes must contain only 0 and 1; found 0.5 at flat index 85"):
        torch.ops.tna.pack_spikes(s)
    s[1, 5] = float("nan")
    with pytest.raises(RuntimeError, match="spikes must contain only 0 and 1"):
        F.pack_spikes(s)
    s4 = torch.zeros(2, 70, 3, 3)
    s4[1, 5, 2, 1] = 2
    with pytest.raises(RuntimeError, match="found 2 at flat index 682"):
        F.pack_spikes(s4, dim=1)  # the strided (packing across the inner axes) path
    with pytest.raises(RuntimeError, match=r"dim must be in \[-4, 3\], got 4"):
        torch.ops.tna.pack_spikes(s4, 4)


def test_bad_packed_words_rejected():
    codes = rand_codes(3, 70)
    words = torch.ops.tna.pack_ternary(codes)
    with pytest.raises(RuntimeError, match="version: this build reads packed ternary format v1 only, got v2"):
        torch.ops.tna.unpack_ternary(words, 70, 2)
    with pytest.raises(RuntimeError, match=r"packed must have 4 words per plane for K = 200"):
        torch.ops.tna.unpack_ternary(words, 200, 1)
    clash = words.clone()
    clash[1, 0, 0] |= 1
    clash[1, 1, 0] |= 1
    with pytest.raises(RuntimeError, match="row 1 has a bit set in both the P and N planes"):
        torch.ops.tna.unpack_ternary(clash, 70, 1)
    pad = words.clone()
    pad[2, 1, 1] |= 1 << 10  # k = 74 >= K
    with pytest.raises(RuntimeError, match="row 2 .*padding bit"):
        torch.ops.tna.unpack_ternary(pad, 70, 1)
    scale = torch.ones(3)
    bits = F.pack_spikes(rand_spikes(2, 70))
    with pytest.raises(RuntimeError, match="packed_w is not valid format-v1 data: row 1"):
        torch.ops.tna.spike_ternary_linear(bits, clash, scale, None, 70, 1)
    with pytest.raises(RuntimeError, match="packed_w is not valid format-v1 data: row 2"):
        torch.ops.tna.ternary_linear(torch.randn(2, 70), pad, scale, None, 1)


def test_packed_container_validates_version_and_shapes():
    p = F.pack_ternary(rand_codes(3, 70), scale=torch.rand(3))
    with pytest.raises(ValueError, match="version: this build reads packed ternary format v1 only, got v7"):
        PackedTernary(p.words, p.scale, p.K, None, version=7)
    with pytest.raises(ValueError, match="K = 200 does not match"):
        PackedTernary(p.words, p.scale, 200)
    with pytest.raises(ValueError, match=r"scale must be float32 of shape \(3,\)"):
        PackedTernary(p.words, torch.ones(4), 70)
    with pytest.raises(TypeError, match="words must be an int64"):
        PackedTernary(p.words.int(), p.scale, 70)
    d = p.state_dict()
    assert d["version"] == FORMAT_VERSION
    q = PackedTernary.from_state_dict(d)
    assert torch.equal(q.words, p.words) and q.K == p.K
    with pytest.raises(ValueError, match="got v0"):
        PackedTernary.from_state_dict({**d, "version": 0})
    with pytest.raises(ValueError, match="has no format version"):
        PackedTernary.from_state_dict({k: v for k, v in d.items() if k != "version"})


def test_ops_reject_wrong_version_and_shapes():
    p = F.pack_ternary(rand_codes(3, 70), scale=torch.rand(3))
    x = torch.randn(2, 70)
    bits = F.pack_spikes(rand_spikes(2, 70))
    with pytest.raises(RuntimeError, match="version: .*got v2"):
        torch.ops.tna.ternary_linear(x, p.words, p.scale, None, 2)
    with pytest.raises(RuntimeError, match="version: .*got v0"):
        torch.ops.tna.spike_ternary_linear(bits, p.words, p.scale, None, 70, 0)
    with pytest.raises(RuntimeError, match=r"packed_w has 2 words per plane but K = 200"):
        torch.ops.tna.ternary_linear(torch.randn(2, 200), p.words, p.scale, None, 1)
    with pytest.raises(ValueError, match=r"x must have shape \[..., 70\]"):
        F.ternary_linear(torch.randn(2, 71), p)
    with pytest.raises(RuntimeError, match=r"scale must have shape \[3\]"):
        torch.ops.tna.ternary_linear(x, p.words, torch.ones(4), None, 1)
    with pytest.raises(RuntimeError, match="scale must be float32"):
        torch.ops.tna.ternary_linear(x, p.words, torch.ones(3, dtype=torch.float64), None, 1)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[3\]"):
        torch.ops.tna.spike_ternary_linear(bits, p.words, p.scale, torch.ones(2), 70, 1)
    with pytest.raises(RuntimeError, match=r"spike_bits must have shape \[..., 2\]"):
        torch.ops.tna.spike_ternary_linear(bits[:, :1], p.words, p.scale, None, 70, 1)
    with pytest.raises(TypeError, match="spike_bits must be int64"):
        F.spike_ternary_linear(bits.int(), p)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        F.ternary_linear(x.int(), p)
    with pytest.raises(RuntimeError, match="x must be a floating-point tensor"):
        torch.ops.tna.ternary_linear(x.int(), p.words, p.scale, None, 1)
    with pytest.raises(ValueError, match=r"weight must be a linear weight"):
        F.ternary_linear(x, F.pack_ternary(rand_codes(3, 70, 1, 1)))


# ---- ternariser + STE ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["twn", "absmean"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("shape", [(5, 33), (6, 3, 3, 3), (1, 1), (4, 300), (8, 3, 3, 67)])  # + vector rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_ternarize_matches_reference(method, per_channel, shape, dtype):
    w = (torch.randn(shape) * torch.rand(shape[0], *([1] * (len(shape) - 1))) * 3).to(dtype)
    w_before = w.clone()
    codes, scale = F.ternarize(w, method=method, per_channel=per_channel)
    rc, rs = R.ternarize(w, method, per_channel)
    assert torch.equal(w, w_before)
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    assert torch.equal(codes, rc)
    torch.testing.assert_close(scale, rs, rtol=1e-6, atol=0)
    if not per_channel:
        assert torch.all(scale == scale[0])


def test_ternarize_semantics_by_hand():
    w = torch.tensor([[1.0, -0.2, 0.6, -2.2], [0.0, 0.0, 0.0, 0.0]])
    # twn row 0: mean|w| = 1.0, delta = 0.7 -> codes [1, 0, 0, -1], scale = (1 + 2.2) / 2
    codes, scale = F.ternarize(w, method="twn")
    assert codes.tolist() == [[1, 0, 0, -1], [0, 0, 0, 0]]
    assert scale.tolist() == pytest.approx([1.6, 0.0])
    # absmean row 0: g = 1.0 -> round([1, -0.2, 0.6, -2.2] / 1.00001) clipped -> [1, 0, 1, -1]
    codes, scale = F.ternarize(w, method="absmean")
    assert codes.tolist() == [[1, 0, 1, -1], [0, 0, 0, 0]]
    assert scale.tolist() == pytest.approx([1.0, 0.0])


def test_ternarize_bad_input():
    with pytest.raises(ValueError, match="method must be one of"):
        F.ternarize(torch.randn(3, 4), method="sign")
    with pytest.raises(TypeError, match="w must be a floating-point"):
        F.ternarize(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"w must have shape \[out_channels, ...\]"):
        F.ternarize(torch.randn(4))
    w = torch.randn(3, 4)
    w[1, 2] = float("nan")
    with pytest.raises(RuntimeError, match="w must be finite .*output channel 1"):
        F.ternarize(w)


@pytest.mark.parametrize("method", ["twn", "absmean"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ternary_ste_forward_and_gradient(method, clip):
    w = (torch.randn(6, 20) * 1.5).requires_grad_()
    out = F.ternary_ste(w, method=method, clip=clip)
    codes, scale = R.ternarize(w, method, True)
    assert torch.equal(out.detach(), codes.float() * scale[:, None])
    g = torch.randn_like(out)
    (gw,) = torch.autograd.grad(out, w, g)
    expect = g if clip is None else g * (w.detach().abs() <= clip)
    assert torch.equal(gw, expect)  # the documented rule, exactly
    w2 = w.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(R.ternary_ste(w2, method, True, clip), w2, g)
    assert torch.equal(gw, gr)
    if clip is not None:
        assert (w.detach().abs() > clip).any() and (gw == 0).any()


def test_quantize_pack_is_ternarize_then_pack():
    w = torch.randn(16, 3, 3, 3)
    b = torch.randn(16)
    p = F.quantize_pack(w, method="absmean", bias=b)
    codes, scale = F.ternarize(w, method="absmean")
    assert torch.equal(p.codes(), codes) and torch.equal(p.scale, scale) and torch.equal(p.bias, b)
    assert torch.equal(p.words, F.pack_ternary(codes).words)
    torch.testing.assert_close(p.dequantize(), codes.float() * scale[:, None, None, None], rtol=0, atol=0)


# ---- spike x ternary linear ----------------------------------------------------------------------

def _packed(N, K, bias=True):
    codes = rand_codes(N, K)
    scale = torch.rand(N) + 0.1
    b = torch.randn(N) if bias else None
    return codes, scale, b, F.pack_ternary(codes, scale, b)


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (3, 5, 63), (5, 4, 64), (17, 67, 65), (70, 9, 513),
                                   (8, 12, 1152), (130, 66, 200)])
@pytest.mark.parametrize("bias", [True, False])
def test_spike_linear_bit_exact(isa, M, N, K, bias):
    codes, scale, b, p = _packed(N, K, bias)
    s = rand_spikes(M, K, density=0.2)
    y = F.spike_ternary_linear(F.pack_spikes(s), p)
    assert y.dtype == torch.float32 and y.shape == (M, N)
    assert torch.equal(y, R.spike_ternary_linear(s, codes, scale, b))


def test_spike_linear_dense_extremes(isa):
    # All-ones spikes against all +1 / all -1 rows: the largest sums, every word, every lane.
    K, N = 1000, 6
    codes = torch.ones(N, K, dtype=torch.int8)
    codes[1::2] = -1
    codes[4, 500:] = 0
    p = F.pack_ternary(codes)
    s = torch.ones(9, K)
    y = F.spike_ternary_linear(F.pack_spikes(s), p)
    assert torch.equal(y, R.spike_ternary_linear(s, codes, torch.ones(N)))
    assert y[0].tolist() == [1000, -1000, 1000, -1000, 500, -1000]


def test_spike_linear_leading_dims_and_no_mutation(isa):
    codes, scale, b, p = _packed(10, 100)
    s = rand_spikes(4, 3, 100)
    bits = F.pack_spikes(s)
    before = [t.clone() for t in (bits, p.words, p.scale, p.bias)]
    y = F.spike_ternary_linear(bits, p)
    assert y.shape == (4, 3, 10)
    assert torch.equal(y, R.spike_ternary_linear(s, codes, scale, b))
    for t, t0 in zip((bits, p.words, p.scale, p.bias), before, strict=True):
        assert torch.equal(t, t0)


def test_isa_and_algo_overrides_reject_bad_values(monkeypatch):
    monkeypatch.setenv("TNA_TERNARY_ISA", "sse9")
    with pytest.raises(RuntimeError, match="TNA_TERNARY_ISA must be one of auto, scalar, avx2, avx512"):
        torch.ops.tna.ternary_cpu_isa()
    codes, scale, b, p = _packed(4, 100)
    bits = F.pack_spikes(rand_spikes(3, 100))
    monkeypatch.setenv("TNA_TERNARY_ISA", "scalar")
    monkeypatch.setenv("TNA_TERNARY_ALGO", "event")
    with pytest.raises(RuntimeError, match="TNA_TERNARY_ALGO=event needs the avx2 or avx512 kernels"):
        F.spike_ternary_linear(bits, p)
    monkeypatch.setenv("TNA_TERNARY_ALGO", "fast")
    with pytest.raises(RuntimeError, match="TNA_TERNARY_ALGO must be one of auto, popcount, event"):
        F.spike_ternary_linear(bits, p)


@pytest.mark.parametrize("density", [0.02, 0.15, 0.6])
def test_spike_linear_auto_choice_is_exact(density, monkeypatch):
    monkeypatch.delenv("TNA_TERNARY_ALGO", raising=False)
    codes, scale, b, p = _packed(150, 600)
    s = rand_spikes(40, 600, density=density)
    y = F.spike_ternary_linear(F.pack_spikes(s), p)
    assert torch.equal(y, R.spike_ternary_linear(s, codes, scale, b))


def test_kmajor_layout_and_cache(isa):
    codes, scale, b, p = _packed(130, 200)
    km = torch.ops.tna.ternary_kmajor(p.words, 200, 1)
    assert km.dtype == torch.int8 and km.shape == (256, 256)
    assert torch.equal(km[:200, :130], codes.T) and not km[200:].any() and not km[:, 130:].any()
    s = rand_spikes(33, 200, density=0.1)
    bits = F.pack_spikes(s)
    ref = R.spike_ternary_linear(s, codes, scale, b)
    assert torch.equal(torch.ops.tna.spike_ternary_linear(bits, p.words, p.scale, p.bias, 200, 1, km), ref)
    if isa[0] != "scalar":
        assert p.kmajor() is p.kmajor()  # built once, cached on the PackedTernary
    assert torch.equal(F.spike_ternary_linear(bits, p), ref)
    with pytest.raises(RuntimeError, match=r"kmajor must be the contiguous int8 \[256, 256\]"):
        torch.ops.tna.spike_ternary_linear(bits, p.words, p.scale, p.bias, 200, 1, km[:, :128])


def test_spike_linear_large_k_beyond_int16(monkeypatch):
    # 40000 active inputs overflow the event kernel's int16 accumulators: auto must use popcount,
    # forcing the event kernel must be refused.
    K = 40000
    codes = torch.ones(3, K, dtype=torch.int8)
    codes[1] = -1
    p = F.pack_ternary(codes)
    bits = F.pack_spikes(torch.ones(2, K))
    monkeypatch.delenv("TNA_TERNARY_ALGO", raising=False)
    assert F.spike_ternary_linear(bits, p)[0].tolist() == [40000.0, -40000.0, 40000.0]
    monkeypatch.setenv("TNA_TERNARY_ALGO", "event")
    with pytest.raises(RuntimeError, match="K <= 32767"):
        torch.ops.tna.spike_ternary_linear(bits, p.words, p.scale, None, K, 1)


def test_linear_ops_accept_non_contiguous_inputs(isa):
    codes, scale, b, p = _packed(9, 130)
    x = torch.randn(130, 6).t()  # non-contiguous [6, 130]
    y = F.ternary_linear(x, p)
    ref = R.ternary_linear(x.double(), codes, scale, b)
    assert ((y.double() - ref).abs() <= _float_tol(x, codes, scale)).all()
    s = rand_spikes(130, 5).t()
    bits = F.pack_spikes(s)
    assert torch.equal(F.spike_ternary_linear(bits, p), R.spike_ternary_linear(s, codes, scale, b))
    words_nc = p.words.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    q = PackedTernary(words_nc, p.scale, p.K, p.bias)
    assert torch.equal(F.spike_ternary_linear(bits, q), F.spike_ternary_linear(bits, p))


# ---- float x ternary linear ----------------------------------------------------------------------

def _float_tol(x, codes, scale):
    # float32 rounding of a K-term sum: K * eps * sum|x| per output, times scale.
    mag = (x.double().abs() @ codes.double().abs().T) * scale.double()
    return 4 * x.shape[-1] * torch.finfo(torch.float32).eps * mag + 1e-6


@pytest.mark.parametrize("M,N,K", [(1, 3, 1), (4, 33, 65), (8, 8, 513), (9, 5, 64), (12, 7, 100),
                                   (40, 17, 130), (20, 600, 1000)])  # last: several GEMM K-blocks
@pytest.mark.parametrize("bias", [True, False])
def test_ternary_linear_float32(isa, M, N, K, bias, monkeypatch):
    monkeypatch.setenv("TNA_GEMM_BLOCK", "200000")  # decoded-weight block: 320 columns at N = 600
    codes, scale, b, p = _packed(N, K, bias)
    x = torch.randn(M, K)
    y = F.ternary_linear(x, p)
    ref = R.ternary_linear(x.double(), codes, scale, b)
    assert y.dtype == torch.float32
    assert ((y.double() - ref).abs() <= _float_tol(x, codes, scale)).all()


def test_ternary_linear_spike_input_matches_spike_kernel(isa):
    # On 0/1 inputs both kernels sum exact integers and share the epilogue: identical results.
    codes, scale, b, p = _packed(20, 300)
    for m in (3, 50):
        s = rand_spikes(m, 300)
        assert torch.equal(F.ternary_linear(s, p), F.spike_ternary_linear(F.pack_spikes(s), p))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_ternary_linear_dtypes(dtype):
    codes, scale, b, p = _packed(7, 90)
    x = torch.randn(5, 2, 90).to(dtype)
    y = F.ternary_linear(x, p)
    assert y.dtype == dtype and y.shape == (5, 2, 7)
    ref = R.ternary_linear(x.double(), codes, scale, b)
    tol = 1e-10 if dtype == torch.float64 else 2e-2 * (ref.abs().max().item() + 1)
    assert (y.double() - ref).abs().max().item() <= tol


def test_ternary_linear_gradcheck():
    codes, scale, b, p = _packed(6, 70)
    x = torch.randn(3, 70, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: F.ternary_linear(x, p), (x,))
    x = torch.randn(9, 70, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: F.ternary_linear(x, p), (x,))


def test_ternary_linear_backward_matches_reference():
    codes, scale, b, p = _packed(12, 130)
    bias = b.clone().requires_grad_()
    pb = PackedTernary(p.words, p.scale, p.K, bias)
    x = torch.randn(4, 5, 130, requires_grad=True)
    g = torch.randn(4, 5, 12)
    gx, gb = torch.autograd.grad(torch.ops.tna.ternary_linear(x, pb.words, pb.scale, bias, 1), (x, bias), g)
    x2 = x.detach().double().requires_grad_()
    b2 = b.double().requires_grad_()
    gx2, gb2 = torch.autograd.grad(R.ternary_linear(x2, codes, scale, b2), (x2, b2), g.double())
    torch.testing.assert_close(gx.double(), gx2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb.double(), gb2, rtol=1e-5, atol=1e-5)


def test_packed_ops_refuse_trainable_scale():
    codes, scale, b, p = _packed(3, 10)
    q = PackedTernary(p.words, p.scale.clone().requires_grad_(), p.K)
    with pytest.raises(ValueError, match="weight.scale must not require grad"):
        F.ternary_linear(torch.randn(2, 10), q)


def test_opcheck_linear_ops():
    codes, scale, b, p = _packed(5, 70)
    x = torch.randn(3, 70, requires_grad=True)
    bits = F.pack_spikes(rand_spikes(3, 70))
    ops = torch.ops.tna
    samples = [
        (ops.pack_ternary, (codes,)),
        (ops.unpack_ternary, (p.words, 70, 1)),
        (ops.pack_spikes, (rand_spikes(3, 70),)),
        (ops.unpack_spikes, (bits, 70)),
        (ops.ternarize, (torch.randn(5, 70), "twn", True, True)),
        (ops.ternarize, (torch.randn(5, 70), "absmean", False, False)),
        (ops.ternary_linear, (x, p.words, p.scale, p.bias, 1)),
        (ops.ternary_linear, (torch.randn(20, 70), p.words, p.scale, None, 1)),
        (ops.ternary_linear_grad_input, (torch.randn(3, 5), p.words, p.scale, 70, 1)),
        (ops.spike_ternary_linear, (bits, p.words, p.scale, p.bias, 70, 1)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


# ---- Triton (interpreter on CPU, or a GPU) ---------------------------------------------------------

@pytest.mark.triton
@pytest.mark.parametrize("M,N,K", [(3, 5, 70), (17, 9, 130)])
def test_triton_spike_linear_matches_cpu(M, N, K):
    from tna_kernels.triton import ternary as T

    dev = triton_device()
    codes, scale, b, p = _packed(N, K)
    s = rand_spikes(M, K, density=0.3)
    bits = F.pack_spikes(s)
    y = T.spike_ternary_linear(bits.to(dev), p.words.to(dev), scale.to(dev), b.to(dev), K, 1)
    assert torch.equal(y.cpu(), F.spike_ternary_linear(bits, p))
    assert torch.equal(y.cpu(), R.spike_ternary_linear(s, codes, scale, b))


@pytest.mark.triton
@pytest.mark.parametrize("M,N,K", [(3, 5, 70), (17, 9, 130)])
def test_triton_float_linear_matches_reference(M, N, K):
    from tna_kernels.triton import ternary as T

    dev = triton_device()
    codes, scale, b, p = _packed(N, K)
    x = torch.randn(M, K)
    y = T.ternary_linear(x.to(dev), p.words.to(dev), scale.to(dev), b.to(dev), 1).cpu()
    ref = R.ternary_linear(x.double(), codes, scale, b)
    assert ((y.double() - ref).abs() <= _float_tol(x, codes, scale)).all()
    gy = torch.randn(M, N)
    gx = T.ternary_linear_grad_input(gy.to(dev), p.words.to(dev), scale.to(dev), K, 1).cpu()
    torch.testing.assert_close(gx, (gy * scale) @ codes.float(), rtol=1e-5, atol=1e-5)


def _bf16_dot_in_interpreter(monkeypatch):
    """Triton's interpreter multiplies bfloat16 tl.dot tiles as their uint16 storage; this test
    patch reads them as bfloat16 (widened to float32, exact) so the kernels' bfloat16 dot runs here."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    dot = InterpreterBuilder.create_dot

    def widen(t):
        if t.dtype.scalar != tl.bfloat16:
            return t
        return TensorHandle((t.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    monkeypatch.setattr(InterpreterBuilder, "create_dot",
                        lambda self, a, b, d, *rest: dot(self, widen(a), widen(b), d, *rest))


def _one_rounding_tol(ref, dtype, mag, terms, ulps=0.5):
    """|y - ref| for a result rounded once to ``dtype`` (half an ulp) after float32 sums of ``terms``
    exact products of total magnitude ``mag``."""
    return ulps * torch.finfo(dtype).eps * ref.abs() + 4 * terms * torch.finfo(torch.float32).eps * mag + 1e-6


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,N,K", [(3, 5, 70), (17, 9, 130), (33, 20, 257)])
def test_triton_float_linear_half_inputs(dtype, M, N, K, monkeypatch):
    """float16 / bfloat16 x: the kernel's half branch (tl.dot on the input dtype, float32
    accumulation) gives the float64 reference rounded once; the input gradient likewise."""
    from conftest import INTERPRET

    from tna_kernels.triton import ternary as T

    if INTERPRET and dtype == torch.bfloat16:
        _bf16_dot_in_interpreter(monkeypatch)
        monkeypatch.setattr(T, "_half_dot", lambda dt: True)
    kern = T._float_linear_kernel
    run, flags = kern.run, []
    monkeypatch.setattr(kern, "run", lambda *a, **kw: (flags.append(kw["HALF_DOT"]), run(*a, **kw))[1],
                        raising=False)
    dev = triton_device()
    codes, scale, b, p = _packed(N, K)
    x = (torch.randn(M, K) * 4).to(dtype)
    y = T.ternary_linear(x.to(dev), p.words.to(dev), scale.to(dev), b.to(dev), 1).cpu()
    assert flags == [True] and y.dtype == dtype
    ref = (x.double() @ codes.double().T) * scale.double() + b.double()
    mag = (x.double().abs() @ codes.double().abs().T) * scale.double()
    # The interpreter's float32 -> bfloat16 .to() truncates (a GPU rounds to nearest even): one ulp.
    ulps = 1.0 if INTERPRET and dtype == torch.bfloat16 else 0.5
    assert ((y.double() - ref).abs() <= _one_rounding_tol(ref, dtype, mag, K, ulps)).all()
    gy = torch.randn(M, N).to(dtype)
    gx = T.ternary_linear_grad_input(gy.to(dev), p.words.to(dev), scale.to(dev), K, 1).cpu()
    assert gx.dtype == dtype
    gref = (gy.double() * scale.double()) @ codes.double()
    gmag = (gy.double().abs() * scale.double()) @ codes.double().abs()
    assert ((gx.double() - gref).abs() <= _one_rounding_tol(gref, dtype, gmag, N)).all()


def test_split_tf32_and_tf32_context():
    """The input gradients' scale split (hi: a TF32 value, hi + lo exact) and the TF32 switch: set
    for the calls inside, the previous settings back afterwards (nothing touched off CUDA)."""
    pytest.importorskip("triton")
    from tna_kernels.triton import ternary as T

    s = torch.cat([torch.rand(1000) * 10.0 ** torch.randint(-6, 6, (1000,)), torch.tensor([1.0, 0.1, 3.0])])
    hi, lo = T._split_tf32(s)
    assert torch.equal(hi + lo, s) and torch.equal(hi.view(torch.int32) & 8191, torch.zeros_like(hi, dtype=torch.int32))
    assert (lo.abs() <= s.abs() * 2.0 ** -10).all()
    new_api = hasattr(torch.backends.cudnn, "conv")
    objs = (torch.backends.cudnn.conv, torch.backends.cuda.matmul) if new_api else \
        (torch.backends.cudnn, torch.backends.cuda.matmul)
    attr = "fp32_precision" if new_api else "allow_tf32"
    before = [getattr(o, attr) for o in objs]
    for allow in (True, False):
        with T._tf32(allow, cuda=True):
            want = ("tf32" if allow else "ieee") if new_api else allow
            assert [getattr(o, attr) for o in objs] == [want, want]
        assert [getattr(o, attr) for o in objs] == before
        with T._tf32(allow, cuda=False):
            assert [getattr(o, attr) for o in objs] == before
    with pytest.raises(RuntimeError, match="inside"), T._tf32(False, cuda=True):
        raise RuntimeError("inside")
    assert [getattr(o, attr) for o in objs] == before


@pytest.mark.triton
@pytest.mark.parametrize("K", [1, 63, 64, 65, 130])
def test_triton_pack_agrees_with_cpu(K):
    from tna_kernels.triton import ternary as T

    dev = triton_device()
    codes = rand_codes(6, K)
    s = rand_spikes(5, K, density=0.5)
    assert torch.equal(T.pack_ternary(codes.to(dev)).cpu(), torch.ops.tna.pack_ternary(codes))
    assert torch.equal(T.pack_spikes(s.to(dev)).cpu(), torch.ops.tna.pack_spikes(s))


@pytest.mark.triton
def test_triton_pack_rejects_bad_values_and_unpacks():
    from tna_kernels.triton import ternary as T

    dev = triton_device()
    codes = rand_codes(3, 70)
    words = torch.ops.tna.pack_ternary(codes)
    assert torch.equal(T.unpack_ternary(words.to(dev), 70, 1).cpu(), codes)
    bits = torch.ops.tna.pack_spikes(rand_spikes(2, 70))
    assert torch.equal(T.unpack_spikes(bits.to(dev), 70).cpu(), torch.ops.tna.unpack_spikes(bits, 70))
    codes[1, 3] = 2
    with pytest.raises(RuntimeError, match="codes must contain only -1, 0 and"):
        T.pack_ternary(codes.to(dev))
        torch.cuda.synchronize() if dev == "cuda" else None
    with pytest.raises(RuntimeError, match="version: .*got v2"):
        T.spike_ternary_linear(bits.to(dev), words.to(dev), torch.ones(3, device=dev), None, 70, 2)


@pytest.mark.triton
@pytest.mark.parametrize("method", ["twn", "absmean"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("shape", [(6, 70), (4, 3, 2, 70)])
def test_triton_ternarize_agrees_with_cpu(method, per_channel, shape):
    from tna_kernels.triton import ternary as T

    dev = triton_device()
    w = torch.randn(shape)
    codes, scale, words = T.ternarize(w.to(dev), method, per_channel, True)
    c2, s2, w2 = torch.ops.tna.ternarize(w, method, per_channel, True)
    assert torch.equal(codes.cpu(), c2) and torch.equal(words.cpu(), w2)
    torch.testing.assert_close(scale.cpu(), s2, rtol=1e-6, atol=0)



def test_float_path_uses_a_cached_float_copy_and_matches_the_op():
    """float32 CPU input with more than 12 rows: torch's GEMM on PackedTernary.float_codes() (built
    once), the op's arithmetic (exact sums, then * scale + bias)."""
    codes, scale, b, p = _packed(33, 200)
    x = torch.randn(40, 200)
    y = F.ternary_linear(x, p)
    assert p.float_codes() is p.float_codes()
    op = torch.ops.tna.ternary_linear(x, p.words, p.scale, p.bias, p.version)
    torch.testing.assert_close(y, op, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, R.ternary_linear(x.double(), codes, scale, b).float(), rtol=1e-5, atol=1e-5)
    xg = x.clone().requires_grad_()
    F.ternary_linear(xg, p).sum().backward()
    torch.testing.assert_close(xg.grad, (scale[:, None] * codes.float()).sum(0).expand(40, 200), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("method", ["twn", "absmean"])
def test_triton_channel_stats_equal_the_two_pass_arithmetic(method):
    """The one-launch per-channel statistics give the bits of the row sums + float64 torch
    arithmetic they replaced (thr = 0.7 mean or mean + 1e-5; scale = mean of |w| > thr)."""
    from tna_kernels.triton import ternary as T

    dev = triton_device()
    w = torch.randn(9, 4, 3, 3).to(dev)
    n, R = 9, 36
    thr = torch.empty(n, dtype=torch.float64, device=dev)
    scale = torch.empty(n, device=dev)
    T._channel_stats_kernel[(n,)](w, thr, scale, R, TWN=method == "twn", BLOCK=256)
    sums = torch.empty(n, dtype=torch.float64, device=dev)
    T._row_stats_kernel[(n,)](w, sums, sums, sums, sums, R, TWN_PASS=False, BLOCK=256)
    mean = sums / R
    if method == "twn":
        want_thr = 0.7 * mean
        above = torch.empty(n, dtype=torch.float64, device=dev)
        cnt = torch.empty(n, dtype=torch.float64, device=dev)
        T._row_stats_kernel[(n,)](w, want_thr, above, above, cnt, R, TWN_PASS=True, BLOCK=256)
        want_scale = torch.where(cnt > 0, above / cnt.clamp(min=1), torch.zeros_like(above))
    else:
        want_thr, want_scale = mean + 1e-5, mean
    assert torch.equal(thr, want_thr)
    assert torch.equal(scale, want_scale.float())
