"""scikit-learn's bundled handwritten digits: 1,797 grey 8x8 images, 10 classes, shipped inside the
scikit-learn package (no download), so the default experiments run offline on any machine.

Fixed split: a stratified 80/20 train/test split drawn once with ``numpy.random.default_rng(0)``
(per class, a seeded permutation; the first ``round(0.2 * n_class)`` indices go to test). The split
does not depend on the caller's seed: every run, on every machine, tests on the same 359 images.
Pixels (0..16 in the source) are scaled to uint8 0..255 with ``round(v * 255 / 16)``.
"""

from __future__ import annotations

import numpy as np
import torch

from .core import ArrayDataset

__all__ = ["load_digits_arrays", "digits_splits", "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION"]

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``(images uint8 [N, 1, 8, 8] in 0..255, labels int64 [N])``, source order."""
    try:
        from sklearn.datasets import load_digits  # lazy: only this loader needs scikit-learn
    except ImportError as exc:
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: pip install scikit-learn  "
            "(or: pip install tna_kernels[data])"
        ) from exc
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    return images, bunch.target.astype(np.int64)


def _fixed_test_indices(labels: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[: int(round(DIGITS_TEST_FRACTION * len(idx)))])
    return np.sort(np.concatenate(test))


def digits_splits() -> tuple[ArrayDataset, ArrayDataset]:
    """The fixed (train, test) split of the digits (1,438 / 359 images), see the module docstring."""
    images, labels = load_digits_arrays()
    test_idx = _fixed_test_indices(labels)
    mask = np.ones(len(labels), bool)
    mask[test_idx] = False
    classes = [str(i) for i in range(10)]
    full = ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), classes)
    return full.subset(np.flatnonzero(mask)), full.subset(test_idx)
