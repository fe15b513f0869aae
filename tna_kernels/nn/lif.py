"""Multi-step LIF module over ``[T, ...]`` inputs, backed by the fused kernel."""

import torch
from torch import Tensor, nn

from .. import functional as F
from .bn_lif import bn_lif


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

    def forward(self, x_seq: Tensor, v0: Tensor | None = None, *, bn: nn.Module | None = None,
                T: int | None = None, static: bool = False):
        """``bn``: a batch norm using batch statistics (training) to apply first, fused with the
        neuron so that backward keeps only its input (:func:`tna_kernels.nn.bn_lif.bn_lif`);
        ``x_seq`` is then the BN input ``[T·B, C, ...]`` (or a static ``[B, C, ...]`` with
        ``static``) and ``T`` the number of steps. Forward hooks see that input and the spikes."""
        if bn is not None:
            if v0 is not None or T is None:
                raise ValueError("with bn, pass T and no v0 (the membrane starts at the reset value)")
            return bn_lif(x_seq, bn, self, T, static)
        return F.lif(x_seq, v0, return_v=self.return_v, **self.kwargs)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.kwargs.items() if v is not None}
        if self.return_v:
            shown["return_v"] = True
        return ", ".join(f"{k}={v!r}" for k, v in shown.items())
