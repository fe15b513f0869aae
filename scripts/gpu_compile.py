#!/usr/bin/env python
"""Ahead-of-time compile check of every Triton kernel the tna ops can launch, without a GPU.

How the kernels and their specialisations are found: each launcher in tna_kernels/triton/ is
called on small CPU tensors while every kernel's ``run`` is replaced by a recorder, so what gets
compiled is exactly what the launchers would launch (argument types, int specialisations,
constexpr flags, launch options such as ``enable_fp_fusion``), for the call matrix below (dtypes,
surrogates, reset modes, flags, conv geometries). Each recorded launch is then compiled with
``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32))``
for each autotune config, through Triton's own binder (the same path as a real launch).

Resources: registers, stack and spill bytes come from the ptxas log (Triton runs ``ptxas -v`` and
prints the log when ``knobs.nvidia.dump_ptxas_log`` is set); shared memory from the kernel's
metadata. (``CompiledKernel.n_regs`` / ``n_spills`` are only filled in when the binary is loaded
on a device, so they are not available here.) A fresh Triton cache directory is used, so every
kernel really goes through ptxas.

Modes (variants = (specialisation, config) pairs):
  default  every autotune config with the first specialisation, and every specialisation with
           the first config (each config and each specialisation compiled at least once);
  --full   the whole product: every config x every specialisation;
  --quick  one variant per kernel (first specialisation, first config).
Exit status 1 on any compile error (all variants are still attempted and the errors printed).

  python scripts/gpu_compile.py [--arch 90,80] [--quick | --full] [--jobs 2] [--markdown FILE] [--only REGEX]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import re
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("gpu_compile.py: unset TRITON_INTERPRET (the interpreter cannot compile kernels)")
# Set before Triton is imported: a private cache (every kernel goes through ptxas, so the log
# with registers and spills exists) and the FP-fusion default made explicit (Triton 3.9 warns).
if "TRITON_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="tna-gpu-compile-")
    if __name__ == "__main__":  # the parent removes it (spawned workers share it)
        import atexit
        import shutil

        atexit.register(shutil.rmtree, _OWN_CACHE, ignore_errors=True)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

try:
    import torch
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import create_function_from_signature
except ImportError as exc:  # pragma: no cover
    sys.exit(f"gpu_compile.py needs torch and triton: {exc}")


def _import_kernels():
    """The Triton launcher modules. They need no native code: when the package's native core is
    not built, load them without running tna_kernels/__init__.py."""
    sys.path.insert(0, str(ROOT))
    try:
        import tna_kernels  # noqa: F401
    except ImportError:
        import types

        pkg = types.ModuleType("tna_kernels")
        pkg.__path__ = [str(ROOT / "tna_kernels")]
        sys.modules["tna_kernels"] = pkg
    from tna_kernels.triton import batch_norm, lif, spike_train, ternary, twin_loss

    return {"batch_norm": batch_norm, "lif": lif, "spike_train": spike_train, "ternary": ternary,
            "twin_loss": twin_loss}


MODULES = _import_kernels()
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def kernels():
    """Every Triton kernel object defined by the launcher modules: name -> (module, attr)."""
    found = {}
    for mod_name, mod in MODULES.items():
        for attr, obj in vars(mod).items():
            if isinstance(obj, (Autotuner, triton.runtime.jit.JITFunction)) and attr.endswith("_kernel"):
                found[attr] = (mod_name, attr)
    return found


# ---- the call matrix: every launcher, every specialisation it can produce ------------------------

def _calls():
    """Yield (label, thunk): each thunk calls one launcher on small CPU tensors."""
    lif, tern, twin = MODULES["lif"], MODULES["ternary"], MODULES["twin_loss"]
    from tna_kernels import reference as R

    T, N = 4, 4096
    for dt, decay, soft, save_h in itertools.product(FLOATS, (True, False), (False, True), (True, False)):
        x = torch.zeros(T, N, dtype=dt)
        yield (f"{_dt(dt)} decay={int(decay)} soft={int(soft)} save_h={int(save_h)}",
               lambda x=x, d=decay, s=soft, h=save_h: lif.lif_fwd(
                   x, None, 2.0, d, 1.0, 0.0, s, False, "atan", 2.0, h))
    for dt in FLOATS:  # a given v0 (HAS_V0), default neuron
        x = torch.zeros(T, N, dtype=dt)
        yield (f"{_dt(dt)} v0 given", lambda x=x: lif.lif_fwd(x, torch.zeros(N), 2.0, True, 1.0, 0.0, False, False,
                                                             "atan", 2.0, True))
    for dt, decay, soft, detach, sur in itertools.product(FLOATS, (True, False), (False, True), (False, True),
                                                          R.SURROGATES):
        gs = torch.zeros(T, N, dtype=dt)
        h = torch.zeros(T, N)
        yield (f"{_dt(dt)} decay={int(decay)} soft={int(soft)} detach={int(detach)} {sur}",
               lambda gs=gs, h=h, d=decay, s=soft, de=detach, su=sur: lif.lif_bwd(
                   gs, None, h, 2.0, d, 1.0, 0.0, s, de, su, 2.0))
    for dt in FLOATS:  # a given grad_v_last (HAS_GV), default neuron
        gs, h = torch.zeros(T, N, dtype=dt), torch.zeros(T, N)
        yield (f"{_dt(dt)} grad_v_last given", lambda gs=gs, h=h: lif.lif_bwd(
            gs, torch.zeros(N), h, 2.0, True, 1.0, 0.0, False, False, "atan", 2.0))
    # the recompute backward: every flag combination with atan, every surrogate with the defaults
    # (the surrogate code is the same inlined function as in _lif_bwd_kernel, compiled above)
    recompute = [(dt, decay, soft, detach, "atan", state) for dt, decay, soft, detach, state in itertools.product(
        FLOATS, (True, False), (False, True), (False, True), (False, True))]
    recompute += [(torch.float32, True, False, False, sur, False) for sur in R.SURROGATES if sur != "atan"]
    for dt, decay, soft, detach, sur, with_state in recompute:
        gs, x = torch.zeros(T, N, dtype=dt), torch.zeros(T, N, dtype=dt)
        state = torch.zeros(N) if with_state else None  # v0 and grad_v_last (HAS_V0, HAS_GV)
        yield (f"{_dt(dt)} decay={int(decay)} soft={int(soft)} detach={int(detach)} {sur} v0={int(with_state)}",
               lambda gs=gs, x=x, v=state, d=decay, s=soft, de=detach, su=sur: lif.lif_bwd_recompute(
                   gs, v, x, v, 2.0, d, 1.0, 0.0, s, de, su, 2.0))

    # fused batch norm + LIF: every x dtype x layout (NCHW: position stride 1; channels-last: channel
    # stride 1) with the default neuron, then the neuron's flags and every surrogate on float32 NCHW;
    # 16x16 maps (the largest tile, [8 channels, 128 positions]) and one 4x4 case ([64, 16])
    bn = MODULES["batch_norm"]
    mean, invstd = torch.zeros(64), torch.ones(64)

    def bn_x(dt, layout, hw=16):
        xb = torch.zeros(8, 64, hw, hw, dtype=dt)
        return xb.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else xb

    def bn_cases(dt, layout, hw, flags):
        xb = bn_x(dt, layout, hw)
        for decay, soft, detach, sur in flags:
            label = (f"{_dt(dt)} {layout} {hw}x{hw} decay={int(decay)} soft={int(soft)} detach={int(detach)} "
                     f"{R.SURROGATES[sur]}")
            yield (f"bn+lif forward {label}", lambda xb=xb, d=decay, s=soft: bn.batch_norm_lif_forward(
                xb, None, None, None, None, 0.1, 1e-5, 4, 2.0, d, 1.0, 0.0, s))
            yield (f"bn+lif backward {label}",
                   lambda xb=xb, d=decay, s=soft, de=detach, su=sur: bn.batch_norm_lif_backward(
                       torch.zeros_like(xb), xb, mean, invstd, None, None, 4, 2.0, d, 1.0, 0.0, s, de, su, 2.0,
                       [True, True, True]))

    for dt, layout in itertools.product(FLOATS, ("nchw", "channels_last")):
        yield from bn_cases(dt, layout, 16, [(True, False, False, 0)])
    flags = [(decay, soft, detach, 0) for decay, soft, detach in itertools.product((True, False), (False, True),
                                                                                  (False, True))]
    flags += [(True, False, False, k) for k in range(1, len(R.SURROGATES))]
    yield from bn_cases(torch.float32, "nchw", 16, flags)
    yield from bn_cases(torch.float32, "channels_last", 4, [(True, False, False, 0)])
    xb, ones = bn_x(torch.float32, "nchw"), torch.ones(64)  # affine, running statistics, partial gradients
    yield ("bn+lif forward fp32 nchw affine running", lambda: bn.batch_norm_lif_forward(
        xb, ones, ones, torch.zeros(64), torch.ones(64), 0.1, 1e-5, 4, 2.0, True, 1.0, 0.0, False))
    yield ("bn+lif forward fp32 nchw running mean only", lambda: bn.batch_norm_lif_forward(
        xb, None, None, torch.zeros(64), None, 0.1, 1e-5, 4, 2.0, True, 1.0, 0.0, False))
    for mask in ([True, True, True], [False, True, False], [False, False, True]):
        yield (f"bn+lif backward fp32 nchw affine mask={mask}", lambda m=mask: bn.batch_norm_lif_backward(
            torch.zeros_like(xb), xb, mean, invstd, ones, ones, 4, 2.0, True, 1.0, 0.0, False, False, 0, 2.0, m))

    # ternary: packing / unpacking / decoding
    codes = torch.zeros(256, 512, dtype=torch.int8)
    words = R.pack_ternary(codes)
    yield "pack int8 codes", lambda: tern.pack_ternary(codes)
    for dt in (*FLOATS, torch.uint8, torch.bool):
        s = torch.zeros(256, 512, dtype=dt)
        yield f"pack spikes {_dt(dt)}", lambda s=s: tern.pack_spikes(s)
    yield "unpack_spikes -> uint8", lambda: tern.unpack_spikes(torch.zeros(256, 8, dtype=torch.int64), 512)
    yield "unpack_ternary -> int8", lambda: tern.unpack_ternary(words, 512, 1)
    for dt in (torch.float32, torch.float64):  # grad-input decode in the accumulation dtype
        g = torch.zeros(64, 256, dtype=dt)
        yield (f"decode -> {_dt(dt)} (grad input)",
               lambda g=g: tern.ternary_linear_grad_input(g, words, torch.ones(256), 512, 1))
    for dt, method, pack in itertools.product(FLOATS, ("twn", "absmean"), (True, False)):
        w = torch.zeros(64, 32, 3, 3, dtype=dt)
        yield (f"ternarize {_dt(dt)} {method} pack={int(pack)}",
               lambda w=w, m=method, p=pack: tern.ternarize(w, m, True, p))
    for dt, method in itertools.product(FLOATS, ("twn", "absmean")):  # layer-wise: _row_stats_kernel
        w = torch.zeros(64, 32, 3, 3, dtype=dt)
        yield (f"ternarize {_dt(dt)} {method} layer-wise", lambda w=w, m=method: tern.ternarize(w, m, False, True))

    # ternary GEMMs
    scale = torch.ones(256)
    for dt, bias in itertools.product((*FLOATS, torch.float64), (False, True)):
        x = torch.zeros(128, 512, dtype=dt)
        yield (f"ternary_linear {_dt(dt)} bias={int(bias)}",
               lambda x=x, b=bias: tern.ternary_linear(x, words, scale, scale if b else None, 1))
    geoms = (("linear (1x1)", 1, 1, 0), ("conv 3x3 s1 p1", 3, 1, 1), ("conv 3x3 s2 p1", 3, 2, 1))
    for (name, k, st, pad), bias in itertools.product(geoms, (False, True)):
        wc = R.pack_ternary(torch.zeros(256, k, k, 128, dtype=torch.int8))
        sb = torch.zeros(2, 16, 16, 2, dtype=torch.int64)
        yield (f"spike conv {name} bias={int(bias)}",
               lambda wc=wc, sb=sb, k=k, st=st, pad=pad, b=bias: tern.spike_ternary_conv2d(
                   sb, wc, scale, scale if b else None, 128, [st, st], [pad, pad], [1, 1], 1))

    # spike_train: the weight gradient from the bits (GEMM + the split-K sum). Geometry and strides
    # are runtime integers, specialised by Triton only on 1 and multiples of 16: a linear layer,
    # 3x3 stride 1 and stride 2; grad_y channels-last (the spike forward's output) and contiguous
    # NCHW; one split (the GEMM writes grad_w in grad_y's dtype) and several (float32 workspace).
    strain = MODULES["spike_train"]
    gw_geoms = (("linear (1x1)", 1, 1, 0), ("conv 3x3 s1 p1", 3, 1, 1), ("conv 3x3 s2 p1", 3, 2, 1))
    for dt, (name, k, st, pad), layout, M in itertools.product(
            FLOATS, gw_geoms, ("channels_last", "contiguous"), (512, 2048)):  # M: one split / two
        hw = 16 if k == 3 else 1
        oh = (hw + 2 * pad - k) // st + 1
        b = M // (oh * oh)
        sb = torch.zeros(b, hw, hw, 2, dtype=torch.int64)
        gy = torch.zeros(b, 256, oh, oh, dtype=dt)
        if layout == "channels_last":
            gy = gy.to(memory_format=torch.channels_last)
        yield (f"grad_w {name} {_dt(dt)} {layout} M={M}",
               lambda gy=gy, sb=sb, k=k, st=st, pad=pad: strain.spike_conv2d_grad_weight(
                   gy, sb, 128, [k, k], [st, st], [pad, pad], [1, 1]))

    # twin loss
    for dt, ga, gb in itertools.product((*FLOATS, torch.float64), (True, False), (True, False)):
        a = torch.zeros(64, 1000, dtype=dt)
        y = torch.zeros(64, dtype=torch.int64)
        yield (f"twin_loss {_dt(dt)} grad_base={int(ga)} grad_twin={int(gb)}",
               lambda a=a, y=y, ga=ga, gb=gb: twin.twin_loss_fwd(a, a, y, 1.0, 1.0, 0.1, 1, 0.1, -100, ga, gb))


def _dt(dtype):
    return str(dtype).replace("torch.", "").replace("float", "fp").replace("bfp", "bf")


def record():
    """{kernel name: [(label, args, kwargs), ...]} with duplicates (same specialisation) removed."""
    found = kernels()
    recs = {name: [] for name in found}
    current = {}

    def recorder(name):
        def run(*args, grid=None, warmup=False, **kwargs):
            recs[name].append((current["label"], args, kwargs))
        return run

    saved = {}
    for name, (mod, attr) in found.items():
        k = getattr(MODULES[mod], attr)
        saved[name] = k
        k.run = recorder(name)  # KernelInterface.__getitem__ calls self.run
    try:
        for label, call in _calls():
            current["label"] = label
            launched = sum(map(len, recs.values()))
            try:
                call()
            except RuntimeError:
                # the kernels are recorded, not run: a launcher's checks after its launch (the twin
                # loss's assert on its target flag) read an unfilled buffer. Fine once recorded.
                if sum(map(len, recs.values())) == launched:
                    raise
    finally:
        for k in saved.values():
            del k.run
    target = GPUTarget("cuda", 90, 32)
    for name, lst in recs.items():  # drop launches that bind to the same specialisation
        jit, configs = _jit_and_configs(name)
        cfg_kw = configs[0].all_kwargs() if configs[0] is not None else {}
        binder = create_function_from_signature(jit.signature, jit.params, make_backend(target))
        seen, keep = set(), []
        for label, args, kwargs in lst:
            _, spec, opts = binder(*args, **kwargs, **cfg_kw)
            key = repr((spec, sorted(opts.items())))
            if key not in seen:
                seen.add(key)
                keep.append((label, args, kwargs))
        recs[name] = keep
    return recs


def _jit_and_configs(name):
    mod, attr = kernels()[name]
    k = getattr(MODULES[mod], attr)
    if isinstance(k, Autotuner):
        return k.fn, list(k.configs)
    return k, [None]


def variants(recs, mode):
    """[(kernel, spec index, config index)] for the mode."""
    out = []
    for name in sorted(recs):
        n_spec = len(recs[name])
        n_cfg = len(_jit_and_configs(name)[1])
        if n_spec == 0:
            continue
        if mode == "quick":
            pairs = [(0, 0)]
        elif mode == "full":
            pairs = list(itertools.product(range(n_spec), range(n_cfg)))
        else:
            pairs = [(0, c) for c in range(n_cfg)] + [(s, 0) for s in range(1, n_spec)]
        out += [(name, s, c) for s, c in pairs]
    return out


# ---- compiling one variant ----------------------------------------------------------------------

_RECS = None


def _cfg_label(cfg):
    if cfg is None:
        return "default (num_warps=4, num_stages=3)"
    kw = ", ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{kw}, warps={cfg.num_warps}, stages={cfg.num_stages}"


def _parse_ptxas(log, name):
    """Registers, stack, spill stores and loads of entry function ``name`` in a ptxas -v log."""
    sec = log.split(f"Function properties for {name}", 1)
    if len(sec) < 2:
        return None
    body = sec[1]
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", body)
    r = re.search(r"Used (\d+) registers", body)
    if not (m and r):
        return None
    return {"regs": int(r.group(1)), "stack": int(m.group(1)), "spill_st": int(m.group(2)),
            "spill_ld": int(m.group(3))}


def compile_one(task):
    """Compile (kernel, spec, config) for one arch; returns a result row (never raises)."""
    global _RECS
    name, si, ci, arch = task
    if _RECS is None:
        _RECS = record()
    label, args, kwargs = _RECS[name][si]
    jit, configs = _jit_and_configs(name)
    cfg = configs[ci]
    row = {"kernel": name, "arch": arch, "spec": label, "config": _cfg_label(cfg), "error": None}
    t0 = time.perf_counter()
    try:
        kw = {**kwargs, **(cfg.all_kwargs() if cfg is not None else {})}
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        binder = create_function_from_signature(jit.signature, jit.params, backend)
        bound, spec, opts = binder(*args, **kw)
        options, signature, constexprs, attrs = jit._pack_args(backend, kw, bound, spec, opts)
        knobs.nvidia.dump_ptxas_log = True
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            ck = triton.compile(ASTSource(jit, signature, constexprs, attrs), target=target,
                                options=options.__dict__)
        res = _parse_ptxas(log.getvalue(), ck.metadata.name)
        if res is None:
            raise RuntimeError("no ptxas resource line for the kernel in the log:\n" + log.getvalue())
        row.update(res, shared=ck.metadata.shared, cubin=len(ck.asm["cubin"]))
    except Exception as exc:  # noqa: BLE001 - reported, and the exit status says it failed
        row["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    row["seconds"] = time.perf_counter() - t0
    return row


# ---- report --------------------------------------------------------------------------------------

_T = "tests/test_triton_launch.py"
_G = "gpu_path: tests/test_gpu_path.py"
_TC = "test_ternary_conv.py::test_triton_float_conv_and_grad_input_round_once"
# op -> (CUDA implementation, Triton kernels it launches, tests of that path). "interp." = the
# Triton lane (TRITON_INTERPRET=1, CPU): the launchers; "gpu_path" = the op's registered CUDA
# function on the CPU dispatch (interpreter): opcheck, the reference, bad input, TNA steps and
# packed inference against the C++ path; "cuda" = tests that need a GPU (none has run on one yet).
_BN = "test_batch_norm_lif.py"
OPS = [
    ("batch_norm_lif_forward", "Triton: statistics tiles, their float64 combination, then normalise + LIF",
     ["_stats_kernel", "_finish_stats_kernel", "_bn_lif_fwd_kernel"],
     "interp.: " + _BN + "::test_triton_kernels_*; " + _G + "; cuda: " + _BN
     + "::test_cuda_fused_layer_matches_the_unfused_layer"),
    ("batch_norm_lif_backward", "Triton: normalise + LIF backward + sums, their combination, then the gradient",
     ["_bn_lif_bwd_kernel", "_finish_grad_kernel", "_bn_grad_kernel"], "as batch_norm_lif_forward"),
    ("lif_fwd", "Triton", ["_lif_fwd_kernel"],
     "interp.: test_lif.py::test_triton_matches_reference, ::test_triton_low_precision, " + _T
     + "; " + _G + "; cuda: test_lif.py::test_cuda_autograd_through_op"),
    ("lif_bwd", "Triton", ["_lif_bwd_kernel"], "as lif_fwd"),
    ("lif_bwd_recompute", "Triton, one kernel (membrane recomputed in registers)", ["_lif_bwd_recompute_kernel"],
     "interp.: test_lif.py::test_triton_recompute_backward_matches_cpu, "
     "::test_triton_recompute_backward_one_kernel; " + _G),
    ("lif_pack", "composed: lif_fwd + pack_spikes", ["_lif_fwd_kernel", "_pack_kernel"], _G),
    ("spike_ternary_conv2d_lif", "composed: spike conv, lif_pack", ["_spike_conv_kernel", "_lif_fwd_kernel",
                                                                   "_pack_kernel"], _G),
    ("pack_ternary", "Triton (host check of the codes: one sync)", ["_pack_kernel"],
     "interp.: test_ternary.py::test_triton_pack_agrees_with_cpu, ::test_triton_pack_rejects_bad_values_and_unpacks, "
     + _T + "; " + _G),
    ("pack_spikes", "Triton (bad spikes: device-side assert)", ["_pack_kernel"], "as pack_ternary"),
    ("unpack_ternary", "Triton (int8 out)", ["_decode_kernel"], "interp.: test_ternary.py, " + _T + "; " + _G),
    ("unpack_spikes", "Triton (uint8 out)", ["_unpack_spikes_kernel"], "interp.: test_ternary.py, " + _T + "; " + _G),
    ("ternarize", "Triton: per channel one statistics kernel + fused quantise-and-pack; layer-wise row statistics, "
     "torch reductions, quantise-and-pack", ["_channel_stats_kernel", "_row_stats_kernel", "_quantize_pack_kernel"],
     "interp.: test_ternary.py::test_triton_ternarize_agrees_with_cpu; " + _G),
    ("spike_ternary_linear", "Triton int8 tl.dot", ["_spike_conv_kernel"],
     "interp.: test_ternary.py::test_triton_spike_linear_matches_cpu; " + _G),
    ("spike_ternary_conv2d", "Triton int8 tl.dot (implicit GEMM)", ["_spike_conv_kernel"],
     "interp.: test_ternary_conv.py::test_triton_spike_conv_matches_cpu; " + _G),
    ("ternary_linear", "Triton tl.dot: fp16/bf16 x in its dtype (fp32 accumulation), else fp32 (ieee)",
     ["_float_linear_kernel"],
     "interp.: test_ternary.py::test_triton_float_linear_matches_reference, ::test_triton_float_linear_half_inputs; "
     + _G),
    ("ternary_linear_grad_input", "Triton decode + torch matmul (fp32; fp16/bf16: TF32, scale split hi + lo)",
     ["_decode_kernel"],
     "interp.: test_ternary.py::test_triton_float_linear_half_inputs, " + _T + " (runs only); " + _G),
    ("ternary_conv2d", "Triton decode + torch conv2d (cuDNN fp32; TF32 only for fp16/bf16 x, exact there)",
     ["_decode_kernel"], "interp.: " + _TC + ", " + _T + " (runs only); " + _G),
    ("ternary_conv2d_grad_input", "Triton decode + torch conv2d_input (as ternary_linear_grad_input)",
     ["_decode_kernel"], "interp.: " + _TC + "; " + _G),
    ("spike_max_pool2d (+ backward)", "torch max_pool2d + Triton pack/unpack + torch", ["_pack_kernel",
                                                                                          "_unpack_spikes_kernel"],
     _G),
    ("spike_conv2d_grad_weight", "Triton GEMM on the bits (tl.dot fp32 IEEE / bf16 / fp16), split-K with a "
     "fixed-order sum", ["_spike_grad_weight_kernel", "_spike_grad_weight_f32_kernel", "_split_sum_kernel"],
     "interp.: " + _T + "; " + _G + " (test_spike_grad_weight_*)"),
    ("twin_loss_fwd", "Triton (valid-row count, row kernel, finishing sums)",
     ["_count_valid_kernel", "_twin_loss_fwd_kernel", "_twin_loss_finish_kernel"],
     "interp.: test_twin_loss.py::test_triton_matches_cpu_kernel, ::test_triton_all_ignored_bf16_and_partial_grads, "
     + _T + "; " + _G + "; cuda: test_twin_loss.py::test_cuda_op_dispatches_to_triton"),
    ("twin_loss_bwd", "torch (one elementwise multiply per tensor)", [], _G),
]


def ops_table(rows):
    """Per op: GPU path, kernels, tests, and the compile resources of its kernels (all archs)."""
    out = ["| op | CUDA path | Triton kernels | max registers | max spill stores (bytes) | max shared | tests |",
           "|---|---|---|---:|---:|---:|---|"]
    ok = [r for r in rows if not r["error"]]
    for op, path, kerns, tests in OPS:
        mine = [r for r in ok if r["kernel"] in kerns]
        if mine:
            res = (f"{max(r['regs'] for r in mine)} | {max(r['spill_st'] for r in mine)} | "
                   f"{_kib(max(r['shared'] for r in mine))}")
        else:
            res = "- | - | -"
        ks = ", ".join(f"`{k}`" for k in kerns) or "-"
        out.append(f"| {op} | {path} | {ks} | {res} | {tests} |")
    return "\n".join(out)

def _rng(vals):
    lo, hi = min(vals), max(vals)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def summary_table(rows):
    """One line per kernel and arch: variants, registers, worst spill (and where), max shared."""
    out = ["| kernel | arch | variants | registers | spill stores, max (bytes) | stack, max | shared mem, max |",
           "|---|---|---:|---|---|---:|---:|"]
    key = lambda r: (r["kernel"], -r["arch"])  # noqa: E731
    for (kern, arch), grp in itertools.groupby(sorted(rows, key=key), key=lambda r: (r["kernel"], r["arch"])):
        grp = [r for r in grp if not r["error"]]
        if not grp:
            continue
        worst = max(grp, key=lambda r: r["spill_st"])
        spill = "0" if worst["spill_st"] == 0 else f"**{worst['spill_st']}** ({worst['config']})"
        out.append(f"| `{kern}` | sm_{arch} | {len(grp)} | {_rng([r['regs'] for r in grp])} | {spill} | "
                   f"{max(r['stack'] for r in grp)} | {_kib(max(r['shared'] for r in grp))} |")
    return "\n".join(out)


def detail_table(rows):
    out = ["| kernel | arch | specialisation | config | regs | spill st/ld | stack | shared | compile s |",
           "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["kernel"], -r["arch"], r["spec"], r["config"])):
        if r["error"]:
            out.append(f"| `{r['kernel']}` | sm_{r['arch']} | {r['spec']} | {r['config']} | ERROR | | | | |")
        else:
            out.append(f"| `{r['kernel']}` | sm_{r['arch']} | {r['spec']} | {r['config']} | {r['regs']} | "
                       f"{r['spill_st']}/{r['spill_ld']} | {r['stack']} | {_kib(r['shared'])} | {r['seconds']:.1f} |")
    return "\n".join(out)


def _kib(b):
    return f"{b / 1024:.0f} KiB" if b >= 1024 else f"{b} B"


BEGIN, END = "<!-- gpu-compile:begin -->", "<!-- gpu-compile:end -->"


def write_markdown(path, rows, mode, archs, wall, jobs, argv):
    """The tables; into an existing file between the gpu-compile markers, else as the whole file."""
    n_err = sum(1 for r in rows if r["error"])
    args = " ".join(argv if argv is not None else sys.argv[1:])
    body = (f"{BEGIN}\n<!-- generated by `python scripts/gpu_compile.py {args}`; do not edit by hand -->\n\n"
            f"Triton {triton.__version__}, {mode} mode, sm_{', sm_'.join(map(str, archs))}: "
            f"**{len(rows)} compilations, {n_err} errors** (wall {wall:.0f} s with {jobs} job(s) on the "
            f"development machine).\n\n"
            f"### Per op\n\n{ops_table(rows)}\n\n### Per kernel\n\n{summary_table(rows)}\n\n"
            f"<details><summary>Every variant ({len(rows)})</summary>\n\n{detail_table(rows)}\n\n</details>\n"
            f"{END}")
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        text = old[:old.index(BEGIN)] + body + old[old.index(END) + len(END):]
    else:
        text = body + "\n"
    path.write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="90,80", help="compute capabilities, comma-separated (default 90,80)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="one variant per kernel")
    g.add_argument("--full", action="store_true", help="every config x every specialisation")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--markdown", type=Path, help="write the tables to this file (markdown)")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    ap.add_argument("--only", metavar="REGEX", help="only the kernels whose name matches (no --markdown)")
    a = ap.parse_args(argv)
    if a.only and a.markdown:
        ap.error("--only compiles part of the kernels: its tables would not describe them all (drop --markdown)")
    archs = [int(x) for x in a.arch.split(",") if x.strip()]
    mode = "quick" if a.quick else "full" if a.full else "cover"

    t0 = time.perf_counter()
    global _RECS
    _RECS = record()
    if a.only:
        _RECS = {k: v for k, v in _RECS.items() if re.search(a.only, k)}
        if not _RECS:
            ap.error(f"--only {a.only!r} matches no kernel")
    missing = [k for k, v in _RECS.items() if not v]
    vs = variants(_RECS, mode)
    tasks = [(n, s, c, arch) for arch in archs for (n, s, c) in vs]
    print(f"gpu_compile: {len(_RECS)} kernels, {sum(map(len, _RECS.values()))} specialisations, mode {mode}: "
          f"{len(tasks)} compilations (archs {archs}, jobs {a.jobs}, triton {triton.__version__})", flush=True)
    if a.list:
        for t in tasks:
            print(t[3], t[0], _RECS[t[0]][t[1]][0], _cfg_label(_jit_and_configs(t[0])[1][t[2]]))
        return 0
    if a.jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as ex:
            rows = list(ex.map(compile_one, tasks, chunksize=4))
    else:
        rows = [compile_one(t) for t in tasks]
    wall = time.perf_counter() - t0

    errors = [r for r in rows if r["error"]]
    print()
    print(summary_table(rows))
    cpu = sum(r["seconds"] for r in rows)
    print(f"\n{len(rows)} compilations, {len(errors)} errors, wall {wall:.0f} s "
          f"(compile time summed over variants {cpu:.0f} s, jobs {a.jobs})")
    for r in errors:
        print(f"\nERROR {r['kernel']} sm_{r['arch']} [{r['spec']}] [{r['config']}]\n{r['error']}")
    for k in missing:
        print(f"ERROR: no launcher call reached {k}")
    if a.markdown:
        write_markdown(a.markdown, rows, mode, archs, wall, a.jobs, argv)
    return 1 if errors or missing else 0


if __name__ == "__main__":
    sys.exit(main())
