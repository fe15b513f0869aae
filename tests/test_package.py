"""Package-level behaviour: loading the extension, the info report, the CPU/Triton backends."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tna_kernels
from tna_kernels import info


def _package_copy(tmp_path, *, with_csrc: bool, native: bytes | None) -> tuple:
    """A copy of the package (Python files) in tmp_path, optionally with csrc/ beside it (a source
    checkout) and a _C module file with the given bytes (None: the built one)."""
    import shutil

    src = Path(tna_kernels.__file__).parent
    dst = tmp_path / "tna_kernels"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "_C*.so"))
    built = next(src.glob("_C.*.so"))
    if native is None:
        shutil.copy(built, dst / built.name)
    elif native:
        (dst / built.name).write_bytes(native)
    if with_csrc:
        shutil.copytree(src.parent / "csrc", tmp_path / "csrc")
    return dst, built.name


# An editable install's import hook maps tna_kernels' submodules to the checkout; the copy under
# test must be imported on its own, so the subprocess drops that hook first.
IMPORT_COPY = ("import sys\n"
               "sys.meta_path[:] = [f for f in sys.meta_path\n"
               "                    if not getattr(f, '__module__', '').startswith('__editable__')]\n"
               "import tna_kernels")


def _import_error(tmp_path) -> str:
    out = subprocess.run([sys.executable, "-c", IMPORT_COPY], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert out.returncode != 0, "import should have failed"
    return out.stderr.strip().splitlines()[-1]


def test_missing_native_core_says_missing_and_how_to_build(tmp_path):
    _package_copy(tmp_path, with_csrc=True, native=b"")
    msg = _import_error(tmp_path)
    assert "tna_kernels._C is missing" in msg and f"pip install -e {tmp_path}" in msg


def test_broken_native_core_says_broken_and_why(tmp_path):
    _package_copy(tmp_path, with_csrc=False, native=b"not an ELF file")
    msg = _import_error(tmp_path)
    assert "tna_kernels._C is broken" in msg and "pip install --force-reinstall" in msg
    assert "invalid ELF header" in msg or "file too short" in msg


def test_native_core_older_than_its_sources_is_stale(tmp_path):
    _package_copy(tmp_path, with_csrc=True, native=None)
    core = tmp_path / "csrc" / "core.cpp"
    core.write_text(core.read_text() + "\n// edited after the build\n")
    msg = _import_error(tmp_path)
    assert "tna_kernels._C is stale" in msg and "other sources" in msg and "pip install -e" in msg


def test_native_core_with_another_interface_is_stale(monkeypatch):
    from tna_kernels import _loader

    monkeypatch.setattr(_loader, "INTERFACE_VERSION", _loader.INTERFACE_VERSION + 1)
    with pytest.raises(ImportError, match="tna_kernels._C is stale: it exposes binding interface"):
        _loader.load_native()


def test_native_core_links_no_torch_library():
    """One build for every torch: _C's dynamic section names no libtorch / libc10."""
    so = Path(tna_kernels._C.__file__)
    out = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("readelf not available")
    needed = [ln for ln in out.stdout.splitlines() if "NEEDED" in ln]
    assert needed and not any("libtorch" in ln or "libc10" in ln for ln in needed), needed


def test_info_lists_every_op_with_cpu_kernel_and_fake():
    rows = {name: (cpu, cuda, fake) for name, cpu, cuda, fake in info.op_table()}
    assert {"lif_fwd", "lif_bwd"} <= set(rows)
    for name, (cpu, _cuda, fake) in rows.items():
        if cpu == "composite":  # queries such as ternary_cpu_isa: no tensors, no fake needed
            continue
        assert cpu == "C++", name
        assert fake == "yes", name


def test_info_module_runs():
    out = subprocess.run([sys.executable, "-m", "tna_kernels.info"], capture_output=True, text=True,
                         check=True).stdout
    assert "torch" in out and "lif_fwd" in out and "ISA" in out


def test_import_without_triton_still_works():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, tna_kernels\n"
            "from tna_kernels import functional as F\n"
            "assert not tna_kernels._utils.HAS_TRITON\n"
            "print(F.lif(torch.ones(2, 3) * 3).sum().item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "6.0"


def test_without_triton_no_op_claims_a_cuda_kernel():
    """Every CUDA path needs Triton (the spike pool's composition packs with it): without Triton no
    tna:: op registers a CUDA kernel that would fail inside the dispatcher."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, tna_kernels\n"
            "from tna_kernels._utils import kernel_keys\n"
            "names = sorted({n for n in torch._C._dispatch_get_all_op_names() if n.startswith('tna::')})\n"
            "print([n for n in names if 'CUDA' in kernel_keys(n)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_info_main_called_from_code_ignores_the_callers_command_line(monkeypatch, capsys):
    """scripts/gpu_bench.py calls info.main() inside its own command (``env --info``)."""
    from tna_kernels import info

    monkeypatch.setattr(sys, "argv", ["gpu_bench.py", "env", "--info"])
    info.main()
    assert "tna_kernels" in capsys.readouterr().out
