"""The Triton launch path (GPU readiness without a GPU): direct launches (never
``torch.library.wrap_triton``), autotune keys on bucketed sizes, 64-bit offsets, grids within
CUDA's limits, the pack kernel's atomic only on bad input, and unpack_spikes in uint8.

Most of these run under TRITON_INTERPRET=1 (``-m triton``); the grid and source checks need no
launch at all and run in every lane where Triton is installed."""

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from tna_kernels import reference as R  # noqa: E402
from tna_kernels._utils import triton_test_device as triton_device  # noqa: E402
from tna_kernels.triton import _launch  # noqa: E402
from tna_kernels.triton import lif as tlif  # noqa: E402
from tna_kernels.triton import spike_train as tsp  # noqa: E402
from tna_kernels.triton import ternary as tt  # noqa: E402
from tna_kernels.triton import twin_loss as ttw  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
interp_only = pytest.mark.skipif(not INTERPRET, reason="inspects the interpreter (TRITON_INTERPRET=1)")
MODULES = (tlif, tsp, tt, ttw)
ROOT = Path(__file__).resolve().parent.parent


def _call_every_launcher(dev):
    """Every launcher of tna_kernels/triton once, at tiny shapes."""
    x = torch.randn(3, 70, device=dev)
    hyper = (2.0, True, 1.0, 0.0, False, False, "atan", 2.0)
    _, _, h = tlif.lif_fwd(x, torch.zeros(70, device=dev), *hyper, True)
    tlif.lif_bwd(torch.randn_like(x), torch.zeros(70, device=dev), h, *hyper)
    tlif.lif_bwd_recompute(torch.randn_like(x), torch.zeros(70, device=dev), x, None, *hyper)
    codes = torch.randint(-1, 2, (5, 70), dtype=torch.int8)
    words = tt.pack_ternary(codes.to(dev))
    tt.unpack_ternary(words, 70, 1)
    bits = tt.pack_spikes(torch.randint(0, 2, (4, 70), device=dev).float())
    tt.unpack_spikes(bits, 70)
    tt.ternarize(torch.randn(5, 70, device=dev), "twn", True, True)
    scale = torch.ones(5, device=dev)
    tt.spike_ternary_linear(bits, words, scale, None, 70, 1)
    tt.ternary_linear(torch.randn(4, 70, device=dev), words, scale, scale, 1)
    tt.ternary_linear_grad_input(torch.randn(4, 5, device=dev), words, scale, 70, 1)
    wc = tt.pack_ternary(torch.randint(-1, 2, (5, 3, 3, 70), dtype=torch.int8).to(dev))
    tt.spike_ternary_conv2d(torch.zeros(1, 4, 4, 2, dtype=torch.int64, device=dev), wc, scale, None, 70,
                            [1, 1], [1, 1], [1, 1], 1)
    tt.ternary_conv2d(torch.randn(1, 70, 4, 4, device=dev), wc, scale, None, [1, 1], [1, 1], [1, 1], 1)
    sbits = tt.pack_spikes(torch.randint(0, 2, (2, 70, 4, 4), device=dev).float(), 1)
    for dt in (torch.float32, torch.bfloat16):
        tsp.spike_conv2d_grad_weight(torch.randn(2, 5, 4, 4, device=dev).to(dt), sbits, 70, [3, 3], [1, 1], [1, 1],
                                     [1, 1])
    a = torch.randn(3, 10, device=dev)
    y = torch.tensor([1, 2, 3], device=dev)
    ttw.twin_loss_fwd(a, a + 1, y, 1.0, 1.0, 0.1, 0, 0.0, -100, True, True)


# ---- 1. direct launches ---------------------------------------------------------------------------

def test_no_launcher_source_mentions_wrap_triton_calls():
    """Static check: no code (docstrings aside) of the Triton launchers references wrap_triton."""
    for mod in MODULES:
        tree = ast.parse(inspect.getsource(mod))
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert "wrap_triton" not in names, mod.__name__
        assert "triton_op" not in names, mod.__name__


@pytest.mark.triton
def test_launchers_never_call_wrap_triton(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("wrap_triton called from a launcher: eager launches would take the traced path")

    monkeypatch.setattr(torch.library, "wrap_triton", boom)
    _call_every_launcher(triton_device())


# ---- 2. autotune keys are bucketed ----------------------------------------------------------------

AUTOTUNED = [tlif._lif_fwd_kernel, tlif._lif_bwd_kernel, tt._spike_conv_kernel, tt._float_linear_kernel,
             ttw._twin_loss_fwd_kernel, tsp._spike_grad_weight_kernel, tsp._spike_grad_weight_f32_kernel]


@pytest.mark.parametrize("kernel", AUTOTUNED, ids=lambda k: k.base_fn.__name__)
def test_autotune_keys_are_buckets(kernel):
    assert kernel.keys and all(k.endswith("_BUCKET") for k in kernel.keys), kernel.keys


def test_bucket():
    assert [_launch.bucket(n) for n in (0, 1, 2, 3, 100, 128, 129, 5_000_000)] == \
        [1, 1, 2, 4, 128, 128, 256, 8_388_608]


class _TuneCounter:
    """Gives an autotuned kernel two configs and a fake benchmark; counts tunings."""

    def __init__(self, monkeypatch, kernel, configs):
        self.benches = 0
        monkeypatch.setattr(kernel, "configs", configs)
        monkeypatch.setattr(kernel, "cache", {})

        def bench(*args, config, **meta):
            self.benches += 1
            return [float(self.benches)] * 3

        monkeypatch.setattr(kernel, "_bench", bench)
        self.kernel = kernel


@pytest.mark.triton
@interp_only
def test_lif_tunes_once_per_bucket(monkeypatch):
    two = [triton.Config({"BLOCK": 64}, num_warps=1), triton.Config({"BLOCK": 32}, num_warps=1)]
    fwd = _TuneCounter(monkeypatch, tlif._lif_fwd_kernel, two)
    hyper = (2.0, True, 1.0, 0.0, False, False, "atan", 2.0, False)
    for n in (100, 120, 128):  # one bucket (128): one tuning, two configs benchmarked
        tlif.lif_fwd(torch.randn(2, n), torch.zeros(n), *hyper)
    assert (fwd.benches, len(fwd.kernel.cache)) == (2, 1)
    tlif.lif_fwd(torch.randn(2, 129), torch.zeros(129), *hyper)  # next bucket
    assert (fwd.benches, len(fwd.kernel.cache)) == (4, 2)
    tlif.lif_fwd(torch.randn(5, 100), torch.zeros(100), *hyper)  # T changes nothing
    assert fwd.benches == 4


@pytest.mark.triton
@interp_only
def test_twin_loss_tunes_once_per_class_bucket(monkeypatch):
    two = [triton.Config({"BLOCK": 32}, num_warps=1), triton.Config({"BLOCK": 64}, num_warps=1)]
    tc = _TuneCounter(monkeypatch, ttw._twin_loss_fwd_kernel, two)

    def call(b, c):
        a = torch.randn(b, c)
        ttw.twin_loss_fwd(a, a, torch.zeros(b, dtype=torch.int64), 1.0, 1.0, 0.1, 0, 0.0, -100, True, True)

    for b, c in ((4, 40), (7, 50), (3, 64), (4, 40)):  # batch sizes and C in one bucket (64)
        call(b, c)
    assert (tc.benches, len(tc.kernel.cache)) == (2, 1)
    call(4, 100)
    assert (tc.benches, len(tc.kernel.cache)) == (4, 2)


@pytest.mark.triton
@interp_only
def test_gemm_tunes_once_per_batch_bucket(monkeypatch):
    two = [triton.Config({"BM": 16, "BN": 16}, num_warps=1), triton.Config({"BM": 32, "BN": 16}, num_warps=1)]
    tc = _TuneCounter(monkeypatch, tt._float_linear_kernel, two)
    codes = torch.randint(-1, 2, (6, 70), dtype=torch.int8)
    words = tt.pack_ternary(codes)
    for m in (5, 7, 8):
        tt.ternary_linear(torch.randn(m, 70), words, torch.ones(6), None, 1)
    assert (tc.benches, len(tc.kernel.cache)) == (2, 1)


# ---- 3. 64-bit offsets ------------------------------------------------------------------------------

_HUGE = textwrap.dedent("""
    import torch
    from tna_kernels.triton import lif
    T, N = 9, (1 << 28) + 64          # (T - 1) * N > 2^31: int32 products would wrap
    # Virtual allocations: only the first 64 neurons of each step are touched (one program).
    x = torch.empty(T, N, dtype=torch.bfloat16)
    s = torch.empty(T, N, dtype=torch.bfloat16)
    v0 = torch.empty(N)
    v_out = torch.empty(N)
    torch.manual_seed(0)
    xs = (torch.rand(T, 64) * 1.5).to(torch.bfloat16)
    x[:, :64] = xs
    v0[:64] = 0.0
    lif._lif_fwd_kernel[(1,)](x, N, v0, s, v_out, v_out, N, T, 1 << 29, 2.0, 1.0, 0.0, 0.0,
                              HAS_V0=True, DECAY_INPUT=True, SOFT=False, SAVE_H=False)
    hyper = (2.0, True, 1.0, 0.0, False, False, "sigmoid", 2.0)
    want = lif.lif_fwd(xs, torch.zeros(64), *hyper, False)  # the same kernel at N = 64
    assert torch.equal(s[:, :64], want[0]), (s[:, :64], want[0])
    assert torch.equal(v_out[:64], want[1])
    del s, v_out  # x and v0 (its first 64 values 0) serve the recompute backward below
    gs = torch.empty(T, N, dtype=torch.bfloat16)
    h = torch.empty(T, N)
    gx = torch.empty(T, N, dtype=torch.bfloat16)
    gv = torch.empty(N)
    gv0 = torch.empty(N)
    hs = torch.rand(T, 64) * 2
    gss = torch.randn(T, 64).to(torch.bfloat16)
    h[:, :64] = hs
    gs[:, :64] = gss
    gv[:64] = 0.5
    lif._lif_bwd_kernel[(1,)](gs, gv, h, gx, gv0, N, T, 1 << 29, 2.0, 1.0, 0.0, 2.0,
                              HAS_GV=True, DECAY_INPUT=True, SOFT=False, DETACH=False, SURROGATE=1)
    want = lif.lif_bwd(gss, torch.full((64,), 0.5), hs, *hyper)
    assert torch.equal(gx[:, :64], want[0]) and torch.equal(gv0[:64], want[1])
    gx[:, :64] = 0
    lif._lif_bwd_recompute_kernel[(1,)](gs, N, gv, x, N, v0, gx, gv0, N, T, 1 << 29, 2.0, 1.0, 0.0, 0.0, 2.0,
                                        HAS_GV=True, HAS_V0=True, DECAY_INPUT=True, SOFT=False, DETACH=False,
                                        SURROGATE=1)
    want = lif.lif_bwd_recompute(gss, torch.full((64,), 0.5), xs, torch.zeros(64), *hyper)
    assert torch.equal(gx[:, :64], want[0]) and torch.equal(gv0[:64], want[1])
    print("OK")
""")


@pytest.mark.triton
@interp_only
def test_lif_offsets_are_64_bit():
    """One LIF program with T * N > 2^31 (tensors of several GiB, virtual: only the first 64
    neurons of each step are touched). With int32 offsets step t >= 8 would address memory
    before the buffer. Runs in a subprocess: an out-of-bounds access must not take down pytest."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", _HUGE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_offsets_are_formed_in_int64():
    """Static check of the kernels whose offsets combine a loop index with a size."""
    src = inspect.getsource(tlif)
    assert "tl.cast(t, tl.int64) * N" in src and "tl.cast(T - 1 - i, tl.int64) * N" in src
    assert "idx = t * N" not in src and "(T - 1 - i) * N" not in src.replace("tl.cast(T - 1 - i, tl.int64) * N", "")
    tsrc = inspect.getsource(tt)
    assert tsrc.count("pid_m = (pid // n_tiles).to(tl.int64)") == 2
    assert "g = tl.program_id(0).to(tl.int64) * WORDS" in tsrc
    ssrc = inspect.getsource(tsp)  # the weight-gradient GEMM: rows, workspace slices, sum offsets
    assert "rm = m0 + tl.arange(0, BM).to(tl.int64)" in ssrc and "m_lo = split.to(tl.int64) * ROWS_PER_SPLIT" in ssrc
    assert "off = split.to(tl.int64) * N * C * KHW" in ssrc and "tl.cast(s, tl.int64) * L + e" in ssrc


# ---- 4. grids within CUDA's limits ----------------------------------------------------------------

def _within(grid):
    return all(g <= lim for g, lim in zip(grid, _launch.GRID_LIMITS, strict=False)) and len(grid) <= 3


def test_grids_for_huge_K_stay_within_limits():
    K = 5_000_000  # 78,125 words per row: more than the 65,535 a grid's dimension 1 allows
    kw = (K + 63) // 64
    for rows in (1, 4, 1024):
        g = _launch.word_grid(rows * kw, "pack")
        assert len(g) == 1 and _within(g)
    # (M, N) whose N tiles alone exceed 65,535 in a 2-D grid; outputs up to 2^40 elements
    for M, N in ((1, 1), (64, 5_000_000), (2**24, 2**16), (5_000_000, 4096)):
        for bm, bn in ((64, 64), (128, 128)):
            g = _launch.tile_grid(M, N, bm, bn, "gemm")
            assert len(g) == 1 and _within(g)
    g = tlif._grid(2**34)({"BLOCK": 256})
    assert _within(g)
    with pytest.raises(RuntimeError, match="exceeds CUDA's limit"):
        _launch.check_grid((2**31,), "x")
    with pytest.raises(RuntimeError, match="exceeds CUDA's limit 65535 in dimension 1"):
        _launch.check_grid((1, 70_000), "x")


class _GridSpy:
    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return lambda *a, **k: None


@pytest.mark.parametrize("launch", ["pack_spikes", "pack_ternary", "unpack_spikes", "unpack_ternary",
                                    "ternarize"])
def test_word_launchers_use_a_one_dimensional_grid(monkeypatch, launch):
    """The launchers at K = 5M (kernels replaced by a spy: nothing runs, the grids are checked)."""
    K = 5_000_000
    kw = (K + 63) // 64
    spy = _GridSpy()
    for name in ("_pack_kernel", "_unpack_spikes_kernel", "_decode_kernel", "_quantize_pack_kernel",
                 "_row_stats_kernel", "_channel_stats_kernel"):
        monkeypatch.setattr(tt, name, spy)
    if launch == "pack_spikes":
        tt.pack_spikes(torch.zeros(2, K, dtype=torch.uint8))
    elif launch == "pack_ternary":
        tt.pack_ternary(torch.zeros(2, K, dtype=torch.int8))
    elif launch == "unpack_spikes":
        tt.unpack_spikes(torch.zeros(2, kw, dtype=torch.int64), K)
    elif launch == "unpack_ternary":
        tt.unpack_ternary(torch.zeros(2, 2, kw, dtype=torch.int64), K, 1)
    else:
        tt.ternarize(torch.zeros(2, K), "twn", True, True)
    assert spy.grids and all(_within(g) for g in spy.grids), spy.grids
    assert spy.grids[-1] == (triton.cdiv(2 * kw, _launch.WORDS),)


def test_grad_weight_launcher_uses_one_dimensional_grids(monkeypatch):
    """spike_conv2d_grad_weight at M = 2^20 rows (a linear layer, grad_y expanded: no memory; the
    kernels replaced by a spy): a split GEMM grid and the sum's grid, both 1-D and within limits."""
    spy = _GridSpy()
    for name in ("_spike_grad_weight_kernel", "_spike_grad_weight_f32_kernel", "_split_sum_kernel"):
        monkeypatch.setattr(tsp, name, spy)
    M, N, C = 1 << 20, 10, 512
    gy = torch.zeros(1, 1, 1, 1).expand(M, N, 1, 1)
    bits = torch.zeros(M, 1, 1, C // 64, dtype=torch.int64)
    tsp.spike_conv2d_grad_weight(gy, bits, C, [1, 1], [1, 1], [0, 0], [1, 1])
    split, rows = tsp._split(M, 8, N * C)
    assert split > 1 and len(spy.grids) == 2
    gemm = spy.grids[0]({"BN": 64, "BM": 16})
    assert gemm == (8 * split,) and _within(gemm)
    assert spy.grids[1] == (triton.cdiv(N * C, tsp.REDUCE_BLOCK),)


@pytest.mark.triton
def test_pack_round_trip_with_many_words_per_row():
    """Rows whose words span several programs, and programs that span several rows."""
    dev = triton_device()
    for rows, K in ((2, 64 * 40 + 5), (37, 65), (3, 64 * 16)):
        s = torch.randint(0, 2, (rows, K)).float()
        bits = tt.pack_spikes(s.to(dev))
        assert torch.equal(bits.cpu(), R.pack_spikes(s))
        assert torch.equal(tt.unpack_spikes(bits, K).cpu(), s.to(torch.uint8))
        codes = torch.randint(-1, 2, (rows, K), dtype=torch.int8)
        words = tt.pack_ternary(codes.to(dev))
        assert torch.equal(words.cpu(), R.pack_ternary(codes))
        assert torch.equal(tt.unpack_ternary(words, K, 1).cpu(), codes)


# ---- 5. the pack kernel's atomic --------------------------------------------------------------------

@pytest.mark.triton
@interp_only
def test_pack_atomic_only_on_bad_values(monkeypatch):
    from triton.runtime import interpreter

    masks = []
    orig = interpreter.InterpreterBuilder.create_atomic_rmw

    def spy(self, rmw, ptr, val, mask, sem, scope):
        masks.append(bool(mask.data.any()))
        return orig(self, rmw, ptr, val, mask, sem, scope)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_atomic_rmw", spy)
    s = torch.randint(0, 2, (40, 130)).float()  # 3 words per row, 120 words: 8 programs
    tt.pack_spikes(s)
    assert masks and not any(masks)  # the atomic is issued by no program
    masks.clear()
    s[17, 3] = 0.5
    with pytest.raises(RuntimeError, match="spikes must contain only 0 and 1"):
        tt.pack_spikes(s)
    assert sum(masks) == 1  # only the program that saw the bad value


# ---- 6. unpack_spikes dtype -------------------------------------------------------------------------

@pytest.mark.triton
@pytest.mark.parametrize("K", [1, 63, 64, 65, 130])
def test_unpack_spikes_is_uint8_like_the_cpu_op(K):
    dev = triton_device()
    s = torch.randint(0, 2, (3, 2, K)).float()
    bits = torch.ops.tna.pack_spikes(s)
    got = tt.unpack_spikes(bits.to(dev), K)
    want = torch.ops.tna.unpack_spikes(bits, K)
    assert got.dtype == want.dtype == torch.uint8
    assert got.shape == want.shape
    assert torch.equal(got.cpu(), want)


def test_unpack_spikes_checks_its_input():
    with pytest.raises(RuntimeError, match="bits must be int64 packed spikes"):
        tt.unpack_spikes(torch.zeros(2, 3, dtype=torch.int64), 64)
    with pytest.raises(RuntimeError, match="bits must be int64 packed spikes"):
        tt.unpack_spikes(torch.zeros(2, 1, dtype=torch.int32), 64)
