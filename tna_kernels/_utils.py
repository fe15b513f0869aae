"""Small helpers shared by the op modules (kept free of the training layer)."""

import math
import os

import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # GPU kernels are optional; the C++ CPU kernels never need Triton.
    HAS_TRITON = False


def check_device(x: torch.Tensor) -> None:
    """CUDA tensors need the Triton kernels; say so instead of failing in the dispatcher."""
    if x.device.type == "cuda" and not HAS_TRITON:
        raise RuntimeError("CUDA tensors need Triton for the tna GPU kernels: pip install triton")


def check(cond, message) -> None:
    """``torch._check`` without its cost when the condition is a plain ``True``: the op checkers run
    on every eager call, and ``torch._check`` goes through the symbolic-shape machinery each time
    (~4 µs a call here, ~13 µs of a small LIF call's 60). A false condition, or a symbolic one while
    tracing, goes to ``torch._check``: the same error, and a runtime assert instead of a guard."""
    if cond is True:
        return
    torch._check(cond, message)


def triton_interpreting() -> bool:
    """True when Triton runs kernels on the CPU (TRITON_INTERPRET=1, read at triton import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_test_device() -> str:
    """Where Triton-lane tests put tensors: the GPU when there is one, else the CPU (interpreter)."""
    return "cuda" if torch.cuda.is_available() and not triton_interpreting() else "cpu"


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of membrane state and accumulation for activations stored in ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def kernel_keys(qualname: str) -> set[str]:
    """Dispatch keys that hold a real kernel (not a fallback) for ``qualname``, e.g. ``tna::lif_fwd``.
    The one place that reads the dispatcher's private table."""
    table = torch._C._dispatch_dump_table(qualname)
    # "[default backend kernel]": a CompositeExplicitAutograd C++ kernel serving that backend
    return {line.split(":")[0] for line in table.splitlines()
            if line.rstrip().endswith(("[kernel]", "[default backend kernel]"))}


def is_composite(qualname: str) -> bool:
    """True for ops implemented once for every backend (CompositeImplicitAutograd), e.g. queries."""
    return "CompositeImplicitAutograd" in torch._C._dispatch_dump(qualname)


def has_fake(qualname: str) -> bool:
    entry = torch._library.simple_registry.singleton.find(qualname)
    return entry.fake_impl.kernel is not None


# Elements per slice when a training backward rebuilds activations piece by piece. On the CPU:
# 4 MiB in float32, so a slice stays in cache. On a GPU slices only bound transient memory (1 GiB
# in float32): each one costs launches, and the data never fits in cache anyway.
CHUNK_ELEMS = 1 << 20
GPU_CHUNK_ELEMS = 1 << 28


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-D tensor in channels-last memory ([N, H, W, C]) that is not also NCHW-contiguous (C == 1
    or H == W == 1 make both hold; those take the NCHW paths)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def chunk_elems(device: torch.device | None) -> int:
    """Elements per slice of :func:`chunks` on ``device`` (None: the CPU's)."""
    return CHUNK_ELEMS if device is None or device.type == "cpu" else GPU_CHUNK_ELEMS


def chunks(n: int, per_item: int = 1, device: torch.device | None = None) -> list[slice]:
    """Slices covering ``range(n)`` with at most ``chunk_elems(device)`` elements each (``per_item``
    per index)."""
    step = max(1, chunk_elems(device) // max(1, per_item))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def time_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A ``[T, ...]`` tensor as T rows of N elements and the element step between rows, for the
    LIF kernels (C++ and Triton). When every time step is contiguous it is read in place whatever
    that step: a static input repeated over time (``x.expand(T, ...)``, step 0, e.g. a first
    layer's current) or a slice of neurons of a larger ``[T, N']`` tensor (batch norm + LIF's
    backward, nn/bn_lif.py). Anything else is copied once."""
    if x.is_contiguous():
        return x, math.prod(x.shape[1:])
    if x.shape[0] > 1 and x[0].is_contiguous():
        return x, x.stride(0)
    return x.contiguous(), math.prod(x.shape[1:])
