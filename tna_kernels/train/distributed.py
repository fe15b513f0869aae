"""Multi-process training with PyTorch's own engine (torch.distributed / torchrun).

Launch with ``tna train --nproc N ...`` (which runs torchrun) or plain
``torchrun --nnodes ... --nproc_per_node ... -m tna_kernels.cli train ...``. Every process reads
the same global batch (the order depends only on seed and epoch) and trains on its 1/N slice;
DDP averages the gradients, so N processes take the same steps as one process with the whole
batch (exactly so without batch norm, or with SyncBatchNorm on CUDA). Only rank 0 writes logs,
checkpoints and plots.

Two kinds of collectives: the networks' (DDP's gradient buckets, synchronised batch norm) run on
the training device over the default group (NCCL on CUDA, gloo on CPU); the trainer's own
bookkeeping (the finite-loss check, the stop flag, the epoch sums) is host data and always goes
over a gloo group of its own, ``DistInfo.host_group`` (:func:`all_reduce_host`). NCCL refuses CPU
tensors, and moving three scalars to the GPU only to bring them back costs a copy each way."""

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
    host_group: object = None  # a gloo group for CPU tensors (see the module docstring)

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
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", store=_restart_store(timeout),
                                rank=info.rank, world_size=world, timeout=timeout)
    # Its own gloo group even when the default one is gloo: one code path on every backend, and
    # host bookkeeping never queues behind gradient buckets.
    info.host_group = dist.new_group(backend="gloo", timeout=timeout)
    return info


def _restart_store(timeout: timedelta) -> dist.Store | None:
    """The store for this worker group, keyed by torchrun's restart count on one machine.

    torchrun's c10d rendezvous (``--standalone``) hands the workers one TCPStore that its agent
    keeps for the whole job, and torch's ``env://`` init does not separate restarts in it (torch
    2.13). A restarted group then reads the dead group's gloo peer addresses and, depending on
    which worker reads first and on the port numbers, connects to a dead port ("Connection
    refused") or both new workers wait for each other until the timeout. A per-restart prefix
    keeps each group's keys apart. The restart count is only the same for every worker when one
    agent runs them all (one machine); across machines (None: torch's default) restarts need
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` for torchrun, which gives each group a fresh store."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("LOCAL_WORLD_SIZE") != env.get("WORLD_SIZE"):
        return None
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"]), is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"tna/restart_{env['TORCHELASTIC_RESTART_COUNT']}", store)


def all_reduce_host(t: torch.Tensor, info: DistInfo, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduces the CPU tensor ``t`` in place over the host (gloo) group; a no-op for one process."""
    if t.device.type != "cpu":
        raise ValueError(f"all_reduce_host reduces host data: t must be a CPU tensor, got one on {t.device}")
    if info.enabled:
        dist.all_reduce(t, op=op, group=info.host_group)
    return t


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
