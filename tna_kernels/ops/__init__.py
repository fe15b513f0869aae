"""Op glue: fake kernels, autograd registration and backend registration for each tna:: op.

``CUDA_BACKENDS`` records which implementation serves each op on CUDA devices (filled in as the
op modules register Triton launchers), so ``tna_kernels.info`` never guesses."""

CUDA_BACKENDS: dict[str, str] = {}

from . import lif, lif_pack, spike_pool, ternary, twin_loss  # noqa: E402  (each registers its ops on import)

__all__ = ["CUDA_BACKENDS", "lif", "lif_pack", "spike_pool", "ternary", "twin_loss"]
