"""Ternary kernels vs torch at CIFAR spiking-VGG layer shapes (T = 4, B = 32 folded into M).

Providers per group (same inputs, same thread count, same run):
  torch_fp32     torch matmul / conv2d, float32 0/1 activations x the dequantised float32 weight
  dense_codes    the same maths with codes as float32 (+ scale/bias epilogue): "same math" baseline
  int_mm         torch._int_mm on int8 spikes x int8 codes (linear only, where it runs)
  tna            ours on bit-packed spikes (the packing is done by the previous layer's epilogue)
  tna_with_pack  ours including pack_spikes of the float 0/1 input (the honest upper bound today)
Float-input groups compare torch_fp32 with tna (ternary_linear / ternary_conv2d).

extra_info: provider, flops (2 M N K, dense-equivalent), bytes (activations + weights + output as
that provider reads/writes them), weight bytes fp32 vs packed, ISA, algorithm, spike density.
Run: python -m pytest benchmarks/bench_ternary.py --benchmark-only
     (TNA_BENCH_THREADS=1 for one thread; TNA_TERNARY_ISA=avx2 to time the AVX2 kernels on an
     AVX-512 machine; TNA_TERNARY_ALGO=popcount|event to pin the spike algorithm)
"""

import os

import pytest
import torch
import torch.nn.functional as NF

from tna_kernels import functional as F

pytestmark = pytest.mark.usefixtures("bench_threads")

T, B = 4, 32
DENSITY = 0.15

LINEAR = {"linear 4096->512 M=128": (T * B, 4096, 512), "linear 4096->512 M=4 (GEMV)": (4, 4096, 512)}
# The narrow layer is the tiny VGG's (16 input channels: several taps per packed word).
CONV = {"conv 128->128 3x3 @16x16": (T * B, 128, 128, 16), "conv 256->256 3x3 @8x8": (T * B, 256, 256, 8),
        "conv 16->32 3x3 @16x16": (T * B, 16, 32, 16)}
FLOAT_LINEAR = {"float linear 4096->512 M=128": (T * B, 4096, 512),
                "float linear 4096->512 M=4": (4, 4096, 512)}
# First layer (direct encoding): the float image is convolved once per sample, not per timestep.
FLOAT_CONV = {"float conv 3->128 3x3 @32x32 B=32": (B, 3, 128, 32)}

SPIKE_PROVIDERS = ["torch_fp32", "dense_codes", "int_mm", "tna", "tna_with_pack"]


def _algo_env():
    return os.environ.get("TNA_TERNARY_ALGO", "auto") or "auto"


def _rounds(flops):
    return 5 if flops > 5e9 else (20 if flops > 1e8 else 200)


def _info(benchmark, provider, flops, bytes_, w_fp32, w_packed, density=None):
    benchmark.extra_info.update(provider=provider, flops=flops, bytes=bytes_, weight_bytes_fp32=w_fp32,
                                weight_bytes_packed=w_packed, isa=torch.ops.tna.ternary_cpu_isa(),
                                algo=_algo_env(), threads=torch.get_num_threads())
    if density is not None:
        benchmark.extra_info["density"] = density


def _run(benchmark, fn, flops):
    fn()
    benchmark.pedantic(fn, rounds=_rounds(flops), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("provider", SPIKE_PROVIDERS)
@pytest.mark.parametrize("shape", list(LINEAR), ids=list(LINEAR))
def test_spike_linear(benchmark, shape, provider):
    M, K, N = LINEAR[shape]
    benchmark.group = f"spike_ternary_linear {shape}"
    torch.manual_seed(0)
    w = F.quantize_pack(torch.randn(N, K), bias=torch.randn(N))
    s = (torch.rand(M, K) < DENSITY).float()
    flops, w32, wp = 2 * M * N * K, N * K * 4, w.words.numel() * 8
    if provider == "torch_fp32":
        wd, b = w.dequantize(), w.bias
        fn, nbytes = (lambda: torch.addmm(b, s, wd.T)), M * K * 4 + w32 + M * N * 4
    elif provider == "dense_codes":
        codes = w.codes().float().T.contiguous()
        fn, nbytes = (lambda: torch.mm(s, codes).mul_(w.scale).add_(w.bias)), M * K * 4 + w32 + M * N * 4
    elif provider == "int_mm":
        s8, c8 = s.to(torch.int8), w.codes().T.contiguous()
        try:
            torch._int_mm(s8, c8)
        except RuntimeError as exc:
            pytest.skip(f"torch._int_mm does not run here: {exc}")
        fn = lambda: torch._int_mm(s8, c8).float().mul_(w.scale).add_(w.bias)  # noqa: E731
        nbytes = M * K + N * K + M * N * 4
    elif provider == "tna":
        bits = F.pack_spikes(s)
        fn, nbytes = (lambda: F.spike_ternary_linear(bits, w)), bits.numel() * 8 + wp + M * N * 4
    else:
        fn, nbytes = (lambda: F.spike_ternary_linear(F.pack_spikes(s), w)), M * K * 4 + wp + M * N * 4
    _info(benchmark, provider, flops, nbytes, w32, wp, DENSITY)
    _run(benchmark, fn, flops)


@pytest.mark.parametrize("provider", [p for p in SPIKE_PROVIDERS if p != "int_mm"])
@pytest.mark.parametrize("shape", list(CONV), ids=list(CONV))
def test_spike_conv(benchmark, shape, provider):
    TB, C, N, H = CONV[shape]
    benchmark.group = f"spike_ternary_conv2d {shape}"
    torch.manual_seed(0)
    w = F.quantize_pack(torch.randn(N, C, 3, 3), bias=torch.randn(N))
    s = (torch.rand(TB, C, H, H) < DENSITY).float()
    flops, w32, wp = 2 * TB * H * H * N * C * 9, N * C * 9 * 4, w.words.numel() * 8
    out_bytes = TB * N * H * H * 4
    if provider == "torch_fp32":
        wd = w.dequantize()
        fn, nbytes = (lambda: NF.conv2d(s, wd, w.bias, 1, 1)), s.numel() * 4 + w32 + out_bytes
    elif provider == "dense_codes":
        codes = w.codes().float()
        sc, bb = w.scale.view(1, -1, 1, 1), w.bias.view(1, -1, 1, 1)
        fn = lambda: NF.conv2d(s, codes, None, 1, 1).mul_(sc).add_(bb)  # noqa: E731
        nbytes = s.numel() * 4 + w32 + out_bytes
    elif provider == "tna":
        bits = F.pack_spikes(s, dim=1)
        fn, nbytes = (lambda: F.spike_ternary_conv2d(bits, w, 1, 1)), bits.numel() * 8 + wp + out_bytes
    else:
        fn = lambda: F.spike_ternary_conv2d(F.pack_spikes(s, dim=1), w, 1, 1)  # noqa: E731
        nbytes = s.numel() * 4 + wp + out_bytes
    _info(benchmark, provider, flops, nbytes, w32, wp, DENSITY)
    _run(benchmark, fn, flops)


@pytest.mark.parametrize("provider", ["torch_fp32", "tna"])
@pytest.mark.parametrize("shape", list(FLOAT_LINEAR), ids=list(FLOAT_LINEAR))
def test_float_linear(benchmark, shape, provider):
    M, K, N = FLOAT_LINEAR[shape]
    benchmark.group = f"ternary_linear {shape}"
    torch.manual_seed(0)
    w = F.quantize_pack(torch.randn(N, K), bias=torch.randn(N))
    x = torch.randn(M, K)
    flops, w32, wp = 2 * M * N * K, N * K * 4, w.words.numel() * 8
    if provider == "torch_fp32":
        wd, b = w.dequantize(), w.bias
        fn, nbytes = (lambda: torch.addmm(b, x, wd.T)), M * K * 4 + w32 + M * N * 4
    else:
        fn, nbytes = (lambda: F.ternary_linear(x, w)), M * K * 4 + wp + M * N * 4
    _info(benchmark, provider, flops, nbytes, w32, wp)
    _run(benchmark, fn, flops)


@pytest.mark.parametrize("provider", ["torch_fp32", "tna"])
@pytest.mark.parametrize("shape", list(FLOAT_CONV), ids=list(FLOAT_CONV))
def test_float_conv(benchmark, shape, provider):
    Bn, C, N, H = FLOAT_CONV[shape]
    benchmark.group = f"ternary_conv2d {shape}"
    torch.manual_seed(0)
    w = F.quantize_pack(torch.randn(N, C, 3, 3), bias=torch.randn(N))
    x = torch.randn(Bn, C, H, H)
    flops, w32, wp = 2 * Bn * H * H * N * C * 9, N * C * 9 * 4, w.words.numel() * 8
    if provider == "torch_fp32":
        wd = w.dequantize()
        fn, nbytes = (lambda: NF.conv2d(x, wd, w.bias, 1, 1)), x.numel() * 4 + w32 + Bn * N * H * H * 4
    else:
        fn, nbytes = (lambda: F.ternary_conv2d(x, w, 1, 1)), x.numel() * 4 + wp + Bn * N * H * H * 4
    _info(benchmark, provider, flops, nbytes, w32, wp)
    _run(benchmark, fn, flops)


# The latent weight quantised each training step: TWN codes and per-channel scales, ours also
# packed into the 2-bit format (one fused call, as the spike training path runs it).
QUANTISE = {"ternarize 256x256x3x3": (256, 256, 3), "ternarize 128x64x3x3": (128, 64, 3)}


def _twn_torch(w):
    """TWN per output channel in torch ops (as the peers' training code writes it): codes, scale."""
    flat = w.flatten(1)
    a = flat.abs()
    mask = a > 0.7 * a.mean(1, keepdim=True)
    scale = (a * mask).sum(1) / mask.sum(1).clamp(min=1)
    return (torch.sign(flat) * mask).to(torch.int8).view_as(w), scale


@pytest.mark.parametrize("provider", ["tna", "torch"])
@pytest.mark.parametrize("shape", list(QUANTISE), ids=list(QUANTISE))
def test_ternarize(benchmark, shape, provider):
    n, c, k = QUANTISE[shape]
    benchmark.group = f"{shape} (codes + scales, ours also packed) fp32"
    w = torch.randn(n, c, k, k) * 0.05
    if provider == "tna":
        wk = w.permute(0, 2, 3, 1)  # the spike path quantises the [N, kh, kw, C] view (a copy inside)
        fn = lambda: torch.ops.tna.ternarize(wk, "twn", True, True)  # noqa: E731
    else:
        fn = lambda: _twn_torch(w)  # noqa: E731
    _info(benchmark, provider, 0, w.numel() * 4, w.numel() * 4, w.numel() // 4)
    _run(benchmark, fn, 0)
