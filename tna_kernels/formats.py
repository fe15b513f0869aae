"""The contracts every backend, module and checkpoint shares, each written once.

* The 2-bit packed ternary format: ``FORMAT_VERSION``, ``words_for`` and ``PackedTernary`` (the
  layout itself is described in docs/FORMAT.md, the only prose description of it).
* The names the ops take as strings or indices: ``SURROGATES`` (LIF surrogate gradients),
  ``TERNARY_METHODS`` (ternarisers), ``MSE_REDUCTIONS`` (the twin loss's MSE term).

The native core exports its own view of these (``tna_kernels._C``); ``check_native`` compares the
two when the package loads, so C++ and Python can never disagree silently."""

from __future__ import annotations

FORMAT_VERSION = 1
SURROGATES = ("atan", "sigmoid", "fast_sigmoid", "triangle", "rectangle")
TERNARY_METHODS = ("twn", "absmean")
MSE_REDUCTIONS = ("mean", "sum_over_batch")


def words_for(k: int) -> int:
    """64-bit words per packed row of ``k`` elements: ``ceil(k / 64)``."""
    return (k + 63) // 64
