"""Multi-process training with PyTorch's own engine (torch.distributed / torchrun).

Launch with ``tna train --nproc N ...`` (which runs torchrun) or plain
``torchrun --nnodes ... --nproc_per_node ... -m tna_kernels.cli train ...``. Every process reads
the same global batch (the order depends only on seed and epoch) and trains on its 1/N slice;
DDP averages the gradients, so N processes take the same steps as one process with the whole
batch (exactly so without batch norm, or with SyncBatchNorm on CUDA). Only rank 0 writes logs,
checkpoints and plots."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> DistInfo:
    """Joins the process group torchrun describes in the environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # A bounded wait: a process group that cannot form fails (and torchrun can restart it)
        # instead of hanging for torch's default 30 minutes.
        timeout = timedelta(seconds=float(os.environ.get("TNA_DIST_TIMEOUT", "300")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return info


def all_reduce_(t: torch.Tensor, info: DistInfo, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=op)
    return t


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
