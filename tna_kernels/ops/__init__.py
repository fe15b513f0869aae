"""Op glue: fake kernels, autograd registration and backend registration for each tna:: op.

Each family registers its CUDA kernels through :func:`register_cuda`, which records them here:
``CUDA_BACKENDS`` (what serves each op on CUDA devices, so ``tna_kernels.info`` never guesses) and
``CUDA_KERNELS`` (the registered Python function itself, so the GPU path can be run as registered,
e.g. on CPU tensors under ``TRITON_INTERPRET=1``: tests/test_gpu_path.py)."""

from collections.abc import Callable

import torch

CUDA_BACKENDS: dict[str, str] = {}
CUDA_KERNELS: dict[str, Callable] = {}


def register_cuda(name: str, fn: Callable, backend: str) -> None:
    """Registers ``fn`` as the CUDA kernel of ``tna::<name>`` and records it with its backend label."""
    torch.library.register_kernel(f"tna::{name}", "cuda", fn)
    CUDA_KERNELS[name] = fn
    CUDA_BACKENDS[name] = backend


from . import batch_norm, lif, lif_pack, spike_pool, spike_train, ternary, twin_loss  # noqa: E402  (each registers its ops on import)

__all__ = ["CUDA_BACKENDS", "CUDA_KERNELS", "register_cuda", "batch_norm", "lif", "lif_pack", "spike_pool",
           "spike_train", "ternary", "twin_loss"]
