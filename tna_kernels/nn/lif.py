"""Multi-step LIF module over ``[T, ...]`` inputs, backed by the fused kernel."""

import torch
from torch import Tensor, nn

from .. import functional as F


class LIF(nn.Module):
    """Multi-step LIF neuron: ``[T, ...]`` currents in, ``[T, ...]`` spikes out.

    Stateless between calls by default (every forward starts from the reset membrane), so repeated
    forwards, DDP and ``torch.compile`` are safe. For streaming inference in chunks of time call
    ``forward(x, v)`` with ``return_v=True`` and pass the returned membrane to the next chunk.
    Arguments are those of :func:`tna_kernels.functional.lif`.
    """

    def __init__(self, tau: float | None = None, decay_input: bool | None = None,
                 v_threshold: float = 1.0, v_reset: float | None = 0.0, detach_reset: bool = False,
                 surrogate: str = "atan", alpha: float = 2.0, beta: float | None = None,
                 return_v: bool = False):
        super().__init__()
        self.kwargs = dict(tau=tau, decay_input=decay_input, v_threshold=v_threshold,
                           v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate,
                           alpha=alpha, beta=beta)
        self.return_v = return_v
        # Validate once at construction so a bad config fails before training starts.
        F.lif(torch.zeros(1, 1), **self.kwargs)

    def forward(self, x_seq: Tensor, v0: Tensor | None = None):
        return F.lif(x_seq, v0, return_v=self.return_v, **self.kwargs)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.kwargs.items() if v is not None}
        if self.return_v:
            shown["return_v"] = True
        return ", ".join(f"{k}={v!r}" for k, v in shown.items())
