"""Loss modules for the training layer: TNA's twin loss and the KD / DML baselines. Thin wrappers
over :mod:`tna_kernels.functional` (the arguments are documented there); validated at
construction so a bad configuration fails before training starts."""

import torch
from torch import Tensor, nn

from .. import functional as F


class TwinLoss(nn.Module):
    """``ce_weight_base·CE(base) + ce_weight_twin·CE(twin) + mse_weight·MSE(base, twin)``, fused.

    ``forward(logits_base, logits_twin, target)`` returns the loss, or ``(loss, parts)`` with
    ``return_parts=True`` (``parts = [CE_base, CE_twin, MSE]``, unweighted, for logging).
    Defaults follow the TNA authors' code: ``mse_weight=0.005`` with ``mse_reduction="sum_over_batch"``.
    See :func:`tna_kernels.functional.twin_loss`.
    """

    def __init__(self, mse_weight: float = 0.005, *, ce_weight_base: float = 1.0,
                 ce_weight_twin: float = 1.0, mse_reduction: str = "sum_over_batch",
                 label_smoothing: float = 0.0, ignore_index: int = -100, detach_twin: bool = False,
                 detach_base: bool = False, return_parts: bool = False):
        super().__init__()
        self.kwargs = dict(mse_weight=mse_weight, ce_weight_base=ce_weight_base,
                           ce_weight_twin=ce_weight_twin, mse_reduction=mse_reduction,
                           label_smoothing=label_smoothing, ignore_index=ignore_index,
                           detach_twin=detach_twin, detach_base=detach_base,
                           return_parts=return_parts)
        z = torch.zeros(1, 2)
        F.twin_loss(z, z, torch.zeros(1, dtype=torch.int64), **self.kwargs)

    def forward(self, logits_base: Tensor, logits_twin: Tensor, target: Tensor):
        return F.twin_loss(logits_base, logits_twin, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class KDLoss(nn.Module):
    """Hinton KD: ``alpha·T²·KL(p_teacher^T ‖ p_student^T) + (1 − alpha)·CE(student, target)``,
    teacher detached. ``forward(student_logits, teacher_logits, target=None)``.
    See :func:`tna_kernels.functional.kd_loss`."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, *, label_smoothing: float = 0.0,
                 ignore_index: int = -100):
        super().__init__()
        self.kwargs = dict(temperature=temperature, alpha=alpha, label_smoothing=label_smoothing,
                           ignore_index=ignore_index)
        z = torch.zeros(1, 2)
        F.kd_loss(z, z, torch.zeros(1, dtype=torch.int64), **self.kwargs)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor | None = None):
        return F.kd_loss(student_logits, teacher_logits, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class DMLLoss(nn.Module):
    """Deep mutual learning for both networks:
    ``CE(a) + CE(b) + kl_weight·(KL(p_b ‖ p_a) + KL(p_a ‖ p_b))``.
    ``forward(logits_a, logits_b, target)``. See :func:`tna_kernels.functional.dml_loss`."""

    def __init__(self, kl_weight: float = 1.0, *, label_smoothing: float = 0.0, ignore_index: int = -100):
        super().__init__()
        self.kwargs = dict(kl_weight=kl_weight, label_smoothing=label_smoothing,
                           ignore_index=ignore_index)
        z = torch.zeros(1, 2)
        F.dml_loss(z, z, torch.zeros(1, dtype=torch.int64), **self.kwargs)

    def forward(self, logits_a: Tensor, logits_b: Tensor, target: Tensor):
        return F.dml_loss(logits_a, logits_b, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
