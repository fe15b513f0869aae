"""tna_kernels: fused kernels for ternary-weight spiking neural networks trained with Twin Network
Augmentation (TNA). Importing the package loads the C++ ops (``torch.ops.tna.*``); GPU kernels are
Triton and load only where Triton is installed. Nothing here needs a GPU."""

import json
from pathlib import Path

import torch

__version__ = "0.1.0"


def _load_extension(record: Path = Path(__file__).with_name("_build_config.json")) -> None:
    built_for = json.loads(record.read_text())["torch"] if record.exists() else "unknown"
    hint = "Rebuild it for this torch: pip install --no-build-isolation -e .  (or: make build)"
    try:
        from . import _C  # noqa: F401  (loading the library registers the tna:: ops)
    except ImportError as exc:
        raise ImportError(
            f"tna_kernels._C could not be loaded (built for torch {built_for}, found torch "
            f"{torch.__version__}). {hint}. Cause: {exc}"
        ) from exc
    if built_for != torch.__version__:
        raise ImportError(
            f"tna_kernels._C was built for torch {built_for} but torch {torch.__version__} is "
            f"installed. {hint}."
        )


_load_extension()

from . import functional, nn, ops  # noqa: E402  (ops: fake kernels, autograd, Triton backends)


def output_cache_bytes() -> int:
    """Bytes held by the cache of freed large CPU outputs. Outputs of 32 MiB and more (glibc maps
    those fresh on every allocation, and first-touch page faults dominated the LIF's time) come
    from 2 MiB-aligned huge pages; freed ones are kept for the next output of the same size, at
    most ``TNA_OUTPUT_CACHE_MB`` (default 1024; 0 disables the cache, ``TNA_HUGEPAGES=0`` the
    huge-page buffers)."""
    return torch.ops.tna.output_cache_bytes()


def release_output_cache() -> int:
    """Frees the cached blocks (see :func:`output_cache_bytes`); returns the bytes released."""
    return torch.ops.tna.release_output_cache()


__all__ = ["functional", "nn", "ops", "output_cache_bytes", "release_output_cache", "__version__"]
