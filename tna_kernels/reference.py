"""Pure-PyTorch specification of every tna:: op. Tests compare every backend against these
functions and benchmarks use them as the baseline; they are written for clarity, not speed.

Multi-step LIF (SpikingJelly semantics), for t = 0..T-1, with vr = v_reset (hard) or 0 (soft):
    h[t] = v + (x[t] - (v - vr)) / tau      if decay_input
    h[t] = v - (v - vr) / tau + x[t]        otherwise
    s[t] = Heaviside(h[t] - v_threshold)    (1 where h >= v_threshold)
    v    = h * (1 - s) + v_reset * s        hard reset (v_reset a float)
    v    = h - v_threshold * s              soft / subtract reset (v_reset None)
The Heaviside step is differentiated with a surrogate d s / d h = surrogate_grad(h - v_threshold);
``detach_reset`` stops the gradient through the ``s`` used in the reset. Arithmetic runs in the
state dtype (float32 for half/bf16 inputs).
"""

import math

import torch
from torch import Tensor

from ._utils import state_dtype

SURROGATES = ("atan", "sigmoid", "fast_sigmoid", "triangle", "rectangle")


def surrogate_grad(x: Tensor, name: str, alpha: float) -> Tensor:
    """Derivative used for the spike function at ``x = h - v_threshold`` with sharpness ``alpha``.

    atan          alpha / (2 (1 + (pi/2 alpha x)^2))        SpikingJelly ATan
    sigmoid       alpha sig(alpha x) (1 - sig(alpha x))     SpikingJelly Sigmoid
    fast_sigmoid  1 / (1 + alpha |x|)^2                     SuperSpike / snnTorch fast_sigmoid (slope=alpha)
    triangle      alpha max(0, 1 - alpha |x|)               unit area
    rectangle     alpha 1[|x| < 1 / (2 alpha)]              unit area
    """
    if name == "atan":
        return alpha / (2 * (1 + (math.pi / 2 * alpha * x) ** 2))
    if name == "sigmoid":
        sg = torch.sigmoid(alpha * x)
        return alpha * sg * (1 - sg)
    if name == "fast_sigmoid":
        return 1 / (1 + alpha * x.abs()) ** 2
    if name == "triangle":
        return alpha * torch.clamp(1 - alpha * x.abs(), min=0)
    if name == "rectangle":
        return alpha * (x.abs() < 0.5 / alpha).to(x.dtype)
    raise ValueError(f"surrogate must be one of {SURROGATES}, got {name!r}")


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, name, alpha):
        ctx.save_for_backward(x)
        ctx.name, ctx.alpha = name, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * surrogate_grad(x, ctx.name, ctx.alpha), None, None


def lif(x_seq: Tensor, v0: Tensor, *, tau: float = 2.0, decay_input: bool = True,
        v_threshold: float = 1.0, v_reset: float | None = 0.0, detach_reset: bool = False,
        surrogate: str = "atan", alpha: float = 2.0) -> tuple[Tensor, Tensor, Tensor]:
    """Reference multi-step LIF. Returns (spikes [T, ...] in x's dtype, v_last, h_seq), the last
    two in the state dtype. Differentiable through torch autograd with the surrogate."""
    acc = state_dtype(x_seq.dtype)
    v = v0.to(acc)
    vr = 0.0 if v_reset is None else v_reset
    spikes, hs = [], []
    for x in x_seq.to(acc).unbind(0):
        h = v + (x - (v - vr)) / tau if decay_input else v - (v - vr) / tau + x
        s = _Spike.apply(h - v_threshold, surrogate, alpha)
        s_reset = s.detach() if detach_reset else s
        v = h - v_threshold * s_reset if v_reset is None else h * (1 - s_reset) + v_reset * s_reset
        spikes.append(s)
        hs.append(h)
    return torch.stack(spikes).to(x_seq.dtype), v, torch.stack(hs)
