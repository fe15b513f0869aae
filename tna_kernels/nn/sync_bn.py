"""Batch norm whose batch statistics span every process, on every device (CPU/gloo included).

``nn.SyncBatchNorm`` runs only on accelerators: its kernels (``batch_norm_stats`` and the rest)
have no CPU implementation. The functions here compute the same thing with plain tensor ops and
two small collectives, so the fused BN + LIF path (:mod:`tna_kernels.nn.bn_lif`) and CPU runs
can synchronise too:

* forward: each rank's per-channel ``(count, mean, M2)`` (M2 = sum of squared deviations) is
  all-gathered and combined exactly (Chan et al.'s pairwise update), so no ``E[x²] − E[x]²``
  cancellation; 3·C numbers per rank;
* backward: ``Σ dy`` and ``Σ dy·(x − μ)`` per channel are all-reduced (2·C numbers); the weight
  and bias gradients stay local, as ``nn.SyncBatchNorm``'s do (DDP averages them).

Statistics are accumulated in float32 for half/bfloat16 inputs."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "sync_group"]


def sync_group(bn: nn.Module):
    """The process group whose statistics ``bn`` must share, or None when its batch alone counts:
    ``bn`` is a :class:`SyncBatchNorm` or ``nn.SyncBatchNorm`` in training mode and its group has
    more than one process."""
    if not isinstance(bn, (nn.SyncBatchNorm, SyncBatchNorm)) or not bn.training:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group if bn.process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _shape(x: Tensor) -> list[int]:
    """Broadcast shape of a per-channel vector against ``x`` [N, C, ...]."""
    return [1, -1] + [1] * (x.dim() - 2)


def _acc(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def global_batch_stats(x: Tensor, group) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x`` [N, C, ...] over every rank of ``group``,
    and the total count (a 0-d tensor)."""
    var, mean = torch.var_mean(_acc(x), dim=_dims(x), correction=0)
    local = x.numel() // max(1, x.shape[1])
    stats = torch.stack([torch.full_like(mean, local), mean, var * local])  # [3, C]
    parts = [torch.empty_like(stats) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, stats, group=group)
    count, means, m2 = torch.stack(parts).unbind(1)  # each [world, C]
    n = count.sum(0)
    g_mean = (count * means).sum(0) / n
    g_m2 = (m2 + count * (means - g_mean) ** 2).sum(0)
    return g_mean, g_m2 / n, n[0]


def update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, n: Tensor,
                         momentum: float) -> None:
    """``running = (1 − momentum)·running + momentum·batch`` with the unbiased batch variance, as
    ``nn.BatchNorm``'s forward does (``momentum``: already resolved for ``momentum=None``)."""
    if bn.running_mean is None:
        return
    with torch.no_grad():
        unbiased = var * (n / (n - 1).clamp(min=1))
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)


def normalize(x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, var: Tensor,
              eps: float) -> Tensor:
    """``(x − mean)/√(var + eps)·weight + bias`` with the given statistics: the same op on the same
    input gives the same bits, so backward can recompute it."""
    return torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]


def sync_batch_norm_backward(grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, var: Tensor,
                             n: Tensor, eps: float, group, mask) -> tuple:
    """Gradients of :func:`normalize` with batch statistics ``mean``/``var`` taken over ``n``
    samples on all ranks: ``(grad_x, grad_weight, grad_bias)``, each None unless ``mask`` asks."""
    dims, shape = _dims(x), _shape(x)
    invstd = torch.rsqrt(var + eps)
    g = _acc(grad_y)
    xmu = _acc(x) - mean.view(shape)
    sums = torch.stack([g.sum(dims), (g * xmu).sum(dims)])  # [2, C]: Σdy, Σdy·(x − μ) of this rank
    # parameters are float32 under autocast and x's dtype otherwise: the statistics' dtype
    grad_w = (sums[1] * invstd).to(mean.dtype) if mask[1] else None
    grad_b = sums[0].to(mean.dtype, copy=True) if mask[2] else None  # sums is reduced in place below
    grad_x = None
    if mask[0]:
        dist.all_reduce(sums, group=group)
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
        grad_x = ((g - (sums[0] / n).view(shape) - xmu * (invstd * invstd * sums[1] / n).view(shape))
                  * scale.view(shape)).to(x.dtype)
    return grad_x, grad_w, grad_b


def resolve_momentum(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """The momentum of this training step, with ``nn.BatchNorm``'s bookkeeping: counts the batch in
    ``num_batches_tracked``; ``momentum=None`` means a cumulative average."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    return momentum


class _SyncBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, bn, momentum, group):
        mean, var, n = global_batch_stats(x, group)
        if bn.training and bn.track_running_stats:
            update_running_stats(bn, mean, var, n, momentum)
        ctx.save_for_backward(x, weight, mean, var, n)
        ctx.conf = (bn.eps, group)
        return normalize(x, weight, bias, mean, var, bn.eps)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, mean, var, n = ctx.saved_tensors
        eps, group = ctx.conf
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                ctx.needs_input_grad[2]]
        grads = sync_batch_norm_backward(grad_y.contiguous(), x, weight, mean, var, n, eps, group, mask)
        return *grads, None, None, None


class SyncBatchNorm(_BatchNorm):
    """Batch norm over every process's batch, for CPU modules (gloo): ``nn.SyncBatchNorm`` has no
    CPU kernels and DDP refuses it in a CPU module. Same constructor, ``process_group`` and
    state-dict keys as ``nn.SyncBatchNorm``; with one process, or in eval mode, it is plain batch
    norm. Any input rank ≥ 2 (``[N, C, ...]``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions [N, C, ...], got shape {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        group = sync_group(self)
        if group is None:
            return super().forward(input)
        self._check_input_dim(input)
        momentum = resolve_momentum(self)
        return _SyncBN.apply(input, self.weight, self.bias, self, momentum, group)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every batch norm in ``module`` becomes a synchronised one, keeping its parameter and buffer
    objects (an optimiser built before still holds them): :class:`SyncBatchNorm` where the batch
    norm lives on the CPU, ``nn.SyncBatchNorm`` (torch's accelerator kernels) elsewhere. The fused
    BN + LIF path synchronises either."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, SyncBatchNorm)):
        tensors = [t for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))]
        cls = SyncBatchNorm if all(t.device.type == "cpu" for t in tensors) else nn.SyncBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                  process_group)
        out._parameters, out._buffers = module._parameters, module._buffers  # the same objects
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out
