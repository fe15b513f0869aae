"""Builds tna_kernels._C, the native core: C++ kernels on raw pointers behind a small pybind11
module. No torch header or library is used, so `pip install .` works with build isolation and one
build serves any torch (>= 2.6) installed beside it.

Needs a C++20 compiler and pybind11 (listed in pyproject.toml's build-system requires).
Knobs (environment): DEBUG=1 (-O0 -g), MAX_JOBS (parallel compile jobs, default: CPU count).
"""

import importlib.util
import os
import sys
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def listed(name: str) -> list[str]:
    """A source list shared with CMakeLists.txt (csrc/<name>), so the two builds cannot drift."""
    lines = (ROOT / "csrc" / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def source_hash() -> str:
    spec = importlib.util.spec_from_file_location("_source_hash", ROOT / "tna_kernels" / "_source_hash.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_hash(ROOT / "csrc")


def native_core() -> Pybind11Extension:
    opt = ["-O0", "-g"] if os.getenv("DEBUG") == "1" else ["-O3"]
    # -ffp-contract=off: no FMA contraction, so float kernels round like the torch reference.
    # -fno-trapping-math: lets GCC if-convert the threshold selects and vectorise the time loops.
    cxx = opt + ["-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]
    link = []
    if sys.platform.startswith("linux"):
        # libgomp.so.1: at run time the copy torch loaded (same soname), so one thread pool.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    return Pybind11Extension(
        "tna_kernels._C", listed("sources.txt") + listed("bindings.txt"), cxx_std=20,
        include_dirs=[str(ROOT / "csrc")], extra_compile_args=cxx, extra_link_args=link,
        define_macros=[("TNA_SOURCE_HASH", f'"{source_hash()}"')],
        # headers and lists too: any change rebuilds (the source hash changes with them)
        depends=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".txt")),
    )


ParallelCompile("MAX_JOBS").install()
setup(
    packages=find_packages(include=("tna_kernels", "tna_kernels.*")),
    ext_modules=[native_core()],
    cmdclass={"build_ext": build_ext},
)
