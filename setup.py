"""Builds tna_kernels._C: the C++ CPU kernels always; CUDA sources only when torch is a CUDA build
and a CUDA toolkit is found (never gated on a visible GPU).

Knobs (environment): DEBUG=1 (-O0 -g), TNA_SKIP_CUDA_BUILD=1, TNA_FORCE_CUDA=1 (fail if CUDA cannot
be built), MAX_JOBS (parallel compile jobs).
"""

import json
import os
import sys
from glob import glob
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent


def kernel_sources() -> list[str]:
    """The C++ source list shared with CMakeLists.txt, so the two builds cannot drift."""
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def with_cuda() -> bool:
    if os.getenv("TNA_SKIP_CUDA_BUILD") == "1":
        return False
    want = torch.version.cuda is not None and CUDA_HOME is not None
    if os.getenv("TNA_FORCE_CUDA") == "1" and not want:
        raise RuntimeError("TNA_FORCE_CUDA=1 but torch is a CPU build or no CUDA toolkit was found")
    return want


def extensions():
    opt = ["-O0", "-g"] if os.getenv("DEBUG") == "1" else ["-O3"]
    # -ffp-contract=off: no FMA contraction, so float kernels round like the torch reference.
    # -fno-trapping-math: lets GCC if-convert the threshold selects and vectorise the time loops.
    cxx = opt + ["-std=c++20", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]
    # at::parallel_for is inline in the ATen headers: without -fopenmp (_OPENMP undefined) it runs
    # the whole range on the calling thread. The runtime is the libgomp torch already loaded.
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    sources = kernel_sources() + ["csrc/python_module.cpp"]
    args, macros, cls = {"cxx": cxx}, [], CppExtension
    if with_cuda():
        cls = CUDAExtension
        sources += sorted(glob("csrc/cuda/*.cu"))
        args["nvcc"] = opt + ["-lineinfo", "-std=c++20"]
        macros.append(("TNA_WITH_CUDA", "1"))
    return [cls("tna_kernels._C", sources, extra_compile_args=args, extra_link_args=link,
                define_macros=macros)]


def write_build_config():
    """Records the torch this build is for; tna_kernels/__init__.py compares it at import."""
    config = {"torch": torch.__version__, "cuda": bool(with_cuda()), "torch_cuda": torch.version.cuda}
    (ROOT / "tna_kernels" / "_build_config.json").write_text(json.dumps(config) + "\n")


write_build_config()
setup(
    packages=find_packages(include=("tna_kernels", "tna_kernels.*")),
    package_data={"tna_kernels": ["_build_config.json"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
