"""Launch helpers shared by the Triton launchers: autotune buckets and CUDA grid limits.

Every launcher calls its kernel directly (``kernel[grid](...)``). ``torch.library.wrap_triton``
is never used: outside a ``triton_op`` it sends every eager launch through torch's traced
higher-order-op path (about 1 ms, a kernel-side-table entry that is never freed, and for a kernel
with ``prune_configs_by`` a fresh autotuner per call). The ops are opaque custom ops with fake
kernels, so wrapping adds nothing.

Autotuned kernels take a ``*_BUCKET`` argument (a power of two >= the size) and key on it instead
of the exact size: a new batch size inside the same bucket reuses the tuned config, and the number
of tunings is bounded by log2 of the largest size."""

import triton

# CUDA's limits on a launch grid: x up to 2^31 - 1 blocks, y and z up to 65,535.
GRID_LIMITS = (2**31 - 1, 65535, 65535)

# Words (64 elements each) handled by one program of the pack / unpack / decode kernels. The
# programs walk the flattened (row, word) index, so a grid is ceil(rows * words / WORDS) programs in
# dimension 0 whatever K is.
WORDS = 16


def bucket(n: int) -> int:
    """Autotune key for a size: the next power of two (1 for 0)."""
    return triton.next_power_of_2(max(int(n), 1))


def check_grid(grid: tuple, what: str) -> tuple:
    """Raise a clear error (instead of a failed launch) when a grid exceeds CUDA's limits."""
    for d, (g, lim) in enumerate(zip(grid, GRID_LIMITS, strict=False)):
        if g > lim:
            raise RuntimeError(f"{what}: launch grid {tuple(grid)} exceeds CUDA's limit {lim} in "
                               f"dimension {d}")
    return grid


def word_grid(total_words: int, what: str) -> tuple:
    """Grid of the word kernels (pack, unpack, decode, quantise-and-pack): one dimension."""
    return check_grid((triton.cdiv(total_words, WORDS),), what)


def tile_grid(M: int, N: int, BM: int, BN: int, what: str) -> tuple:
    """Grid of the GEMM kernels: all (M, N) tiles folded into dimension 0 (N tiles vary fastest)."""
    return check_grid((triton.cdiv(M, BM) * triton.cdiv(N, BN),), what)
