"""tna_kernels: fused kernels for ternary-weight spiking neural networks trained with Twin Network
Augmentation (TNA). Importing the package loads the native core (``tna_kernels._C``, C++ CPU
kernels with no torch ABI) and registers the ``torch.ops.tna.*`` ops from Python; GPU kernels are
Triton and load only where Triton is installed. Nothing here needs a GPU."""

import torch  # noqa: F401  (first: _C's libgomp is then the one torch loaded)

from ._loader import load_native

__version__ = "0.1.0"

_C = load_native()

from . import functional, nn, ops  # noqa: E402  (ops: the tna:: op definitions and backends)

__all__ = ["functional", "nn", "ops", "__version__"]
