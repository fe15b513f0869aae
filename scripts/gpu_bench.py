"""The steps of scripts/gpu_check.sh (the GPU evidence script), one subcommand each, so that every
step runs in a process of its own (a CUDA error in one cannot poison the next) and the code can be
tested without a GPU. This module imports only the standard library at the top; torch is imported
inside the steps.

    python scripts/gpu_bench.py STEP --out OUT [--work WORK] [--dry-run]

Steps (what each writes under OUT):
    tests        GPU tests, one pytest process per file          -> tests.log, tests.xml
    launch       µs per call, 10 consecutive calls, tiny sizes     -> bench.json["steps"]["launch"]
    lif          LIF forward+backward, % of HBM bandwidth; BN + LIF
                 fused vs unfused                                  -> bench.json["steps"]["lif"]
    ternary      spike/float x ternary GEMM and conv vs bf16       -> bench.json["steps"]["ternary"]
    twin         fused twin loss vs the unfused composition       -> bench.json["steps"]["twin"]
    train_step   TNA training step vs SpikingJelly: img/s, memory  -> bench.json["steps"]["train_step"]
    training     ternary baseline vs ternary + TNA on CIFAR-10     -> train.json
Helpers: record (one step's status into summary.json), summarize (summary.md, the final table and
the output-file check), tiny-data (a small ImageFolder for --dry-run), lif-cupy (SpikingJelly's
CuPy LIF, run in a process that sees SpikingJelly 0.0.0.0.14).

--dry-run: the same code on the CPU (TRITON_INTERPRET=1 set by gpu_check.sh) at tiny sizes.
Each step stops starting new measurements at $GPU_CHECK_STEP_DEADLINE (Unix time) so what it has
measured is written before gpu_check.sh's time box kills it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HBM_BYTES_PER_S = 4.8e12  # H200 HBM3e, the datasheet figure (a device copy reaches ~4.3e12 here)
STEPS = ("setup", "build", "tests", "launch", "lif", "ternary", "twin", "train_step", "training")
BENCH_STEPS = ("launch", "lif", "ternary", "twin", "train_step")
OUT_FILES = ("run.log", "env_build.log", "tests.log", "tests.xml", "bench.json", "train.json",
             "summary.json", "summary.md")
MAX_OUT_FILES = 8
GPU_MARKERS = ("cuda", "triton", "gpu_path")
VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]

# Sizes per mode. GPU: CIFAR spiking-VGG shapes (T = 4); dry: tiny, one or two iterations.
SIZES = {
    "gpu": {
        # [T, B, C, H, W]: VGG layer 1's activation at B = 384, 201M neurons (805 MB per fp32 tensor).
        # The first H200 run's B = 32 was host-bound: its copy took 39 µs against ~220 µs of host
        # time per op call, so its % of HBM measured the host. 12x the elements puts the copy at
        # ~470 µs and a LIF forward + backward near 1 ms or more of GPU work per step.
        "lif_shape": (4, 384, 128, 32, 32),
        "warmup": 3, "reps": 10,
        # (C_in, C_out, H=W) of VGG-11 conv layers on 32x32 input; T*B = 4 * 256 images
        "conv_layers": [(64, 128, 16), (128, 256, 8), (256, 256, 8), (512, 512, 4)], "tb": 1024,
        "twin_shapes": [(256, 10), (256, 100), (4096, 1000)],
        "train_arch": "vgg11", "train_batch": 256, "T": 4, "train_warmup": 3, "train_reps": 10,
        "training_warmup_batches": 10,  # per epoch of the training step's untimed warm-up (2 epochs)
        "float_dtype": "bfloat16",
    },
    "dry": {
        "lif_shape": (2, 2, 4, 4, 4),
        "warmup": 1, "reps": 2,
        "conv_layers": [(8, 16, 4)], "tb": 2,
        "twin_shapes": [(8, 10)],
        "train_arch": "tiny", "train_batch": 2, "T": 4, "train_warmup": 0, "train_reps": 1,
        "training_warmup_batches": 1,
        "float_dtype": "float32",
    },
}


# ------------------------------------------------------------------------------- small helpers


def now() -> float:
    return time.time()


def step_deadline(default_s: float = 600.0) -> float:
    """The Unix time at which gpu_check.sh's time box for this step ends (env), minus a margin."""
    raw = os.environ.get("GPU_CHECK_STEP_DEADLINE")
    return (float(raw) if raw else now() + default_s) - 3.0


def write_json(path: Path, data) -> None:
    """Atomic: a temp file beside it, then a rename (a killed step leaves the last full version)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]


class Results:
    """One step's section of OUT/bench.json, rewritten after every case so a killed step keeps what
    it measured. Cases are dicts with at least ``status`` ("ok", "skipped" with ``reason``, or
    "failed" with ``error``)."""

    def __init__(self, out: Path, step: str, dry: bool, filename: str = "bench.json"):
        self.path = Path(out) / filename
        self.data = read_json(self.path, None) or {"schema": 1, "steps": {}}
        self.data["dry_run"] = dry
        self.data["hbm_peak_bytes_per_s"] = HBM_BYTES_PER_S
        self.sec = {"status": "running", "started": now(), "cases": []}
        self.data["steps"][step] = self.sec
        self.flush()

    def flush(self) -> None:
        write_json(self.path, self.data)

    def set(self, **kw) -> None:
        self.sec.update(kw)
        self.flush()

    def device(self, info: dict) -> None:
        self.data.setdefault("device", {}).update(info)
        self.flush()

    def add(self, case: dict) -> dict:
        self.sec["cases"].append(case)
        self.flush()
        return case

    def finish(self, note: str = "") -> int:
        """Step status from its cases; returns the process exit code (1 if a case failed)."""
        st = [c.get("status") for c in self.sec["cases"]]
        if "failed" in st:
            status = "partial" if "ok" in st else "failed"
        elif st and all(s == "skipped" for s in st):
            status = "skipped"
        else:
            status = "ok"
        self.set(status=status, note=note, seconds=round(now() - self.sec["started"], 1))
        print(f"[{status}] {note}")
        return 1 if "failed" in st else 0


def run_case(res: Results, deadline: float, base: dict, fn) -> dict:
    """Runs one measurement ``fn() -> dict`` unless the step's time box is used up; records it."""
    if now() > deadline:
        return res.add({**base, "status": "skipped", "reason": "the step's time box ran out"})
    try:
        out = fn()
    except SkipCase as exc:
        return res.add({**base, "status": "skipped", "reason": str(exc)})
    except Exception as exc:  # a failed case is recorded; the step goes on with the next one
        traceback.print_exc()
        return res.add({**base, "status": "failed", "error": short_error(exc)})
    case = res.add({**base, "status": "ok", **out})
    print(json.dumps(case, default=str))
    return case


class SkipCase(Exception):
    """A measurement that cannot run here (peer not installed, needs CUDA); the message says why."""


def _torch():
    import torch

    return torch


def device_info() -> dict:
    torch = _torch()
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1))
    else:
        info.update(name="cpu", threads=torch.get_num_threads())
    return info


def get_device():
    torch = _torch()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev) -> None:
    if dev.type == "cuda":
        _torch().cuda.synchronize()


def time_fn(fn, dev, warmup: int, reps: int) -> dict:
    """Median and min of ``reps`` single calls after ``warmup`` calls, in µs (CUDA events on the
    GPU, perf_counter on the CPU)."""
    torch = _torch()
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e6)
    return {"median_us": round(statistics.median(times), 2), "min_us": round(min(times), 2), "reps": reps}


def module_to_device(module, dev):
    """``module.to(dev)``, and also the tensors its submodules keep as plain attributes (state a
    peer library holds outside its registered buffers, which ``.to`` does not move)."""
    torch = _torch()
    module = module.to(dev)
    for sub in module.modules():
        for name, value in list(vars(sub).items()):
            if isinstance(value, torch.Tensor) and value.device != dev:
                setattr(sub, name, value.to(dev))
    return module


def sizes(dry: bool) -> dict:
    return SIZES["dry" if dry else "gpu"]


def import_spikingjelly(pin_triton: bool):
    """SpikingJelly 2.x's activation_based API. ``pin_triton``: its LIF CUDA implementation pinned
    to Triton (SJ_LIF_CUDA_IMPLEMENTATION, read at import), so a fallback is an error rather than a
    silent torch loop. Not for bf16 autocast: there its membrane state is bf16 and (per its source)
    only the torch reference path takes that, which a pinned implementation refuses."""
    if pin_triton:
        os.environ.setdefault("SJ_LIF_CUDA_IMPLEMENTATION", "triton")
    try:
        import spikingjelly
        from spikingjelly.activation_based import functional as sjf
        from spikingjelly.activation_based import neuron, surrogate
    except ImportError as exc:
        raise SkipCase(f"SpikingJelly is not importable ({short_error(exc)}); gpu_payload/ carries it") from exc
    return spikingjelly, sjf, neuron, surrogate


def sj_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("spikingjelly")
    except Exception:
        return None


# ------------------------------------------------------------------------------------- step: tests


def registered_markers(pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    """Marker names registered in pyproject.toml ([tool.pytest.ini_options] markers)."""
    text = pyproject.read_text()
    try:
        import tomllib

        markers = tomllib.loads(text)["tool"]["pytest"]["ini_options"].get("markers", [])
    except (ImportError, KeyError):
        block = re.search(r"markers\s*=\s*\[(.*?)\]", text, re.S)
        markers = re.findall(r"\"([^\"]+)\"", block.group(1)) if block else []
    return {m.split(":")[0].strip() for m in markers}


def marker_expression(registered: set[str]) -> str | None:
    """``-m`` expression over the GPU markers that exist (pytest --strict-markers rejects an
    unknown name in ``-m``; gpu_path is being added by another lane)."""
    names = [m for m in GPU_MARKERS if m in registered]
    return " or ".join(names) if names else None


def gpu_test_files(tests_dir: Path, markers, root: Path = ROOT) -> list[str]:
    """Test files (relative to ``root``) that use one of ``markers`` (``mark.<name>`` anywhere)."""
    pat = re.compile(r"mark\.(" + "|".join(re.escape(m) for m in markers) + r")\b")
    return [str(p.relative_to(root)) for p in sorted(tests_dir.glob("test_*.py")) if pat.search(p.read_text())]


def merge_junit(parts: list[tuple[str, Path | None, int, str]], dest: Path) -> dict:
    """One <testsuites> from per-file JUnit files; a file that timed out or crashed before writing
    its XML becomes a suite with one error case. Returns the totals."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for target, xml_path, rc, why in parts:
        suites = []
        if xml_path is not None and xml_path.is_file():
            try:
                tree = ET.parse(xml_path).getroot()
                suites = [tree] if tree.tag == "testsuite" else list(tree.iter("testsuite"))
            except ET.ParseError:
                suites = []
        if not suites and rc not in (0, 5):
            s = ET.Element("testsuite", name=target, tests="1", failures="0", errors="1", skipped="0")
            case = ET.SubElement(s, "testcase", classname=target, name="(whole file)")
            ET.SubElement(case, "error", message=why or f"pytest exited {rc}")
            suites = [s]
        for s in suites:
            s.set("name", target)
            for k in totals:
                totals[k] += int(s.get(k, 0) or 0)
            root.append(s)
    for k, v in totals.items():
        root.set(k, str(v))
    ET.ElementTree(root).write(dest, encoding="utf-8", xml_declaration=True)
    return totals


def cmd_tests(args) -> int:
    out, work = Path(args.out), Path(args.work)
    deadline = step_deadline()
    expr = marker_expression(registered_markers())
    if args.targets:
        targets = args.targets
    else:
        targets = gpu_test_files(ROOT / "tests", GPU_MARKERS) if expr else []
    jdir = work / "junit"
    jdir.mkdir(parents=True, exist_ok=True)

    def one(target: str):
        tag = re.sub(r"[^A-Za-z0-9_.-]", "_", target)[:120]
        xml = jdir / f"{tag}.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", target,
               f"--junitxml={xml}"]
        if expr:
            cmd += ["-m", expr]
        if args.k:
            cmd += ["-k", args.k]
        left = deadline - now()
        t0 = now()
        if left < 5:
            return target, None, 124, "not started: the step's time box ran out", "", 0.0
        try:
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left)
            rc, text, why = p.returncode, p.stdout + p.stderr, ""
        except subprocess.TimeoutExpired as exc:
            raw = (exc.stdout or b"") + (exc.stderr or b"")
            rc, why = 124, f"timed out after {left:.0f} s"
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return target, xml, rc, why, text, now() - t0

    print(f"tests: -m {expr!r}, {len(targets)} target(s), {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, targets))
    lines, parts, bad, slow = [f"# pytest -m {expr!r}, one process per file ({len(targets)} files)\n"], [], [], []
    for target, xml, rc, why, text, secs in results:
        ok = rc in (0, 5)
        if rc == 124:
            slow.append(target)
        elif not ok:
            bad.append(target)
        body = text.splitlines()
        keep = body if not ok else body[-3:]
        lines.append(f"== {target}: rc={rc}{' (nothing selected)' if rc == 5 else ''} {why} [{secs:.1f} s]")
        lines += keep
        lines.append("")
        parts.append((target, xml, rc, why))
        print(f"  {target}: rc={rc} {why} ({secs:.1f} s) {body[-1] if body else ''}")
    totals = merge_junit(parts, out / "tests.xml")
    (out / "tests.log").write_text("\n".join(lines) + "\n")
    note = (f"{totals['tests']} tests in {len(targets)} files: {totals['failures']} failed, "
            f"{totals['errors']} errors, {totals['skipped']} skipped"
            + (f"; failing files: {', '.join(bad)}" if bad else "")
            + (f"; timed out (not counted as failures): {', '.join(slow)}" if slow else ""))
    (work / "notes").mkdir(exist_ok=True)
    (work / "notes" / "tests.txt").write_text(note)
    print(note)
    return 1 if bad else (3 if slow else 0)  # 3: some files ran out of time, none failed


# ------------------------------------------------------------------------------------ step: launch


def cmd_launch(args) -> int:
    """Launch overhead: a first call (JIT compile, autotune), then blocks of 10 back-to-back calls
    between two synchronisations; per-call µs = block time / 10. Tiny sizes, so the figure is the
    host cost of a call (argument checks, dispatcher, launcher), not the kernel's work. Then the
    same forward of lif and of twin_loss entered at each layer down to the launch (host_split_cases)."""
    torch = _torch()
    from tna_kernels import functional as F

    dry, dev = args.dry_run, get_device()
    res = Results(args.out, "launch", dry)
    res.device(device_info())
    deadline = step_deadline()
    res.set(method="first call alone; then 3 blocks of 10 consecutive calls, synchronised before and after "
                   "each block; per_call_us = block / 10", calls_per_block=10,
            split="the cases with a 'split' field call the same forward (same tensors, no_grad) at each layer "
                  "in 'level' order, from the public function down to the kernel launch; the difference between "
                  "two consecutive levels is the host cost of the layer between them")

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 2, 64, generator=g) * 1.5 + 0.6).to(dev)
    spikes = (torch.rand(8, 64, generator=g) < 0.3).float().to(dev)
    wf = torch.randn(16, 64, generator=g).to(dev)
    lb, lt = torch.randn(8, 10, generator=g).to(dev), torch.randn(8, 10, generator=g).to(dev)
    y = torch.randint(0, 10, (8,), generator=g).to(dev)

    def spike_linear():  # packing is set-up, inside the case so that a failure stays in the case
        bits, w = F.pack_spikes(spikes), F.quantize_pack(wf)
        return lambda: F.spike_ternary_linear(bits, w)

    ops = {  # name: (factory of the timed call, shape)
        "lif": (lambda: lambda: F.lif(x, tau=2.0), "x [4, 2, 64] float32, forward"),
        "spike_ternary_linear": (spike_linear, "bits [8, 1] x W [16, 64]"),
        "twin_loss": (lambda: lambda: F.twin_loss(lb, lt, y, mse_weight=0.005), "logits [8, 10], forward"),
        "torch.add (eager floor)": (lambda: lambda: torch.add(lb, lt), "[8, 10]"),
    }

    def measure(factory):
        def go():
            fn = factory()
            sync(dev)
            t = time.perf_counter()
            fn()
            sync(dev)
            first = (time.perf_counter() - t) * 1e6
            blocks = []
            for _ in range(3):
                sync(dev)
                t = time.perf_counter()
                for _ in range(10):
                    fn()
                sync(dev)
                blocks.append((time.perf_counter() - t) * 1e6 / 10)
            return {"first_call_us": round(first, 1), "per_call_us": [round(b, 2) for b in blocks],
                    "per_call_us_min": round(min(blocks), 2)}
        return go

    with torch.no_grad():
        for name, (fn, shape) in ops.items():
            run_case(res, deadline, {"op": name, "shape": shape, "device": dev.type}, measure(fn))
        # after the cases above: their first calls have compiled and autotuned these kernels
        for split, level, name, factory, shape in host_split_cases(x, lb, lt, y):
            base = {"op": name, "shape": shape, "device": dev.type, "split": split, "level": level}
            run_case(res, deadline, base, measure(factory))
    ok = [c for c in res.sec["cases"] if c["status"] == "ok"]
    note = "; ".join(f"{c['op']} {c['per_call_us_min']:.1f} µs/call" for c in ok if "split" not in c)
    for split in dict.fromkeys(c["split"] for c in ok if "split" in c):
        note += f"; {split} split µs/call: " + ", ".join(
            f"{c['level']} {c['per_call_us_min']:.1f}" for c in ok if c.get("split") == split)
    return res.finish(note)


def host_split_cases(x, lb, lt, y) -> list[tuple]:
    """The forward of F.lif(x, tau=2.0) and of F.twin_loss(lb, lt, y, mse_weight=0.005) (under
    no_grad, as the launch step runs) entered at each layer, as (split, level, case name, factory of
    the timed call, shape). The first H200 run put a small F.lif at ~220 µs of host time per call
    against torch.add's 8 µs; consecutive levels tell which layer takes it. The levels below the
    dispatcher are the functions registered for CUDA; on the dry run they run on the CPU tensors
    under the Triton interpreter (the public and dispatcher levels reach the C++ kernels there)."""
    import importlib

    torch = _torch()
    from tna_kernels import functional as F

    # The op's arguments after the tensors, as F.lif(x, tau=2.0) passes them under no_grad
    # (ops/lif.py _lif_hyper, save_h False): tau, decay_input, v_threshold, v_reset, soft_reset,
    # detach_reset, surrogate, alpha, save_h.
    lif_args = (2.0, True, 1.0, 0.0, False, False, "atan", 2.0, False)
    # F.twin_loss(lb, lt, y, mse_weight=0.005) under no_grad: ce_weight_base, ce_weight_twin,
    # mse_weight, mse_reduction (1: sum_over_batch), label_smoothing, ignore_index, need_grad_base,
    # need_grad_twin.
    twin_args = (1.0, 1.0, 0.005, 1, 0.0, -100, False, False)
    lif_shape = f"x {list(x.shape)} {str(x.dtype).removeprefix('torch.')}, forward"
    twin_shape = f"logits {list(lb.shape)}, forward"

    def triton_module(name):
        try:
            return importlib.import_module(f"tna_kernels.triton.{name}")
        except ImportError as exc:
            raise SkipCase(f"the Triton implementation is not importable ({short_error(exc)})") from exc

    def registered_kernel():
        from tna_kernels.ops import CUDA_KERNELS

        kernel = CUDA_KERNELS.get("lif_fwd")
        if kernel is None:
            raise SkipCase("no CUDA kernel is registered for tna::lif_fwd (Triton missing)")
        return lambda: kernel(x, None, *lif_args)

    def triton_lif():
        launcher = triton_module("lif").lif_fwd
        return lambda: launcher(x, None, *lif_args)

    def lif_outputs():  # what the launcher allocates: spikes, v_last (state dtype) and an empty h_seq
        return lambda: (torch.empty(x.shape, dtype=x.dtype, device=x.device),
                        torch.empty(x.shape[1:], dtype=torch.float32, device=x.device),
                        torch.empty((0,), dtype=torch.float32, device=x.device))

    def triton_twin():
        impl = triton_module("twin_loss").twin_loss_fwd
        return lambda: impl(lb, lt, y, *twin_args)

    return [
        ("lif_fwd", "public", "lif_fwd split 1/5: F.lif (public API)",
         lambda: lambda: F.lif(x, tau=2.0), lif_shape),
        ("lif_fwd", "op", "lif_fwd split 2/5: torch.ops.tna.lif_fwd (dispatcher)",
         lambda: lambda: torch.ops.tna.lif_fwd(x, None, *lif_args), lif_shape),
        ("lif_fwd", "cuda_kernel", "lif_fwd split 3/5: the registered CUDA kernel (op checks + Triton launcher)",
         registered_kernel, lif_shape),
        ("lif_fwd", "launcher", "lif_fwd split 4/5: tna_kernels.triton.lif.lif_fwd (Triton launcher alone)",
         triton_lif, lif_shape),
        ("lif_fwd", "outputs_empty", "lif_fwd split 5/5: torch.empty x 3 (the launcher's outputs alone)",
         lif_outputs, lif_shape),
        ("twin_loss", "public", "twin_loss split 1/3: F.twin_loss (public API)",
         lambda: lambda: F.twin_loss(lb, lt, y, mse_weight=0.005), twin_shape),
        ("twin_loss", "op", "twin_loss split 2/3: torch.ops.tna.twin_loss_fwd (dispatcher)",
         lambda: lambda: torch.ops.tna.twin_loss_fwd(lb, lt, y, *twin_args), twin_shape),
        ("twin_loss", "triton", "twin_loss split 3/3: tna_kernels.triton.twin_loss.twin_loss_fwd (implementation)",
         triton_twin, twin_shape),
    ]


# --------------------------------------------------------------------------------------- step: lif


LIF_BYTES_PER_ELEM = 24


def cmd_lif(args) -> int:
    """LIF forward + backward (tau 2, hard reset 0, threshold 1, ATan surrogate alpha 2), fp32,
    against SpikingJelly (Triton backend, and CuPy from SpikingJelly 0.0.0.0.14), torch.compile of
    the pure-torch reference, the eager reference, and a same-size copy."""
    torch = _torch()
    from tna_kernels import functional as F
    from tna_kernels import reference

    dry, dev, sz = args.dry_run, get_device(), sizes(args.dry_run)
    res = Results(args.out, "lif", dry)
    res.device(device_info())
    deadline = step_deadline()
    shape = sz["lif_shape"]
    n = 1
    for d in shape:
        n *= d
    res.set(shape=list(shape), dtype="float32", elements=n,
            bytes_model=f"{LIF_BYTES_PER_ELEM} B per neuron-step for every provider (fp32): forward reads x and "
                        "writes spikes and the pre-spike membrane h (12 B), backward reads grad_spikes and h and "
                        "writes grad_x (12 B); the least a fused forward+backward that saves h moves. A provider "
                        "that moves more shows a lower %. copy: 8 B per element (read + write).",
            pct_hbm="bytes / median time / 4.8e12 B/s * 100")
    g = torch.Generator(device=dev).manual_seed(0)  # on the device: 201M host randoms take seconds
    x = (torch.randn(shape, generator=g, device=dev) * 1.5 + 0.6).requires_grad_()
    grad = torch.randn(shape, generator=g, device=dev)
    v0 = torch.zeros(shape[1:], device=dev)

    def fwd_bwd(f):
        def step():
            x.grad = None
            f(x).backward(grad)
        return step

    def timed(step, nbytes, extra=None):
        def go():
            t = time.perf_counter()
            step()  # first call: compiles / autotunes
            sync(dev)
            first = time.perf_counter() - t
            r = time_fn(step, dev, sz["warmup"], sz["reps"])
            r["first_call_s"] = round(first, 3)
            r["gbytes_per_s"] = round(nbytes / (r["median_us"] * 1e-6) / 1e9, 1)
            r["pct_hbm"] = round(100 * nbytes / (r["median_us"] * 1e-6) / HBM_BYTES_PER_S, 1)
            r.update(extra or {})
            return r
        return go

    nbytes = LIF_BYTES_PER_ELEM * n
    run_case(res, deadline, {"provider": "tna"}, timed(fwd_bwd(lambda x: F.lif(x, tau=2.0)), nbytes))
    src, dst = torch.randn(shape, device=dev), torch.empty(shape, device=dev)
    run_case(res, deadline, {"provider": "copy"}, timed(lambda: dst.copy_(src), 8 * n))

    def sj_triton():
        if dev.type != "cuda":
            raise SkipCase("SpikingJelly's Triton LIF needs CUDA (on the CPU it runs its torch path)")
        _, sjf, neuron, surrogate = import_spikingjelly(pin_triton=True)
        node = neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m").to(dev)

        def f(x):
            sjf.reset_net(node)
            return node(x)

        r = timed(fwd_bwd(f), nbytes, {"spikingjelly": sj_version()})()
        try:
            from spikingjelly._ops.lif import _selection

            r["implementation"] = _selection.diagnostics(dev)["implementation"]
        except Exception as exc:
            r["implementation"] = f"unknown ({short_error(exc)})"
        return r

    run_case(res, deadline, {"provider": "spikingjelly_triton"}, sj_triton)

    # batch norm (batch statistics) + LIF, forward + backward, x [T*B, C, H, W] fp32 NCHW: the fused
    # CUDA kernels (tna::batch_norm_lif_*) against the unfused layer (cuDNN's batch norm + the Triton
    # LIF), the measurement that decides tna_kernels.nn.bn_lif.CUDA_FUSED's default. Bytes model: the
    # fused pair's floor, 36 B per element (forward: x twice, spikes; backward: x and grad_spikes,
    # grad_y written, grad_y and x read, grad_x written).
    def bn_lif_case(fused):
        def go():
            from tna_kernels import nn as tnn
            from tna_kernels.nn import bn_lif

            T_, B_, C_, H_, W_ = shape
            xb = (torch.randn(T_ * B_, C_, H_, W_, generator=g, device=dev) * 1.5 + 0.6).requires_grad_()
            gb = torch.randn(shape, generator=g, device=dev)
            bn, neuron = torch.nn.BatchNorm2d(C_).to(dev), tnn.LIF(tau=2.0)

            def step():
                xb.grad = None
                bn_lif.bn_lif(xb, bn, neuron, T_).backward(gb)

            before = bn_lif.CUDA_FUSED
            bn_lif.CUDA_FUSED = fused
            try:
                return timed(step, 36 * n, {"bytes_model": "36 B per element (the fused pair's floor)"})()
            finally:
                bn_lif.CUDA_FUSED = before
        return go

    run_case(res, deadline, {"provider": "bn_lif_fused"}, bn_lif_case(True))
    run_case(res, deadline, {"provider": "bn_lif_unfused"}, bn_lif_case(False))

    def sj_cupy():
        site = os.environ.get("GPU_CHECK_SJ014", "")
        if not site or not Path(site).is_dir():
            raise SkipCase("SpikingJelly 0.0.0.0.14 (the release with the CuPy LIF backend) is not installed: "
                           "gpu_payload/wheels-sj014 carries it")
        tmp = Path(args.work) / "lif_cupy.json"
        tmp.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONPATH=site + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, __file__, "lif-cupy", "--json", str(tmp), "--shape", ",".join(map(str, shape)),
               "--warmup", str(sz["warmup"]), "--reps", str(sz["reps"])]
        subprocess.run(cmd, env=env, cwd=ROOT, timeout=max(5.0, deadline - now()), check=False)
        got = read_json(tmp)
        if not got:
            raise RuntimeError("the CuPy LIF process wrote no result (see run.log)")
        if got.get("status") == "skipped":
            raise SkipCase(got["reason"])
        if got.get("status") == "failed":
            raise RuntimeError(f"{got['error']} (numpy shim: {got.get('numpy_shim') or 'none'})")
        got.pop("status", None)
        got["gbytes_per_s"] = round(nbytes / (got["median_us"] * 1e-6) / 1e9, 1)
        got["pct_hbm"] = round(100 * nbytes / (got["median_us"] * 1e-6) / HBM_BYTES_PER_S, 1)
        return got

    run_case(res, deadline, {"provider": "spikingjelly_cupy"}, sj_cupy)

    # last: inductor's compile is the slowest first call of the step
    backend = "aot_eager" if dev.type == "cpu" else "inductor"

    def compiled():
        f = torch.compile(lambda x: reference.lif(x, v0, tau=2.0)[0], backend=backend)
        return timed(fwd_bwd(f), nbytes, {"compile_backend": backend})()

    run_case(res, deadline, {"provider": "reference_compiled"}, compiled)
    run_case(res, deadline, {"provider": "reference_eager"},
             timed(fwd_bwd(lambda x: reference.lif(x, v0, tau=2.0)[0]), nbytes))

    def snntorch_loop():
        try:
            import snntorch as snn
            from snntorch import surrogate as ssur
        except ImportError as exc:
            raise SkipCase(f"snnTorch is not importable ({short_error(exc)}); gpu_payload/ carries it") from exc
        # beta, threshold and the membrane are the neuron's buffers: left on the CPU they failed the
        # first CUDA step ("Expected all tensors to be on the same device")
        leaky = module_to_device(
            snn.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero", spike_grad=ssur.atan(alpha=2.0)), dev)

        def f(x):  # snnTorch networks step through time in Python
            mem, out = leaky.init_leaky(), []
            for t in range(x.shape[0]):
                spk, mem = leaky(x[t], mem)
                out.append(spk)
            return torch.stack(out)

        import importlib.metadata as md

        return timed(fwd_bwd(f), nbytes, {"snntorch": md.version("snntorch")})()

    run_case(res, deadline, {"provider": "snntorch"}, snntorch_loop)

    ok = {c["provider"]: c for c in res.sec["cases"] if c["status"] == "ok"}
    return res.finish(", ".join(f"{p} {c['pct_hbm']}% HBM" for p, c in ok.items()))


# The numpy aliases of builtins that numpy 1.24 removed and SpikingJelly 0.0.0.0.14 still uses:
# np.int (activation_based/auto_cuda/base.py, in the CuPy kernels' argument check) and np.bool
# (datasets/cifar10_dvs.py; numpy 2 has np.bool again). Its source uses no other removed name.
SJ014_NUMPY_ALIASES = {"int": int, "bool": bool}


def shim_removed_numpy_aliases(np) -> list[str]:
    """Puts back on ``np`` the SJ014_NUMPY_ALIASES it lacks; returns what it set ("np.int = int").
    Called only in the lif-cupy process (an interpreter of its own), before SpikingJelly 0.0.0.0.14
    is imported: numpy is left as it is everywhere else, and so is this library."""
    added = []
    for name, builtin in SJ014_NUMPY_ALIASES.items():
        try:
            getattr(np, name)
        except AttributeError:  # numpy >= 1.24 raises it from its module __getattr__
            setattr(np, name, builtin)
            added.append(f"np.{name} = {builtin.__name__}")
    return added


def cmd_lif_cupy(args) -> int:
    """SpikingJelly 0.0.0.0.14's LIFNode(step_mode='m', backend='cupy'), forward + backward; run in
    a process whose PYTHONPATH puts that release first (2.x dropped the CuPy backend). That release
    predates numpy 1.24: the removed aliases it uses are put back in this process first (the result
    lists them under numpy_shim)."""
    import importlib.util

    out = Path(args.json)
    shim: list[str] = []

    def done(**kw):
        write_json(out, {**kw, "numpy_shim": shim})
        return 0

    if importlib.util.find_spec("cupy") is None:
        return done(status="skipped", reason="CuPy is not installed")
    try:
        torch = _torch()
        if not torch.cuda.is_available():
            return done(status="skipped", reason="SpikingJelly's CuPy LIF needs CUDA")
        import numpy

        shim = shim_removed_numpy_aliases(numpy)
        from spikingjelly.activation_based import functional as sjf
        from spikingjelly.activation_based import neuron, surrogate

        dev = torch.device("cuda")
        try:
            node = neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m",
                                  backend="cupy").to(dev)
        except TypeError:
            return done(status="skipped", reason=f"spikingjelly {sj_version()} has no CuPy backend "
                                                   "(0.0.0.0.14 is the release that has)")
        shape = tuple(int(s) for s in args.shape.split(","))
        x = (torch.randn(shape, device=dev) * 1.5 + 0.6).requires_grad_()
        grad = torch.randn(shape, device=dev)

        def step():
            x.grad = None
            sjf.reset_net(node)
            node(x).backward(grad)

        t = time.perf_counter()
        step()
        sync(dev)
        first = time.perf_counter() - t
        r = time_fn(step, dev, args.warmup, args.reps)
        import cupy

        return done(status="ok", first_call_s=round(first, 3), spikingjelly=sj_version(),
                    cupy=cupy.__version__, numpy=numpy.__version__, **r)
    except Exception as exc:
        traceback.print_exc()
        return done(status="failed", error=short_error(exc))


# ----------------------------------------------------------------------------------- step: ternary


def cmd_ternary(args) -> int:
    """Spike x ternary and float x ternary, as GEMMs (the im2col shape of a VGG layer: M = T*B*H*W,
    K = 9*C_in, N = C_out) and as 3x3 convs, against the same shapes in bf16 through torch.matmul
    (cuBLAS) and F.conv2d (cuDNN, channels-last). Inputs are pre-packed (the time of pack_spikes
    is reported apart); weights are packed once (inference)."""
    torch = _torch()
    dry, dev, sz = args.dry_run, get_device(), sizes(args.dry_run)
    res = Results(args.out, "ternary", dry)
    res.device(device_info())
    deadline = step_deadline()
    fdt = getattr(torch, sz["float_dtype"])
    bdt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    res.set(float_input_dtype=str(fdt), dense_dtype=str(bdt), spike_density=0.2, tb=sz["tb"],
            flops="2*M*N*K (GEMM) or 2*(T*B*H*W)*C_out*9*C_in (conv)",
            ratio="vs_dense = dense time / op time (> 1: faster than the dense bf16 op)")
    g = torch.Generator().manual_seed(0)
    for float_pass in (False, True):
        for cin, cout, hw in sz["conv_layers"]:
            if now() > deadline:
                break
            try:  # input set-up (packing) outside the cases: a failure there is recorded, the loop goes on
                _ternary_layer(res, deadline, dev, sz, g, fdt, bdt, cin, cout, hw, float_pass)
            except Exception as exc:
                traceback.print_exc()
                res.add({"form": "set-up", "layer": f"{cin}->{cout} @{hw}x{hw}", "op": "inputs",
                         "status": "failed", "error": short_error(exc)})
    ok = [c for c in res.sec["cases"] if c["status"] == "ok" and "vs_dense" in c
          and not c["op"].startswith(("pack", "int8_mm probe"))]
    best = max(ok, key=lambda c: c["vs_dense"], default=None)
    note = (f"{len(ok)} op x shape pairs; best vs dense: {best['op']} {best['layer']} {best['vs_dense']}x"
            if best else "no ratio measured")
    return res.finish(note)


def _ternary_layer(res, deadline, dev, sz, g, fdt, bdt, cin, cout, hw, float_pass: bool) -> None:
    """The cases of one VGG layer (C_in -> C_out at hw x hw), GEMM form then conv form. First pass:
    the dense bf16 op, the spike x ternary op and pack_spikes; second pass (float_pass): float x
    ternary, whose first call compiles and autotunes the slowest kernels, so it cannot starve the
    spike cases of the step's time box."""
    torch = _torch()

    from tna_kernels import functional as F

    tb, layer = sz["tb"], f"{cin}->{cout} @{hw}x{hw}"
    fname, bname = str(fdt).split(".")[-1], str(bdt).split(".")[-1]

    def timed(fn, flops):
        def go():
            t = time.perf_counter()
            fn()
            sync(dev)
            first = time.perf_counter() - t
            r = time_fn(fn, dev, sz["warmup"], sz["reps"])
            r["first_call_s"] = round(first, 3)
            r["tflops"] = round(flops / (r["median_us"] * 1e-6) / 1e12, 2)
            return r
        return go

    # GEMM form: the layer's im2col product
    M, K, N = tb * hw * hw, 9 * cin, cout
    flops = 2 * M * N * K
    s2 = (torch.rand(M, K, generator=g) < 0.2).to(dev)
    pl = F.quantize_pack(torch.randn(N, K, generator=g).to(dev))
    base = {"form": "gemm", "layer": layer, "M": M, "K": K, "N": N}
    if float_pass:
        xf = s2.to(fdt)
        _ratios(res, [run_case(res, deadline, {**base, "op": f"ternary_linear_{fname}"},
                               timed(lambda: F.ternary_linear(xf, pl), flops))])
    else:
        bits2 = F.pack_spikes(s2)
        xd = s2.to(bdt)
        dense_w = (F.unpack_ternary(pl).to(bdt) * pl.scale.to(bdt)[:, None]).contiguous()
        # A probe, not a library path: cuBLAS's int8 GEMM on unpacked operands (spikes and codes as
        # int8, exact int32 sums) and the per-channel scale, to size an int8 design of this op.
        def int8_probe():
            codes = F.unpack_ternary(pl)
            x8, w8, scale = s2.to(torch.int8), codes.to(torch.int8).contiguous(), pl.scale.float()
            if not torch.equal(torch._int_mm(x8, w8.T).float(), s2.float() @ codes.float().T):
                raise RuntimeError("torch._int_mm disagrees with the float product of the same operands")
            return timed(lambda: torch._int_mm(x8, w8.T) * scale, flops)()

        _ratios(res, [
            run_case(res, deadline, {**base, "op": f"dense_matmul_{bname}"},
                     timed(lambda: torch.matmul(xd, dense_w.T), flops)),
            run_case(res, deadline, {**base, "op": "spike_ternary_linear"},
                     timed(lambda: F.spike_ternary_linear(bits2, pl), flops)),
            run_case(res, deadline, {**base, "op": "pack_spikes (input)"},
                     timed(lambda: F.pack_spikes(s2), flops)),
            run_case(res, deadline, {**base, "op": "int8_mm probe (torch._int_mm x scale, unpacked int8 operands)"},
                     int8_probe),
        ])
    _ternary_conv(res, deadline, dev, sz, g, fdt, bdt, cin, cout, hw, timed, float_pass)


def _ternary_conv(res, deadline, dev, sz, g, fdt, bdt, cin, cout, hw, timed, float_pass: bool) -> None:
    """Conv form of one layer: 3x3, padding 1, on T*B images."""
    torch = _torch()
    import torch.nn.functional as tnf

    from tna_kernels import functional as F

    tb, layer = sz["tb"], f"{cin}->{cout} @{hw}x{hw}"
    fname, bname = str(fdt).split(".")[-1], str(bdt).split(".")[-1]
    flops = 2 * tb * hw * hw * cout * 9 * cin
    s4 = (torch.rand(tb, cin, hw, hw, generator=g) < 0.2).to(dev)
    pc = F.quantize_pack(torch.randn(cout, cin, 3, 3, generator=g).to(dev))
    base = {"form": "conv3x3", "layer": layer, "batch": tb}
    if float_pass:
        x4 = s4.to(fdt)
        _ratios(res, [run_case(res, deadline, {**base, "op": f"ternary_conv2d_{fname}"},
                               timed(lambda: F.ternary_conv2d(x4, pc, padding=1), flops))])
        return
    bits4 = F.pack_spikes(s4, dim=1)
    dense_c = (F.unpack_ternary(pc).to(bdt) * pc.scale.to(bdt)[:, None, None, None])
    dense_c = dense_c.contiguous(memory_format=torch.channels_last)
    xd4 = s4.to(bdt).contiguous(memory_format=torch.channels_last)
    _ratios(res, [
        run_case(res, deadline, {**base, "op": f"dense_conv2d_{bname}"},
                 timed(lambda: tnf.conv2d(xd4, dense_c, padding=1), flops)),
        run_case(res, deadline, {**base, "op": "spike_ternary_conv2d"},
                 timed(lambda: F.spike_ternary_conv2d(bits4, pc, padding=1), flops)),
        run_case(res, deadline, {**base, "op": "pack_spikes (input)"},
                 timed(lambda: F.pack_spikes(s4, dim=1), flops)),
    ])


def _ratios(res, cases: list[dict]) -> None:
    """vs_dense = dense time / op time, the dense case being the bf16 op of the same form and layer
    (measured in the first pass)."""
    for c in cases:
        if c.get("status") != "ok" or c["op"].startswith(("pack", "dense")):
            continue
        dense = [d for d in res.sec["cases"] if d.get("status") == "ok" and d["op"].startswith("dense")
                 and d["form"] == c["form"] and d["layer"] == c["layer"]]
        if dense:
            c["vs_dense"] = round(dense[0]["median_us"] / c["median_us"], 3)
    res.flush()

# -------------------------------------------------------------------------------------- step: twin


def cmd_twin(args) -> int:
    """Twin loss forward + backward (both logit gradients): the fused op against the unfused torch
    composition CE(base) + CE(twin) + lambda * sum((base - twin)^2) / B, fp32."""
    torch = _torch()
    dry, dev, sz = args.dry_run, get_device(), sizes(args.dry_run)
    res = Results(args.out, "twin", dry)
    res.device(device_info())
    deadline = step_deadline()
    res.set(dtype="float32", lam=0.005, bytes_model="16*B*C + 8*B: reads both logits, writes both gradients "
                                                    "(fp32), reads the int64 targets")
    g = torch.Generator().manual_seed(0)
    for B, C in sz["twin_shapes"]:
        _twin_shape(res, deadline, dev, sz, g, B, C)
    ok = [c for c in res.sec["cases"] if "speedup_vs_unfused" in c]
    return res.finish(", ".join(f"B={c['B']} C={c['C']}: {c['speedup_vs_unfused']}x" for c in ok))


def _twin_shape(res, deadline, dev, sz, g, B: int, C: int) -> None:
    torch = _torch()
    import torch.nn.functional as tnf

    from tna_kernels import functional as F

    lb = torch.randn(B, C, generator=g).to(dev).requires_grad_()
    lt = torch.randn(B, C, generator=g).to(dev).requires_grad_()
    y = torch.randint(0, C, (B,), generator=g).to(dev)
    nbytes = 16 * B * C + 8 * B

    def fused():
        lb.grad = lt.grad = None
        F.twin_loss(lb, lt, y, mse_weight=0.005).backward()

    def unfused():
        lb.grad = lt.grad = None
        loss = tnf.cross_entropy(lb, y) + tnf.cross_entropy(lt, y) + 0.005 * ((lb - lt) ** 2).sum() / B
        loss.backward()

    def timed(fn):
        def go():
            fn()
            r = time_fn(fn, dev, sz["warmup"], sz["reps"])
            r["pct_hbm"] = round(100 * nbytes / (r["median_us"] * 1e-6) / HBM_BYTES_PER_S, 2)
            return r
        return go

    cu = run_case(res, deadline, {"B": B, "C": C, "provider": "unfused_torch"}, timed(unfused))
    cf = run_case(res, deadline, {"B": B, "C": C, "provider": "tna_fused"}, timed(fused))
    if cu["status"] == "ok" and cf["status"] == "ok":
        cf["speedup_vs_unfused"] = round(cu["median_us"] / cf["median_us"], 2)
        res.flush()


# -------------------------------------------------------------------------------- step: train_step


def cmd_train_step(args) -> int:
    """One TNA training step (base + twin forward, fused twin loss, backward, SGD with momentum) of
    a ternary spiking VGG, bf16 autocast on CUDA, against the same network built from SpikingJelly
    layers (benchmarks/bench_train_step.py's builder: SeqToANNContainer(conv, BN) + LIFNode(m),
    the input repeated T times, float readout) with the unfused loss. Also this library's plain
    ternary baseline step (one network, CE), whose rates the next step's plan falls back on where
    its own warm-up fails."""
    torch = _torch()
    from torch import nn

    from tna_kernels import functional as F
    from tna_kernels.models import SpikingVGG, make_twin
    from tna_kernels.nn import set_recompute

    dry, dev, sz = args.dry_run, get_device(), sizes(args.dry_run)
    res = Results(args.out, "train_step", dry)
    res.device(device_info())
    deadline = step_deadline()
    B, T, arch = sz["train_batch"], sz["T"], sz["train_arch"]
    amp = dev.type == "cuda"
    res.set(arch=arch, batch=B, T=T, autocast_bf16=amp, optimizer="SGD lr 0.01 momentum 0.9",
            peak_memory="torch.cuda.max_memory_allocated over build + warm-up + timed steps (CUDA only)")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, 32, 32, generator=g).to(dev)
    y = torch.randint(0, 10, (B,), generator=g).to(dev)

    def step_fn(nets, fused: bool, autocast_cache: bool = True):
        params = [p for n in nets for p in n.parameters()]
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=autocast_cache):
                logits = [n(x) for n in nets]
                if len(logits) == 1:
                    loss = nn.functional.cross_entropy(logits[0], y)
                elif fused:
                    loss = F.twin_loss(logits[0], logits[1], y, mse_weight=0.005)
                else:
                    lb, lt = logits
                    loss = (nn.functional.cross_entropy(lb, y) + nn.functional.cross_entropy(lt, y)
                            + 0.005 * ((lb.float() - lt.float()) ** 2).sum() / B)
            loss.backward()
            opt.step()
            return loss
        return step

    def measure(build, fused):
        def go():
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            torch.manual_seed(0)
            nets = [n.to(dev) for n in build()]
            step = step_fn(nets, fused)
            t = time.perf_counter()
            step()
            sync(dev)
            first = time.perf_counter() - t
            r = time_fn(step, dev, sz["train_warmup"], sz["train_reps"])
            r.update(first_step_s=round(first, 3), images_per_s=round(B / (r["median_us"] * 1e-6), 1),
                     params=sum(p.numel() for n in nets for p in n.parameters()))
            if dev.type == "cuda":
                r["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            del nets, step
            return r
        return go

    def graphed(build):
        """The same step captured once in a CUDA graph and replayed (static x and y, as a graph
        needs): no Python, dispatcher or launch cost per step. What the host-bound eager step
        could reach; the capture fails if any op in the step synchronises with the host."""
        def go():
            if dev.type != "cuda":
                raise SkipCase("CUDA graphs need a CUDA device")
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            torch.manual_seed(0)
            nets = [n.to(dev) for n in build()]
            # autocast's cast cache would hold tensors from the capture across replays
            step = step_fn(nets, True, autocast_cache=False)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # off the capture: autotuning, momentum buffers, first allocations
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            t = time.perf_counter()
            with torch.cuda.graph(graph):
                loss = step()
            capture = time.perf_counter() - t
            r = time_fn(graph.replay, dev, sz["train_warmup"], sz["train_reps"])
            value = float(loss)
            if not math.isfinite(value):
                raise RuntimeError(f"the replayed step's loss is {value}")
            r.update(capture_s=round(capture, 3), loss_after_replays=round(value, 4),
                     images_per_s=round(B / (r["median_us"] * 1e-6), 1),
                     peak_memory_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1))
            del nets, step, graph
            return r
        return go

    def tna():  # recompute on, as the trainer's default (train.recompute)
        base = SpikingVGG(arch, T=T)
        return [set_recompute(n, True) for n in (base, make_twin(base, 1))]

    def spikingjelly():
        import_spikingjelly(pin_triton=False)  # automatic choice, as a user's autocast run gets
        sys.path.insert(0, str(ROOT))
        from benchmarks import bench_train_step as bts

        if bts.T != T:
            raise SkipCase(f"benchmarks/bench_train_step.py builds for T={bts.T}, this step uses T={T}")
        from tna_kernels.models.vgg import VGG_CONFIGS

        return [bts.spikingjelly_vgg(VGG_CONFIGS[arch]), bts.spikingjelly_vgg(VGG_CONFIGS[arch])]

    run_case(res, deadline, {"provider": "tna", "what": "base + twin, fused twin loss"}, measure(tna, True))
    run_case(res, deadline, {"provider": "tna_baseline", "what": "one network, cross-entropy"},
             measure(lambda: [set_recompute(SpikingVGG(arch, T=T), True)], False))
    sj_case = {"provider": "spikingjelly", "what": "two SpikingJelly VGGs, unfused loss",
               "spikingjelly": sj_version()}
    if amp:
        sj_case["note"] = ("bf16 autocast: the LIF input and membrane are bf16, and (per its source) "
                           "SpikingJelly 2.0's lif_multi_step sends a non-float32 membrane to its torch reference "
                           "path, not its Triton kernel")
    run_case(res, deadline, sj_case, measure(spikingjelly, False))
    # last: a capture that fails can leave the stream unusable for the cases after it
    run_case(res, deadline, {"provider": "tna_cuda_graph", "what": "base + twin, fused twin loss, one CUDA "
                                                            "graph replayed per step"}, graphed(tna))
    ok = {c["provider"]: c for c in res.sec["cases"] if c["status"] == "ok"}
    note = ", ".join(f"{p} {c['images_per_s']:.0f} img/s"
                     + (f" {c['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in c else "") for p, c in ok.items())
    return res.finish(note)


# ---------------------------------------------------------------------------------- step: training


TRAIN_MODES = ("baseline", "tna")
# Used only where neither the warm-up nor the train_step step measured a mode (img/s on an H200).
GUESSED_RATES = {"baseline": 3000.0, "tna": 1500.0}


def plan_runs(seconds: float, costs: dict, batch: int, n_train: int, dry: bool, n_val: int = 5000) -> dict:
    """The same epochs and batches per epoch for the baseline and the TNA run, so both see the same
    images in the same order under the same learning-rate schedule, each to its end: as many as the
    two runs fit in ``seconds`` together (between 2 and 30 full epochs, fewer batches per epoch
    when 2 full epochs do not fit), 20 % kept back for the estimates' error. ``costs``: per mode,
    ``images_per_s`` (warm training rate), ``epoch_overhead_s`` (per epoch besides training:
    evaluation, checkpoints, metrics), ``setup_s`` (building the trainer) and ``source``, from the
    warm-up (missing figures are guessed, the evaluation's from ``n_val``). Each run's ``budget_s``
    (where it is stopped should the estimate be wrong) is its estimated share of ``seconds``. Dry
    run: 1 epoch x 2 batches."""
    est_in = {}
    for mode in TRAIN_MODES:
        got = costs.get(mode) or {}
        rate = float(got.get("images_per_s") or GUESSED_RATES[mode])
        # the guess without a warm-up: evaluation (TNA: base and twin) at ~3x the training rate, + 1 s
        evals = 2 if mode == "tna" else 1
        overhead = float(got.get("epoch_overhead_s", evals * n_val / (3 * rate) + 1.0))
        est_in[mode] = {"rate": rate, "overhead": overhead, "setup": float(got.get("setup_s", 6.0)),
                        "source": got.get("source", "guess")}
    if dry:
        epochs, limit = 1, 2
    else:
        full = max(1, n_train // batch)
        usable = max(0.0, seconds - sum(e["setup"] for e in est_in.values())) * 0.8
        batch_s = sum(batch / e["rate"] for e in est_in.values())  # one batch of each run
        epoch_fixed_s = sum(e["overhead"] for e in est_in.values())
        epochs = int(min(30, max(2, usable // (full * batch_s + epoch_fixed_s))))
        limit = max(1, min(full, int((usable / epochs - epoch_fixed_s) / batch_s)))
    est = {m: e["setup"] + epochs * (limit * batch / e["rate"] + e["overhead"]) for m, e in est_in.items()}
    return {m: {"epochs": epochs, "limit_batches": limit, "planned_images": epochs * limit * batch,
                "rate_img_s": round(e["rate"], 1), "epoch_overhead_s": round(e["overhead"], 2),
                "estimated_s": round(est[m], 1), "budget_s": round(seconds * est[m] / sum(est.values()), 1),
                "rate_source": e["source"]} for m, e in est_in.items()}


def read_metrics(csv_path: Path) -> list[dict]:
    import csv

    if not csv_path.is_file():
        return []
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        out.append({k: (float(v) if re.fullmatch(r"-?[\d.]+(e-?\d+)?", v or "") else v) for k, v in r.items()})
    return out


def training_overrides(name: str, out_dir: Path, root, val: int, epochs: int, limit: int, dry: bool, sz: dict,
                       batch: int) -> list[str]:
    """Config overrides of one training run (the warm-up and the timed runs differ in name, out_dir,
    epochs and batches per epoch only)."""
    overrides = [f"name={name}", f"out_dir={out_dir}", f"data.root={root}", f"data.val_per_class={val}",
                 "data.val_mode=last", f"train.epochs={epochs}", f"train.limit_batches={limit}",
                 "train.progress=false", "schedule.warmup_epochs=0", "seed=0"]
    if dry:
        overrides += [f"model.arch={sz['train_arch']}", f"data.batch_size={batch}", "data.eval_batch_size=16"]
    return overrides


def warm_up_training(cfg_file: Path, overrides: list[str], data) -> dict:
    """Pays a mode's one-off costs before any timed run, and measures its warm costs for the plan.
    A trainer of 2 short epochs: the first compiles and autotunes every Triton kernel the run meets
    (training shapes, and the evaluation's folded inference kernels at the evaluation batch size),
    builds the evaluation loaders and imports what metrics and checkpoints use; the second, warm,
    gives the training rate and the per-epoch overhead (evaluation, checkpoint, metrics, and the
    end-of-run export and plot). The caches filled here (Triton's autotuning, the measured
    train_path choices) are the process's, so both timed runs start from the same warm state."""
    torch = _torch()
    from tna_kernels.train import Trainer, load_config

    t = now()
    trainer = Trainer(load_config(cfg_file, overrides), data=data)
    setup_s = now() - t
    t = now()
    trainer.fit(stop_after=1)
    sync(trainer.device)
    first_epoch_s = now() - t
    t = now()
    trainer.fit()
    sync(trainer.device)
    warm_epoch_s = now() - t
    row = trainer.history[-1]
    out = {"status": "ok", "setup_s": round(setup_s, 2), "first_epoch_s": round(first_epoch_s, 2),
           "warm_epoch_s": round(warm_epoch_s, 2), "batches_per_epoch": len(trainer.train_loader),
           "images_per_s": round(row["images_per_s"], 1),
           "epoch_overhead_s": round(max(0.0, warm_epoch_s - row["epoch_seconds"]), 2), "source": "warm-up"}
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def cmd_training(args) -> int:
    """Ternary baseline vs ternary + TNA on CIFAR-10 (the GPU recipe's configs: VGG-11, T = 4,
    B = 256, bf16 autocast, SGD 0.1 cosine), the last 500 images of every class held out for
    validation, at equal conditions: the data is decoded once for both (get_dataset, before
    either run), each mode is warmed up untimed first (warm_up_training: compilation, autotuning,
    first evaluation), then both runs train the same epochs x batches (plan_runs, sized from the
    warm-up's rates to fill the time left). A run that outlives its budget is stopped through the
    trainer's own preemption path (finishes the step, checkpoints) and keeps its completed epochs."""
    import signal

    torch = _torch()
    from tna_kernels.data import get_dataset
    from tna_kernels.train import Trainer, load_config

    dry, out, work = args.dry_run, Path(args.out), Path(args.work)
    deadline = step_deadline() - 5
    t_start = now()
    doc = {"dry_run": dry, "started": t_start, "device": device_info(), "runs": {}}
    path = out / "train.json"
    write_json(path, doc)
    root = args.data or os.environ.get("GPU_CHECK_DATA")
    if not root or not Path(root, "train").is_dir():
        doc.update(status="skipped", reason=f"no CIFAR-10 image folder ({root!r}): gpu_payload/cifar10-jpeg.tar.gz "
                                            "is made by scripts/gpu_payload.sh")
        write_json(path, doc)
        print(doc["reason"])
        return 0
    val = 1 if dry else 500
    t = now()
    # Decoded here once, in memory, for the warm-ups and both runs (and cached under $TNA_CACHE):
    # no run pays JPEG decoding.
    data = get_dataset("cifar10", root, val_per_class=val, val_mode="last", seed=0)
    doc["data"] = {"root": str(root), "train": len(data.train), "val": len(data.val),
                   "load_s": round(now() - t, 1), "val_per_class": val}
    sz = sizes(dry)
    batch = sz["train_batch"] if dry else 256
    cfg_files = {mode: ROOT / "configs" / f"cifar10_vgg11_{mode}.yaml" for mode in TRAIN_MODES}

    costs, doc["warmup"] = {}, {}
    ts = read_json(out / "bench.json", {}).get("steps", {}).get("train_step", {})
    for c in ts.get("cases", []):  # fallback where a warm-up fails: the train_step step's rates
        if c.get("status") == "ok" and c["provider"] in ("tna", "tna_baseline"):
            costs["tna" if c["provider"] == "tna" else "baseline"] = {"images_per_s": c["images_per_s"],
                                                                      "source": "train_step"}
    for mode in TRAIN_MODES:
        overrides = training_overrides(f"gpu_check_warmup_{mode}", work / "warmup", root, val, 2,
                                       sz["training_warmup_batches"], dry, sz, batch)
        try:
            doc["warmup"][mode] = costs[mode] = warm_up_training(cfg_files[mode], overrides, data)
        except Exception as exc:  # the timed run is still made, planned from fallback figures
            traceback.print_exc()
            doc["warmup"][mode] = {"status": "failed", "error": short_error(exc)}
        print(f"training warm-up {mode}: {json.dumps(doc['warmup'][mode])}")
        write_json(path, doc)
    if dev_is_cuda(torch):
        torch.cuda.reset_peak_memory_stats()

    plan = plan_runs(deadline - now(), costs, batch, len(data.train), dry, len(data.val))
    doc["plan"] = plan
    write_json(path, doc)
    print("training plan:", json.dumps(plan))

    failed = False
    holder: dict = {"trainer": None}

    def stop(*_):  # SIGALRM at a run's budget: the trainer's own preemption (finish the step, checkpoint)
        if holder["trainer"] is not None:
            holder["trainer"].request_stop()

    for mode in TRAIN_MODES:
        p = plan[mode]
        cfg_file = cfg_files[mode]
        overrides = training_overrides(f"gpu_check_{mode}", work / "runs", root, val, p["epochs"],
                                       p["limit_batches"], dry, sz, batch)
        run = {"config": str(cfg_file.relative_to(ROOT)), "overrides": overrides, **p}
        doc["runs"][mode] = run
        write_json(path, doc)
        left = deadline - now()
        # the last run may use all the time left: a budget only guards against a wrong estimate
        budget = max(5.0, left if mode == TRAIN_MODES[-1] else min(p["budget_s"], left))
        run["budget_s"] = round(budget, 1)
        trainer = holder["trainer"] = None
        previous = signal.signal(signal.SIGALRM, stop)
        t0 = now()
        try:
            cfg = load_config(cfg_file, overrides)
            trainer = holder["trainer"] = Trainer(cfg, data=data)
            signal.setitimer(signal.ITIMER_REAL, budget)
            last = trainer.fit()
            run["status"] = "stopped at its budget" if last.get("preempted") else "ok"
            if last.get("preempted"):
                part = trainer.partial or {}
                if part.get("seen"):
                    run["partial_epoch"] = {"batches": part["batch"], "train_acc": part["correct"] / part["seen"],
                                            "train_loss": part["loss_sum"] / part["seen"],
                                            "images_per_s": round(part["seen"] / max(part["seconds"], 1e-9), 1)}
                for key, net in (("val_acc_at_stop", trainer.base), ("twin_val_acc_at_stop", trainer.twin)):
                    if net is not None:
                        run[key] = trainer.evaluate(net)["acc"]
        except Exception as exc:
            traceback.print_exc()
            run.update(status="failed", error=short_error(exc))
            failed = True
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        run["wall_s"] = round(now() - t0, 1)
        run["epochs_done"] = trainer.epoch if trainer is not None else 0
        run["images_trained"] = batch * (run["epochs_done"] * p["limit_batches"]
                                         + run.get("partial_epoch", {}).get("batches", 0))
        rows = read_metrics(work / "runs" / f"gpu_check_{mode}" / "metrics.csv")
        run["metrics"] = rows
        if rows:
            last_row = rows[-1]
            run["final_val_acc"] = last_row.get("val_acc")
            if "twin_val_acc" in last_row:
                run["final_twin_val_acc"] = last_row.get("twin_val_acc")
            run["best_val_acc"] = max(r.get("val_acc", 0) for r in rows)
            run["images_per_s"] = round(statistics.median(r["images_per_s"] for r in rows), 1)
        if "val_acc_at_stop" in run:  # stopped mid-epoch: the accuracy where it stopped is the last word
            run["final_val_acc"] = run["val_acc_at_stop"]
            if "twin_val_acc_at_stop" in run:
                run["final_twin_val_acc"] = run["twin_val_acc_at_stop"]
        print(f"training {mode}: {run['status']}, {run['epochs_done']} epochs + "
              f"{run.get('partial_epoch', {}).get('batches', 0)} batches in {run['wall_s']} s, "
              f"val acc {run.get('final_val_acc')}, twin {run.get('final_twin_val_acc')}")
        if trainer is not None and dev_is_cuda(torch):
            run["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            torch.cuda.reset_peak_memory_stats()
        trainer = holder["trainer"] = None
        if dev_is_cuda(torch):
            torch.cuda.empty_cache()
        write_json(path, doc)
    b, t_ = doc["runs"]["baseline"], doc["runs"]["tna"]
    doc["comparable"] = comparability_note(doc)
    if b.get("final_val_acc") is not None and t_.get("final_val_acc") is not None:
        doc["tna_minus_baseline_val_acc"] = round(t_["final_val_acc"] - b["final_val_acc"], 4)
        doc["note"] = (f"val acc baseline {b['final_val_acc']:.4f} vs TNA {t_['final_val_acc']:.4f}, "
                       f"images {b['images_trained']} vs {t_['images_trained']}, {b['wall_s']} s vs {t_['wall_s']} s; "
                       + doc["comparable"])
    doc["status"] = "failed" if failed else "ok"
    doc["seconds"] = round(now() - t_start, 1)
    write_json(path, doc)
    print(doc.get("note", doc["status"]))
    return 1 if failed else 0


def comparability_note(doc: dict) -> str:
    """How the two runs were made comparable, and where they were not after all."""
    plan, runs, warm = doc.get("plan", {}), doc.get("runs", {}), doc.get("warmup", {})
    p = plan.get("baseline", {})
    parts = [f"both {p.get('epochs')} epochs x {p.get('limit_batches')} batches (same images, order and LR "
             "schedule), data decoded once before both, each model warmed up untimed first (first epoch + "
             "evaluation: compile, autotune); one seed each"]
    cold = [m for m in TRAIN_MODES if warm.get(m, {}).get("status") != "ok"]
    if cold:
        parts.append(f"NOT comparable: no warm-up for {', '.join(cold)}")
    for mode in TRAIN_MODES:
        status = runs.get(mode, {}).get("status")
        if status not in ("ok", None):
            parts.append(f"NOT comparable: {mode} {status}")
    return "; ".join(parts)


def dev_is_cuda(torch) -> bool:
    return torch.cuda.is_available()


def cmd_env(args) -> int:
    """Versions and locations of what the steps use, without importing the peers (and, with
    --info, python -m tna_kernels.info)."""
    import importlib.util
    import platform
    from importlib.metadata import PackageNotFoundError, version

    print("python", sys.version.split()[0], platform.machine(), sys.executable)
    for dist, mod in (("torch", "torch"), ("triton", "triton"), ("cupy-cuda13x", "cupy"), ("numpy", "numpy"),
                      ("pybind11", "pybind11"), ("pytest", "pytest"), ("hypothesis", "hypothesis"),
                      ("pillow", "PIL"), ("spikingjelly", "spikingjelly"), ("snntorch", "snntorch"),
                      ("loguru", "loguru")):
        spec = importlib.util.find_spec(mod)
        try:
            ver = version(dist)
        except PackageNotFoundError:
            ver = "?"
        print(f"{mod:<13}", f"{ver:<14}", os.path.dirname(spec.origin) if spec and spec.origin else "not found")
    torch = _torch()
    print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    if args.info:
        from tna_kernels.info import main as info

        print()
        info()
    return 0


def cmd_tiny_data(args) -> int:
    """A small CIFAR-shaped ImageFolder (10 classes x N random 32x32 JPEGs) for --dry-run."""
    import numpy as np
    from PIL import Image

    root = Path(args.dir)
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for c in names:
        d = root / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:04d}.jpg", quality=90)
    print(f"tiny CIFAR-10 folder: {root} ({10 * args.per_class} images)")
    return 0


# ------------------------------------------------------------------------- record and summarize


def cmd_record(args) -> int:
    """One step's outcome into OUT/summary.json (status from the exit code, refined by what the
    step wrote: a bench step that skipped everything is 'skipped')."""
    out = Path(args.out)
    path = out / "summary.json"
    doc = read_json(path, None) or {"schema": 1, "steps": []}
    if args.meta:
        doc.update(json.loads(args.meta))
    if args.step:
        rc = args.rc
        if args.skip:
            status = "skipped"
        elif rc in (124, 137):
            status = "timeout"
        elif rc == 3:  # a step that ran out of time in part (tests: some files) without failing
            status = "partial"
        elif rc != 0:
            status = "failed"
        else:
            status = "ok"
        note = args.note or ""
        sec = read_json(out / "bench.json", {}).get("steps", {}).get(args.step)
        if sec:
            note = note or sec.get("note", "")
            if status == "ok" and sec.get("status") in ("skipped", "partial"):
                status = sec["status"]
            if status != "ok" and sec.get("status") == "running":
                note = (note + "; " if note else "") + "killed while running (partial cases kept in bench.json)"
        if args.step == "training":
            tr = read_json(out / "train.json", {})
            note = note or tr.get("note") or tr.get("reason", "")
            if status == "ok" and tr.get("status") == "skipped":
                status = "skipped"
        if args.note_file and Path(args.note_file).is_file():
            note = note or Path(args.note_file).read_text().strip()
        doc["steps"] = [s for s in doc["steps"] if s["name"] != args.step]
        doc["steps"].append({"name": args.step, "status": status, "rc": rc, "seconds": args.seconds,
                             "timeout_s": args.timeout, "note": note[:500]})
    write_json(path, doc)
    return 0


def check_out_dir(out: Path, dry: bool) -> list[str]:
    """Problems with OUT: files beyond the 8 the GPU tool returns, unexpected names, folders deeper
    than 2, a summary.json without every step, a skip without a reason, a bench.json without every
    bench step that ran, and in a dry run any step that did not finish ok (failed, timed out,
    partial or skipped) and any failed case."""
    problems = []
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    if len(files) > MAX_OUT_FILES:
        problems.append(f"{len(files)} files under OUT, the GPU tool returns {MAX_OUT_FILES}: "
                        f"{sorted(str(p.relative_to(out)) for p in files)}")
    for p in files:
        rel = p.relative_to(out)
        if len(rel.parts) > 3 or not re.fullmatch(r"[A-Za-z0-9._-]+", p.name):
            problems.append(f"{rel}: too deep or a name the GPU tool will not return")
        if str(rel) not in OUT_FILES:
            problems.append(f"{rel}: not one of the planned output files {OUT_FILES}")
    summary = read_json(Path(out) / "summary.json", None)
    if summary is None:
        return problems + ["summary.json is missing or unreadable"]
    got = {s["name"]: s for s in summary.get("steps", [])}
    for name in STEPS:
        s = got.get(name)
        if s is None:
            problems.append(f"summary.json has no entry for step {name!r}")
        elif s.get("status") not in ("ok", "skipped", "failed", "timeout", "partial"):
            problems.append(f"step {name!r} has status {s.get('status')!r}")
        elif dry and s["status"] != "ok":  # a dry run exercises every step: even a skip is a miss
            problems.append(f"dry run: step {name!r} ended {s['status']} (rc {s.get('rc')}): {s.get('note', '')}")
        elif s["status"] == "skipped" and not s.get("note"):
            problems.append(f"step {name!r} was skipped without a reason")
    bench = read_json(Path(out) / "bench.json", {}) or {}
    for name in BENCH_STEPS:
        if got.get(name, {}).get("status") in ("ok", "partial") and name not in bench.get("steps", {}):
            problems.append(f"bench.json has no section for step {name!r}")
        for c in bench.get("steps", {}).get(name, {}).get("cases", []):
            if c.get("status") == "skipped" and not c.get("reason"):
                problems.append(f"bench.json {name}: a case skipped without a reason: {c}")
            if dry and c.get("status") == "failed":
                problems.append(f"dry run: bench.json {name}: a case failed: {c}")
    if dry:
        for name in ("tests.log", "tests.xml", "bench.json", "train.json", "summary.json"):
            if not (Path(out) / name).is_file():
                problems.append(f"dry run: {name} was not written")
    return problems


def headline(bench: dict, train: dict) -> list[str]:
    """Key figures for summary.md."""
    lines = []
    steps = bench.get("steps", {})
    for name in ("launch", "ternary", "twin"):  # lif and train_step list theirs in place
        for c in steps.get(name, {}).get("cases", []):
            if c.get("status") != "ok":
                what = c.get("op") or c.get("provider")
                where = " ".join(str(c[k]) for k in ("form", "layer", "B", "C") if k in c)
                lines.append(f"| {name} {where} | {what} | {c.get('status')}: {c.get('reason') or c.get('error')} |")
    for c in steps.get("launch", {}).get("cases", []):
        if c.get("status") == "ok":
            lines.append(f"| launch | {c['op']} | {c['per_call_us_min']} µs/call "
                         f"(first call {c['first_call_us']:.0f} µs) |")
    for c in steps.get("lif", {}).get("cases", []):
        if c.get("status") == "ok":
            lines.append(f"| lif fwd+bwd | {c['provider']} | {c['median_us']:.0f} µs (min {c['min_us']:.0f}), "
                         f"{c['pct_hbm']}% of HBM |")
        elif c.get("status") != "ok":
            lines.append(f"| lif fwd+bwd | {c['provider']} | {c['status']}: {c.get('reason') or c.get('error')} |")
    for c in steps.get("ternary", {}).get("cases", []):
        if c.get("status") == "ok":
            extra = f", {c['vs_dense']}x dense" if "vs_dense" in c else ""
            lines.append(f"| ternary {c['form']} {c['layer']} | {c['op']} | {c['median_us']:.0f} µs, "
                         f"{c['tflops']} TFLOP/s{extra} |")
    for c in steps.get("twin", {}).get("cases", []):
        if c.get("status") == "ok":
            extra = f", {c['speedup_vs_unfused']}x unfused" if "speedup_vs_unfused" in c else ""
            lines.append(f"| twin loss B={c['B']} C={c['C']} | {c['provider']} | {c['median_us']:.1f} µs{extra} |")
    for c in steps.get("train_step", {}).get("cases", []):
        if c.get("status") == "ok":
            mem = f", peak {c['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in c else ""
            lines.append(f"| train step | {c['provider']} | {c['images_per_s']:.0f} img/s{mem} |")
        else:
            lines.append(f"| train step | {c['provider']} | {c['status']}: {c.get('reason') or c.get('error')} |")
    for mode, w in (train.get("warmup") or {}).items():
        what = (f"first epoch {w['first_epoch_s']} s ({w['batches_per_epoch']} batches + evaluation), then "
                f"{w['images_per_s']:.0f} img/s, {w['epoch_overhead_s']} s per epoch besides training"
                if w.get("status") == "ok" else f"failed: {w.get('error')}")
        lines.append(f"| training warm-up (untimed) | {mode} | {what} |")
    for mode, r in (train.get("runs") or {}).items():
        acc = r.get("final_val_acc")
        lines.append(f"| training | {mode} | {r.get('status')}, {r.get('epochs_done')} epochs x "
                     f"{r.get('limit_batches')} batches ({r.get('images_trained')} images) in {r.get('wall_s')} s, "
                     "val acc "
                     f"{acc if acc is None else f'{acc:.4f}'}"
                     + (f", twin {r['final_twin_val_acc']:.4f}" if r.get("final_twin_val_acc") is not None else "")
                     + " |")
    return lines


def cmd_summarize(args) -> int:
    out = Path(args.out)
    summary = read_json(out / "summary.json", {}) or {}
    bench = read_json(out / "bench.json", {}) or {}
    train = read_json(out / "train.json", {}) or {}
    total = summary.get("wall_s")
    rows = [f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s.get('timeout_s') or ''} | "
            f"{(s.get('note') or '').replace('|', '/')[:160]} |" for s in summary.get("steps", [])]
    dev = bench.get("device", {}) or train.get("device", {})
    md = [f"# GPU check{' (dry run, CPU)' if args.dry_run else ''}", "",
          f"Device: {dev.get('name', '?')}, torch {dev.get('torch', '?')}, triton {dev.get('triton', '?')}; "
          f"wall {total} s of a {summary.get('budget_s')} s budget.", "",
          "| step | status | s | time box | note |", "| --- | --- | --- | --- | --- |", *rows, "",
          "| what | provider | figure |", "| --- | --- | --- |", *headline(bench, train), ""]
    problems = check_out_dir(out, args.dry_run)
    if problems:
        md += ["## Problems with the output files", "", *[f"- {p}" for p in problems], ""]
    (out / "summary.md").write_text("\n".join(md))
    print("\n".join(["", "step         status    seconds  note"] +
                     [f"{s['name']:<12} {s['status']:<9} {s['seconds']:>7.0f}  {(s.get('note') or '')[:90]}"
                      for s in summary.get("steps", [])]))
    print(f"total {total} s; results in {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))})")
    problems = check_out_dir(out, args.dry_run)  # again: summary.md now exists
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems and args.strict else 0


# ------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name, fn, **kw):
        p = sub.add_parser(name, **kw)
        p.set_defaults(fn=fn)
        p.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT", "gpu_results"))
        p.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", "/tmp"))
        p.add_argument("--dry-run", action="store_true")
        return p

    p = add("tests", cmd_tests)
    p.add_argument("targets", nargs="*", help="test files or node ids (default: files using a GPU marker)")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("-k", default=None)
    for name, fn in (("launch", cmd_launch), ("lif", cmd_lif), ("ternary", cmd_ternary), ("twin", cmd_twin),
                     ("train_step", cmd_train_step)):
        add(name, fn)
    p = add("training", cmd_training)
    p.add_argument("--data", default=None)
    p = sub.add_parser("lif-cupy")
    p.set_defaults(fn=cmd_lif_cupy)
    p.add_argument("--json", required=True)
    p.add_argument("--shape", required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p = sub.add_parser("env")
    p.set_defaults(fn=cmd_env)
    p.add_argument("--info", action="store_true", help="also python -m tna_kernels.info")
    p = sub.add_parser("tiny-data")
    p.set_defaults(fn=cmd_tiny_data)
    p.add_argument("dir")
    p.add_argument("--per-class", type=int, default=5)
    p = add("record", cmd_record)
    p.add_argument("--step")
    p.add_argument("--rc", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--timeout", type=int, default=None)
    p.add_argument("--note", default="")
    p.add_argument("--note-file", default=None)
    p.add_argument("--skip", action="store_true")
    p.add_argument("--meta", default=None, help="JSON merged into summary.json's top level")
    p = add("summarize", cmd_summarize)
    p.add_argument("--strict", action="store_true", help="exit 1 when the output files have a problem")
    args = ap.parse_args(argv)
    if hasattr(args, "out"):
        Path(args.out).mkdir(parents=True, exist_ok=True)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
