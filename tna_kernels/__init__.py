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

__all__ = ["functional", "nn", "ops", "__version__"]
