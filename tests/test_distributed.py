"""Multi-process training on real gloo process groups (localhost): synchronised batch norm in the
fused BN + LIF path and in plain batch norm, and the trainer's collectives under a default group
that refuses CPU tensors as NCCL does. Each test starts its processes directly (RANK, WORLD_SIZE,
MASTER_ADDR/PORT in the environment), with a bounded timeout."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tna_kernels.nn import TernaryLIFConv2d, set_recompute
from tna_kernels.nn.sync_bn import SyncBatchNorm, convert_sync_batchnorm
from tna_kernels.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(script: str, world: int, tmp_path, *args, timeout: int = 240) -> None:
    """Runs ``script`` as ``world`` processes of one gloo group; fails with their stderr."""
    path = tmp_path / "worker.py"
    path.write_text(script)
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "TNA_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, str(path), *map(str, args)], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errors = []
    for rank, p in enumerate(procs):
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"rank {rank} did not finish within {timeout} s")
        if p.returncode:
            errors.append(f"rank {rank} exit {p.returncode}:\n{err[-3000:]}")
    assert not errors, "\n".join(errors)


# ---- synchronised batch norm --------------------------------------------------------------------

T, B, STEPS = 3, 8, 2
CASES = [(recompute, static) for recompute in (True, False) for static in (False, True)]


def _layer(seed: int, dtype) -> torch.nn.Module:
    torch.manual_seed(seed)
    layer = TernaryLIFConv2d(3, 6, 3, padding=1, T=T, bn_momentum=None).to(dtype)
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        layer.bn.weight.uniform_(0.5, 1.5)
        layer.bn.bias.uniform_(-0.2, 0.2)
    return convert_sync_batchnorm(layer).train()


def _inputs(step: int, static: bool, dtype):
    g = torch.Generator().manual_seed(100 + step)
    shape = (B, 3, 5, 5) if static else (T, B, 3, 5, 5)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) * 2
    weights = torch.randn((T, B, 6, 5, 5), generator=g, dtype=torch.float64).to(dtype)
    return x, weights


def sync_bn_run(rank: int, world: int, recompute: bool, static: bool, dtype=torch.float64) -> dict:
    """STEPS training steps of one layer on this rank's slice of the batch; the loss is a weighted
    sum of the spikes, so the ranks' gradients add up to the whole batch's."""
    layer = _layer(0, dtype)
    set_recompute(layer, recompute)
    per = B // world
    out = {"spikes": [], "grad_x": []}
    for step in range(STEPS):
        x, weights = _inputs(step, static, dtype)
        sl = slice(rank * per, (rank + 1) * per)
        x = (x[sl] if static else x[:, sl]).clone().requires_grad_(True)
        spikes = layer(x)
        (spikes * weights[:, sl]).sum().backward()
        out["spikes"].append(spikes.detach())
        out["grad_x"].append(x.grad)
    out.update({f"grad.{k}": p.grad for k, p in layer.named_parameters()})
    out.update({f"buffer.{k}": b for k, b in layer.named_buffers()})
    out["bn_type"] = type(layer.bn).__name__
    return out


SYNC_BN_WORKER = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_distributed import CASES, sync_bn_run
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.save({{case: sync_bn_run(rank, world, *case) for case in CASES}}, f"rank{{rank}}.pt")
dist.destroy_process_group()
"""


def test_sync_bn_two_processes_on_half_batches_match_one_process_on_the_batch(tmp_path):
    """Fused BN + LIF (recompute) and plain BN then LIF, sequence and static input, float64: two gloo
    processes on B/2 each give the running statistics, spikes and input gradients of one process
    on B, and their parameter gradients sum to its."""
    _run_ranks(SYNC_BN_WORKER.format(tests=str(ROOT / "tests")), 2, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for case in CASES:
        one = sync_bn_run(0, 1, *case)
        two = [r[case] for r in ranks]
        assert two[0]["bn_type"] == "SyncBatchNorm"
        dim = 0 if case[1] else 1  # the batch dimension of the input (static: [B, ...])
        for step in range(STEPS):
            assert torch.equal(torch.cat([t["spikes"][step] for t in two], 1), one["spikes"][step]), (case, step)
            torch.testing.assert_close(torch.cat([t["grad_x"][step] for t in two], dim), one["grad_x"][step],
                                       rtol=1e-9, atol=1e-12, msg=lambda m, c=case, s=step: f"{c} step {s}: {m}")
        for key in [k for k in one if k.startswith(("grad.", "buffer."))]:
            got = two[0][key] + two[1][key] if key.startswith("grad.") else two[0][key]
            if key.startswith("buffer."):  # every rank holds the same running statistics
                assert torch.equal(two[0][key], two[1][key]), (case, key)
            torch.testing.assert_close(got, one[key], rtol=1e-9, atol=1e-12,
                                       msg=lambda m, c=case, k=key: f"{c} {k}: {m}")


def test_sync_bn_in_one_process_is_plain_batch_norm():
    """No process group (or a group of one): SyncBatchNorm falls back to the local statistics."""
    for recompute, static in CASES:
        layer = _layer(0, torch.float32)
        plain = TernaryLIFConv2d(3, 6, 3, padding=1, T=T, bn_momentum=None)
        plain.load_state_dict(layer.state_dict())
        set_recompute(layer, recompute)
        set_recompute(plain, recompute)
        x, _ = _inputs(0, static, torch.float32)
        assert torch.equal(layer(x), plain(x))
        assert torch.equal(layer.bn.running_var, plain.bn.running_var)


def test_convert_sync_batchnorm_keeps_state_and_runs_in_eval():
    layer = TernaryLIFConv2d(3, 6, 3, padding=1, T=T)
    layer.bn.running_mean.fill_(0.25)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    converted = convert_sync_batchnorm(layer)
    assert isinstance(converted.bn, SyncBatchNorm)
    assert state.keys() == converted.state_dict().keys()
    assert all(torch.equal(v, converted.state_dict()[k]) for k, v in state.items())
    converted.eval()
    with torch.no_grad():
        assert converted(torch.rand(T, 2, 3, 5, 5)).shape == (T, 2, 6, 5, 5)


# ---- the trainer's collectives on a group that refuses CPU tensors ------------------------------

NCCL_LIKE_WORKER = """
import sys, torch, torch.distributed as dist
from tna_kernels.train import Trainer, load_config
from tna_kernels.train.distributed import teardown

calls = {"host": 0, "refused": 0}


def nccl_like(fn):
    # NCCL's rule for the default group: tensors must live on the GPU. Real gloo carries the rest.
    def wrapper(tensor, *args, group=None, **kwargs):
        tensors = tensor if isinstance(tensor, (list, tuple)) else [tensor]
        if (group is None or group is dist.group.WORLD) and any(t.device.type == "cpu" for t in tensors):
            calls["refused"] += 1
            raise RuntimeError("NCCL test double: Tensors must be CUDA and dense")
        calls["host"] += 1
        return fn(tensor, *args, group=group, **kwargs)
    return wrapper


for name in ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter"):
    setattr(dist, name, nccl_like(getattr(dist, name)))
cfg = load_config(None, ["data.name=digits", "data.batch_size=32", "model.arch=digits", "model.T=2",
                         "mode=tna", "train.epochs=2", "train.limit_batches=3", "train.limit_eval_batches=1",
                         "train.progress=false", "out_dir=" + sys.argv[1], "name=nccl_like"])
trainer = Trainer(cfg)
try:
    trainer.fit()
finally:
    teardown(trainer.dist)
assert calls["refused"] == 0 and calls["host"] >= 2 * (2 * 3 + 1), calls  # finite + stop per step, sums per epoch
"""


def test_trainer_collectives_run_when_the_default_group_refuses_cpu_tensors(tmp_path):
    """The finite-loss check, the stop flag and the epoch sums go over the host (gloo) group; DDP
    (C++) and the rest use the default group as they would with NCCL."""
    _run_ranks(NCCL_LIKE_WORKER, 2, tmp_path, tmp_path / "out")
    _, meta = checkpoint.load(tmp_path / "out" / "nccl_like" / "base.json")
    assert [r["epoch"] for r in meta["history"]] == [1, 2]


def test_two_process_sync_bn_training_matches_one_process(tmp_path):
    """Trainer with train.sync_bn on gloo: 2 processes × 16 images = 1 process × 32 images, batch
    norm included (every BN here is fused with its LIF)."""
    cfg = tmp_path / "syncbn.yaml"
    cfg.write_text("name: syncbn\nmode: baseline\ndata: {name: digits, batch_size: 32, augment: false}\n"
                   "model: {arch: digits, T: 2}\noptim: {lr: 0.05}\n"
                   "train: {epochs: 1, limit_batches: 3, limit_eval_batches: 1, progress: false, sync_bn: true}\n")
    run = [sys.executable, "-m", "tna_kernels.cli", "train", "--config", str(cfg)]
    env = {**os.environ, "TNA_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
    subprocess.run(run + ["--out", str(tmp_path / "one")], check=True, capture_output=True, timeout=300, env=env)
    out = subprocess.run(run + ["--out", str(tmp_path / "two"), "--nproc", "2"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    one, _ = checkpoint.load(tmp_path / "one" / "syncbn" / "base.json")
    two, _ = checkpoint.load(tmp_path / "two" / "syncbn" / "base.json")
    assert any("running_var" in k for k in one["base"])
    for k, v in one["base"].items():
        torch.testing.assert_close(two["base"][k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
