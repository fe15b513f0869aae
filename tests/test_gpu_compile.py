"""The AOT compile lane in its quick mode: every Triton kernel the ops can launch compiles to a
cubin for sm_90 (one variant per kernel), with TRITON_INTERPRET unset. Needs no GPU: the Triton
wheel ships ptxas. The full matrix is `make gpu-compile` (scripts/gpu_compile.py)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_compile.py"
KERNELS = ("_lif_fwd_kernel", "_lif_bwd_kernel", "_lif_bwd_recompute_kernel", "_twin_loss_fwd_kernel",
           "_count_valid_kernel", "_twin_loss_finish_kernel",
           "_spike_conv_kernel", "_float_linear_kernel", "_decode_kernel", "_unpack_spikes_kernel", "_pack_kernel",
           "_row_stats_kernel", "_channel_stats_kernel", "_quantize_pack_kernel", "_spike_grad_weight_kernel",
           "_spike_grad_weight_f32_kernel",
           "_split_sum_kernel", "_stats_kernel", "_finish_stats_kernel", "_bn_lif_fwd_kernel", "_bn_lif_bwd_kernel",
           "_finish_grad_kernel", "_bn_grad_kernel")


def _run(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_quick_compile_sm90(tmp_path):
    md = tmp_path / "gpu.md"
    proc = _run("--quick", "--arch", "90", "--markdown", str(md))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert re.search(rf"{len(KERNELS)} compilations, 0 errors", out), out[-3000:]
    table = md.read_text()
    for k in KERNELS:
        row = re.search(rf"\| `{k}` \| sm_90 \| 1 \| (\d+)", table)
        assert row and 0 < int(row.group(1)) <= 255, (k, table)


def test_variant_matrix_is_complete():
    """Without compiling: the default mode covers every config and every specialisation, --full
    the product, and every kernel is reached by some launcher call."""
    proc = _run("--list", "--arch", "90")
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    head = lines[0]
    kernels, specs = map(int, re.search(r"(\d+) kernels, (\d+) specialisations", head).groups())
    assert kernels == len(KERNELS)
    for k in KERNELS:
        assert any(f" {k} " in ln for ln in lines[1:]), k
    full = _run("--list", "--arch", "90,80", "--full")
    n_full = int(re.search(r"(\d+) compilations", full.stdout).group(1))
    n_cover = int(re.search(r"(\d+) compilations", head).group(1))
    assert n_full > 2 * n_cover >= 2 * specs


def test_only_selects_kernels_by_name():
    proc = _run("--list", "--arch", "90", "--only", "^_bn_grad_kernel$")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("gpu_compile: 1 kernels,")
    assert all(" _bn_grad_kernel " in ln for ln in proc.stdout.splitlines()[1:])
    none = _run("--list", "--only", "no_such_kernel")
    assert none.returncode == 2 and "matches no kernel" in none.stderr
    partial_doc = _run("--list", "--only", "_bn_", "--markdown", "x.md")
    assert partial_doc.returncode == 2 and "drop --markdown" in partial_doc.stderr
