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
from .formats import MSE_REDUCTIONS, SURROGATES, TERNARY_METHODS  # noqa: F401  (the names the reference takes)


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


# ---- Ternary weights --------------------------------------------------------------------------
# The packed format (pack_ternary / pack_spikes below) is specified in docs/FORMAT.md.

ABSMEAN_EPS = 1e-5


def ternarize(w: Tensor, method: str = "twn", per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Ternary codes (int8, shape of ``w``) and per-output-channel scales (float32 ``[N]``).

    Dim 0 of ``w`` is the output channel; ``per_channel=False`` pools all channels and repeats the
    one scale N times. Statistics run in float64 over ``|w|``:

    twn      delta = 0.7 * mean|w|; code = sign(w) * [|w| > delta]; scale = mean(|w| where |w| > delta),
             0 when nothing exceeds delta (Li et al., Ternary Weight Networks).
    absmean  g = mean|w|; code = clamp(round(w / (g + 1e-5)), -1, 1) with round half to even;
             scale = g (BitNet b1.58).
    """
    if method not in TERNARY_METHODS:
        raise ValueError(f"method must be one of {TERNARY_METHODS}, got {method!r}")
    n = w.shape[0]
    a = w.detach().double().reshape(n, -1).abs()
    x = w.detach().double().reshape(n, -1)
    if per_channel:
        mean = a.mean(dim=1, keepdim=True)
    else:
        mean = a.mean().expand(n, 1)
    if method == "twn":
        delta = 0.7 * mean
        keep = a > delta
        codes = torch.sign(x) * keep
        if per_channel:
            tot, cnt = (a * keep).sum(1, keepdim=True), keep.sum(1, keepdim=True)
        else:
            tot, cnt = (a * keep).sum().expand(n, 1), keep.sum().expand(n, 1)
        scale = torch.where(cnt > 0, tot / cnt.clamp(min=1), torch.zeros_like(tot))
    else:
        codes = torch.clamp(torch.round(x / (mean + ABSMEAN_EPS)), -1, 1)
        scale = mean
    return codes.to(torch.int8).reshape(w.shape), scale.reshape(n).to(torch.float32)


class _TernarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, method, per_channel, clip):
        codes, scale = ternarize(w, method, per_channel)
        ctx.save_for_backward(w)
        ctx.clip = clip
        return codes.to(w.dtype) * scale.to(w.dtype).reshape((-1,) + (1,) * (w.dim() - 1))

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        if ctx.clip is not None:
            grad = grad * (w.abs() <= ctx.clip).to(grad.dtype)
        return grad, None, None, None


def ternary_ste(w: Tensor, method: str = "twn", per_channel: bool = True,
                clip: float | None = None) -> Tensor:
    """Dequantised ternary weight ``code * scale`` (dtype of ``w``) with the straight-through rule:
    ``d out / d w = 1`` (identity), or ``1[|w| <= clip]`` when ``clip`` is given. The scale is
    treated as a constant in backward."""
    return _TernarySTE.apply(w, method, per_channel, clip)


def _pack_bits(bits: Tensor) -> Tensor:
    """[..., K] of 0/1 integers -> int64 [..., ceil(K/64)], element k at bit k % 64 of word k // 64."""
    k = bits.shape[-1]
    kw = (k + 63) // 64
    b = torch.nn.functional.pad(bits.to(torch.int64), (0, kw * 64 - k)).reshape(*bits.shape[:-1], kw, 64)
    shifts = torch.arange(32, dtype=torch.int64, device=bits.device)
    lo = (b[..., :32] << shifts).sum(-1)
    hi = (b[..., 32:] << shifts).sum(-1)
    return lo | (hi << 32)


def _unpack_bits(words: Tensor, k: int) -> Tensor:
    shifts = torch.arange(64, dtype=torch.int64, device=words.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :k]


def pack_ternary(codes: Tensor) -> Tensor:
    """Codes [..., K] in {-1, 0, +1} -> words [..., 2, KW] (planes P, N)."""
    return torch.stack([_pack_bits(codes == 1), _pack_bits(codes == -1)], dim=-2)


def unpack_ternary(packed: Tensor, k: int) -> Tensor:
    return (_unpack_bits(packed[..., 0, :], k) - _unpack_bits(packed[..., 1, :], k)).to(torch.int8)


def pack_spikes(spikes: Tensor) -> Tensor:
    """Spikes [..., K] in {0, 1} -> words [..., KW]."""
    return _pack_bits(spikes == 1)


def unpack_spikes(bits: Tensor, k: int) -> Tensor:
    return _unpack_bits(bits, k).to(torch.uint8)


def spike_max_pool2d(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool) -> tuple[Tensor, Tensor]:
    """Max-pool of 0/1 spikes [N, C, H, W] and the input bit-packed per sample (pack_spikes layout)."""
    y = torch.nn.functional.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    return y, pack_spikes(x.reshape(x.shape[0], -1))


def spike_max_pool2d_backward(grad_y: Tensor, bits: Tensor, input_size, kernel_size, stride, padding,
                              dilation, ceil_mode: bool) -> Tensor:
    """max_pool2d's gradient on the input unpacked from ``bits``: each output's gradient goes to the
    element max_pool2d's indices pick."""
    n, c, h, w = input_size
    x = unpack_spikes(bits, c * h * w).to(grad_y.dtype).view(n, c, h, w).requires_grad_()
    y = torch.nn.functional.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    return torch.autograd.grad(y, x, grad_y)[0]


def _epilogue(acc: Tensor, scale: Tensor, bias: Tensor | None, channel_dim: int) -> Tensor:
    """float32(acc) * scale, then + bias: two float32 roundings, the kernels' exact order."""
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    y = acc.to(torch.float32) * scale.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def spike_ternary_linear(spikes: Tensor, codes: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """Spikes [..., K] (0/1) x codes [N, K]: exact integer sums (float64 matmul), then the float32
    epilogue ``acc * scale + bias``. Returns float32 [..., N]."""
    acc = spikes.double() @ codes.double().T
    return _epilogue(acc, scale, bias, -1)


def ternary_linear(x: Tensor, codes: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """Float x [..., K] times the ternary weight ``codes * scale`` [N, K], plus bias, in float64;
    returned in x's dtype (kernels agree within float32 rounding)."""
    y = (x.double() @ codes.double().T) * scale.double()
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype)


def ternary_conv2d(x: Tensor, codes: Tensor, scale: Tensor, bias: Tensor | None = None, stride=1,
                   padding=0, dilation=1) -> Tensor:
    """conv2d of x [B, C, H, W] with codes [N, C, kh, kw] (torch layout), times scale, plus bias,
    in float64; returned in x's dtype."""
    y = torch.nn.functional.conv2d(x.double(), codes.double(), None, stride, padding, dilation)
    y = y * scale.double().reshape(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.double().reshape(1, -1, 1, 1)
    return y.to(x.dtype)


def spike_ternary_conv2d(spikes: Tensor, codes: Tensor, scale: Tensor, bias: Tensor | None = None,
                         stride=1, padding=0, dilation=1) -> Tensor:
    """Spikes [B, C, H, W] (0/1) conv codes [N, C, kh, kw]: exact integer sums (float64 conv), then
    the float32 epilogue. Returns float32 [B, N, OH, OW]."""
    acc = torch.nn.functional.conv2d(spikes.double(), codes.double(), None, stride, padding, dilation)
    return _epilogue(acc, scale, bias, 1)
def spike_conv2d_grad_weight(grad_y: Tensor, spikes: Tensor, kernel_size, stride=1, padding=0,
                             dilation=1) -> Tensor:
    """Weight gradient of ``conv2d(spikes, w)`` (spikes [B, C, H, W] 0/1, grad_y [B, N, OH, OW]):
    ``grad_w [N, C, kh, kw]`` in float64 (tna::spike_conv2d_grad_weight sums in float32)."""
    n, c = grad_y.shape[1], spikes.shape[1]
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    return torch.nn.grad.conv2d_weight(spikes.double(), (n, c, kh, kw), grad_y.double(), stride, padding,
                                       dilation)


# ---------------------------------------------------------------------------------------------
# Losses: the fused twin loss (tna::twin_loss_fwd) and the KD / DML baselines.
#
# Twin loss, with N = number of rows whose target is not ignore_index:
#     loss = ce_weight_base * CE(logits_base) + ce_weight_twin * CE(logits_twin)
#            + mse_weight * MSE(logits_base, logits_twin)
#   CE   F.cross_entropy (label smoothing as in torch), mean over the N non-ignored rows; 0 when
#        N = 0 (torch would give NaN: an all-ignored batch contributes nothing here).
#   MSE  over every row (ignored ones included; the MSE does not read the target):
#        "mean"            sum (a - b)^2 / (B * C)   = F.mse_loss(a, b)
#        "sum_over_batch"  sum (a - b)^2 / B         = the authors' MSELoss(reduction="sum") / B
#   detach_base / detach_twin treat that tensor as a constant (no gradient at all into it).
# Arithmetic runs in float32 for half / bf16 logits (float64 stays float64).
# ---------------------------------------------------------------------------------------------


def _ce_mean(logits: Tensor, target: Tensor, label_smoothing: float, ignore_index: int) -> Tensor:
    """Cross-entropy averaged over non-ignored rows; 0 (not NaN) when every row is ignored."""
    total = torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index,
                                              label_smoothing=label_smoothing, reduction="sum")
    count = (target != ignore_index).sum().clamp_min(1)
    return total / count


def twin_loss(logits_base: Tensor, logits_twin: Tensor, target: Tensor, *,
              ce_weight_base: float = 1.0, ce_weight_twin: float = 1.0, mse_weight: float = 0.005,
              mse_reduction: str = "sum_over_batch", label_smoothing: float = 0.0,
              ignore_index: int = -100, detach_base: bool = False,
              detach_twin: bool = False) -> tuple[Tensor, Tensor]:
    """Unfused reference twin loss. Returns ``(loss, parts)``, ``parts = stack([CE_base, CE_twin,
    MSE])`` unweighted (and detached, for logging)."""
    if mse_reduction not in MSE_REDUCTIONS:
        raise ValueError(f"mse_reduction must be one of {MSE_REDUCTIONS}, got {mse_reduction!r}")
    acc = state_dtype(logits_base.dtype)
    a, b = logits_base.to(acc), logits_twin.to(acc)
    a = a.detach() if detach_base else a
    b = b.detach() if detach_twin else b
    ce_a = _ce_mean(a, target, label_smoothing, ignore_index)
    ce_b = _ce_mean(b, target, label_smoothing, ignore_index)
    if mse_reduction == "mean":
        mse = torch.nn.functional.mse_loss(a, b)
    else:
        mse = torch.nn.functional.mse_loss(a, b, reduction="sum") / max(a.shape[0], 1)
    loss = ce_weight_base * ce_a + ce_weight_twin * ce_b + mse_weight * mse
    return loss, torch.stack([ce_a, ce_b, mse]).detach()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor | None = None, *,
            temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0,
            ignore_index: int = -100) -> Tensor:
    """Hinton knowledge distillation, teacher detached:

        alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * CE(student, target)

    KL summed over classes and averaged over all B rows ("batchmean"); CE as in :func:`twin_loss`
    (mean over non-ignored rows, 0 if none). ``target`` may be None only when ``alpha == 1``."""
    acc = state_dtype(student_logits.dtype)
    s = student_logits.to(acc)
    t = teacher_logits.detach().to(acc)
    log_p_s = torch.log_softmax(s / temperature, dim=1)
    log_p_t = torch.log_softmax(t / temperature, dim=1)
    kl = torch.nn.functional.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    loss = alpha * temperature**2 * kl
    if alpha != 1.0:
        loss = loss + (1.0 - alpha) * _ce_mean(s, target, label_smoothing, ignore_index)
    return loss


def dml_loss(logits_a: Tensor, logits_b: Tensor, target: Tensor, *, kl_weight: float = 1.0,
             label_smoothing: float = 0.0, ignore_index: int = -100) -> Tensor:
    """Deep mutual learning as in the authors' ``train_mutual`` baseline (weight 1, no temperature):

        CE(a) + CE(b) + kl_weight * (KL(softmax(b) || softmax(a)) + KL(softmax(a) || softmax(b)))

    KL "batchmean" over all rows; no detach: the gradient of each KL reaches both networks."""
    acc = state_dtype(logits_a.dtype)
    a, b = logits_a.to(acc), logits_b.to(acc)
    log_pa = torch.log_softmax(a, dim=1)
    log_pb = torch.log_softmax(b, dim=1)
    kl_ab = torch.nn.functional.kl_div(log_pa, log_pb, reduction="batchmean", log_target=True)
    kl_ba = torch.nn.functional.kl_div(log_pb, log_pa, reduction="batchmean", log_target=True)
    ce = _ce_mean(a, target, label_smoothing, ignore_index) + _ce_mean(b, target, label_smoothing,
                                                                        ignore_index)
    return ce + kl_weight * (kl_ab + kl_ba)
