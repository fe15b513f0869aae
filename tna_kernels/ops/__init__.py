"""Op glue: fake kernels, autograd registration and backend registration for each tna:: op.

``CUDA_BACKENDS`` records which implementation serves each op on CUDA devices (filled in as the
op modules register Triton launchers), so ``tna_kernels.info`` never guesses."""

CUDA_BACKENDS: dict[str, str] = {}

from . import lif, ternary  # noqa: E402,F401

__all__ = ["CUDA_BACKENDS", "lif", "ternary"]
