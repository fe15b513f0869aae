"""Training layer: modes, exact resume, checkpoints, NaN policy, config errors, CLI, export."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tna_kernels.train import CheckpointError, ConfigError, Trainer, TrainingError, checkpoint, load_config, load_model
from tna_kernels.train.export import export_packed, load_packed


def tiny_cfg(tmp_path, *overrides):
    return load_config(None, ["data.name=digits", "data.batch_size=32", "model.arch=digits", "model.T=2",
                              "train.epochs=2", "train.limit_batches=6", "train.progress=false",
                              f"out_dir={tmp_path}", "optim.lr=0.05", *overrides])


def params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = tiny_cfg(out, "name=teacher", "mode=baseline", "model.ternary=false", "train.epochs=1")
    Trainer(cfg).fit()
    return out / "teacher" / "base.json"


@pytest.mark.parametrize("mode", ["baseline", "tna", "dml", "kd"])
def test_each_mode_trains_and_the_loss_goes_down(tmp_path, mode, teacher_path):
    extra = [f"loss.teacher={teacher_path}"] if mode == "kd" else []
    cfg = tiny_cfg(tmp_path, f"mode={mode}", "train.epochs=3", *extra)
    trainer = Trainer(cfg)
    last = trainer.fit()
    hist = trainer.history
    assert len(hist) == 3 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert 0.0 <= last["val_acc"] <= 1.0
    assert ("twin_val_acc" in last) == (mode in ("tna", "dml"))
    run = tmp_path / cfg["name"]
    assert (run / "metrics.csv").is_file() and (run / "curves.png").is_file()
    state, meta = checkpoint.load(run / "base.json")
    assert set(state) == {"base"} and meta["model_config"] == trainer.base.config  # only the base is exported


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    straight = Trainer(tiny_cfg(tmp_path / "a", "mode=tna"))
    straight.fit()
    first = Trainer(tiny_cfg(tmp_path / "b", "mode=tna"))
    first.fit(stop_after=1)
    assert first.epoch == 1 and not (tmp_path / "b" / "run" / "base.json").exists()
    resumed = Trainer(tiny_cfg(tmp_path / "b", "mode=tna"))
    resumed.fit(resume="auto")
    for k, v in params(straight.base).items():
        assert torch.equal(v, resumed.base.state_dict()[k]), k
    for k, v in params(straight.twin).items():
        assert torch.equal(v, resumed.twin.state_dict()[k]), k
    timing = ("images_per_s", "epoch_seconds")
    strip = lambda hist: [{k: v for k, v in r.items() if k not in timing} for r in hist]  # noqa: E731
    assert strip(straight.history) == strip(resumed.history)


def test_corrupted_or_truncated_checkpoint_is_detected(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path, "mode=baseline", "train.epochs=1"))
    trainer.fit()
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        checkpoint.load(last)
    (tmp_path / "run" / "checkpoints" / "best.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete or missing"):
        checkpoint.load(tmp_path / "run" / "checkpoints" / "best.json")


def test_checkpoint_from_another_architecture_is_refused(tmp_path):
    Trainer(tiny_cfg(tmp_path, "mode=baseline", "train.epochs=1")).fit()
    other = Trainer(tiny_cfg(tmp_path, "mode=baseline", "model.width_mult=2.0"))
    with pytest.raises(CheckpointError, match="another architecture"):
        other.resume(tmp_path / "run" / "checkpoints" / "last.json")


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_loss(tmp_path, policy):
    trainer = Trainer(tiny_cfg(tmp_path, "mode=baseline", f"train.nan_policy={policy}"))
    trainer.fit(stop_after=1)
    good = (tmp_path / "run" / "checkpoints" / "last.json").read_text()
    real_loss = trainer._loss

    def poisoned(x, y):
        loss, logits, twin = real_loss(x, y)
        return loss * float("nan"), logits, twin

    trainer._loss = poisoned
    if policy == "stop":
        with pytest.raises(TrainingError, match="non-finite loss"):
            trainer.fit()
        assert (tmp_path / "run" / "checkpoints" / "last.json").read_text() == good
    else:
        before = params(trainer.base)
        trainer.fit()
        assert trainer.skipped == 6
        assert all(torch.equal(v, trainer.base.state_dict()[k]) for k, v in before.items()
                   if not k.endswith("num_batches_tracked") and "running" not in k)


@pytest.mark.parametrize("overrides,match", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
    (["mode=distill"], "mode must be one of"),
    (["mode=kd"], "loss.teacher"),
    (["twin.frozen=true"], "twin.pretrained"),
    (["train.epochs=0"], "train.epochs"),
    (["train.train_path=sparse"], "train.train_path must be auto, spike or dense"),
    (["train.tune_malloc=1"], "train.tune_malloc must be true or false"),
    (["nonsense"], "key=value"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


@pytest.mark.parametrize("tune", [True, False])
def test_cpu_training_tunes_malloc_unless_told_not_to(tmp_path, monkeypatch, tune):
    from tna_kernels.train import trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "tune_malloc", lambda: calls.append(True) or True)
    Trainer(tiny_cfg(tmp_path, "mode=baseline", f"train.tune_malloc={str(tune).lower()}"))
    assert calls == ([True] if tune else [])


def test_missing_dataset_gives_one_clear_message(tmp_path):
    from tna_kernels.data import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="cifar"):
        Trainer(tiny_cfg(tmp_path, "data.name=cifar10", f"data.root={tmp_path / 'nothing'}"))


def test_packed_export_round_trip(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path, "mode=baseline", "train.epochs=1"))
    trainer.fit()
    model = load_model(tmp_path / "run" / "base.json").eval()
    info = export_packed(model, tmp_path / "m.safetensors")
    assert info["packed_layers"] == 2  # hidden conv + readout; the first conv stays float
    restored = load_packed(tmp_path / "m.safetensors").eval()
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


def test_cli_end_to_end(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("name: cli\nmode: tna\ndata: {name: digits, batch_size: 32}\n"
                   "model: {arch: digits, T: 2}\ntrain: {epochs: 1, progress: false}\n")
    run = [sys.executable, "-m", "tna_kernels.cli"]
    out = subprocess.run(run + ["train", "--config", str(cfg), "--limit", "4", "--out", str(tmp_path),
                                "seed=0"],  # overrides may follow the options
                         capture_output=True, text=True, check=True).stdout
    assert "cli: epoch 1" in out
    base = tmp_path / "cli" / "base.json"
    out = subprocess.run(run + ["eval", str(base)], capture_output=True, text=True, check=True).stdout
    assert "test accuracy" in out
    out = subprocess.run(run + ["export", str(base), "--out", str(tmp_path / "p.safetensors")],
                         capture_output=True, text=True, check=True).stdout
    assert "wrote" in out and (tmp_path / "p.safetensors").is_file()
    pytest.importorskip("nir")
    out = subprocess.run(run + ["export", str(base), "--format", "nir", "--out", str(tmp_path / "m.nir")],
                         capture_output=True, text=True, check=True).stdout
    assert "NIR graph" in out and (tmp_path / "m.nir").is_file()
    bad = subprocess.run(run + ["train", "--config", str(cfg), "optim.nope=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown config key 'optim.nope'" in bad.stderr
    meta = json.loads(base.read_text())["meta"]
    assert meta["model_config"]["arch"] == "digits"


@pytest.mark.parametrize("path", sorted(p.name for p in (
    __import__("pathlib").Path(__file__).parents[1] / "configs").glob("*.yaml")))
def test_shipped_configs_load_and_build(path):
    from pathlib import Path

    from tna_kernels.models import build_model

    cfg = load_config(Path(__file__).parents[1] / "configs" / path)
    shapes = {"digits": (1, 8, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100),
              "cifar10_dvs": (2, cfg["data"]["options"].get("size", 128), 10)}
    c, size, classes = shapes[cfg["data"]["name"]]
    model = build_model({**cfg["model"], "in_channels": c, "input_size": size, "num_classes": classes})
    assert sum(p.numel() for p in model.parameters()) > 0


def test_planted_pickle_is_refused_and_never_executed(tmp_path):
    import hashlib
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    weights = tmp_path / "ckpt.safetensors"
    weights.write_bytes(pickle.dumps({"base": Evil()}))
    doc = {"format": checkpoint.FORMAT, "tensors_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
           "meta": {}, "state": {}}
    (tmp_path / "ckpt.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        checkpoint.load(tmp_path / "ckpt.json")
    from tna_kernels.train import PackedModelError

    with pytest.raises(PackedModelError, match="ckpt.safetensors is not a readable safetensors file"):
        load_packed(weights)
    assert not marker.exists()


def test_sigterm_writes_a_resumable_checkpoint_and_resume_is_exact(tmp_path):
    straight = Trainer(tiny_cfg(tmp_path / "a", "mode=tna"))
    straight.fit()
    run = Trainer(tiny_cfg(tmp_path / "b", "mode=tna"))
    real_loss, calls = run._loss, []

    def loss_then_signal(x, y):
        calls.append(1)
        if len(calls) == 9:  # epoch 2, batch 3 of 6: a real SIGTERM to this process
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(x, y)

    run._loss = loss_then_signal
    result = run.fit()
    assert result == {"preempted": True, "epoch": 1, "batch": 3}
    assert not (tmp_path / "b" / "run" / "base.json").exists()
    resumed = Trainer(tiny_cfg(tmp_path / "b", "mode=tna"))
    resumed.fit(resume="auto")
    for k, v in straight.base.state_dict().items():
        assert torch.equal(v, resumed.base.state_dict()[k]), k
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_two_process_ddp_matches_one_process(tmp_path):
    """gloo on localhost: 2 processes x 16 images = 1 process x 32 images (no batch norm)."""
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text("name: ddp\nmode: tna\ndata: {name: digits, batch_size: 32}\n"
                   "model: {arch: digits, T: 2, bn: false}\noptim: {lr: 0.05}\n"
                   "train: {epochs: 1, limit_batches: 4, limit_eval_batches: 1, progress: false}\n")
    run = [sys.executable, "-m", "tna_kernels.cli", "train", "--config", str(cfg)]
    subprocess.run(run + ["--out", str(tmp_path / "one")], check=True, capture_output=True, timeout=300)
    out = subprocess.run(run + ["--out", str(tmp_path / "two"), "--nproc", "2"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TNA_DIST_TIMEOUT": "60"})
    assert out.returncode == 0, out.stderr[-2000:]
    one, _ = checkpoint.load(tmp_path / "one" / "ddp" / "base.json")
    two, _ = checkpoint.load(tmp_path / "two" / "ddp" / "base.json")
    for k, v in one["base"].items():
        torch.testing.assert_close(two["base"][k], v, rtol=1e-4, atol=1e-5)


def test_resume_auto_skips_a_damaged_last_checkpoint(tmp_path, capsys):
    Trainer(tiny_cfg(tmp_path, "mode=baseline", "train.epochs=3")).fit(stop_after=2)
    folder = tmp_path / "run" / "checkpoints"
    assert (folder / "previous.json").is_file()
    data = (folder / "last.safetensors").read_bytes()
    (folder / "last.safetensors").write_bytes(data[:100])
    trainer = Trainer(tiny_cfg(tmp_path, "mode=baseline", "train.epochs=3"))
    assert trainer.latest_checkpoint() == folder / "previous.json"
    assert "skipping damaged checkpoint" in capsys.readouterr().err
    trainer.fit(resume="auto")
    assert trainer.epoch == 3 and [r["epoch"] for r in trainer.history] == [1, 2, 3]


def _children(pid):
    return [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def _descendants(pid):
    return [d for c in _children(pid) for d in (c, *_descendants(c))]


def _finish(proc, timeout, why="hung?"):
    """stderr of ``proc`` once it exits; past ``timeout`` s the whole tree is killed (torchrun starts
    each worker in a session of its own) and the test fails with the end of stderr."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        err = proc.communicate()[1]
        pytest.fail(f"{why} (killed after {timeout} s); stderr ends:\n{err[-3000:]}")


# Each process group of the run gives up after this many seconds instead of hanging
DIST_ENV = {**os.environ, "TNA_DIST_TIMEOUT": "20"}

WORKER = """
import os, time, torch
from torch.distributed.distributed_c10d import _get_default_store
from tna_kernels.train import distributed
info = distributed.setup(torch.device("cpu"))
store = _get_default_store()
assert not store.check(["left_by_the_first_group"]), "a restarted group sees the previous group's store keys"
assert distributed.all_reduce_host(torch.ones(1), info).item() == 2
if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    store.set("left_by_the_first_group", "1")
    distributed.all_reduce_host(torch.ones(1), info)  # the key is written before rank 1 fails
    if info.rank == 1:
        os._exit(3)  # a crash (no gloo teardown); torchrun stops rank 0 and starts a new group
    time.sleep(60)
distributed.teardown(info)
"""


def test_a_group_restarted_by_torchrun_starts_with_a_fresh_store(tmp_path):
    # The stale keys that matter are gloo's peer addresses; whether the new group then fails,
    # hangs or works depends on timing and port numbers, so the keys themselves are checked.
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "--max-restarts", "1", str(script)], env=DIST_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    err = _finish(proc, 120)
    assert proc.returncode == 0, err[-3000:]
    assert "exitcode: 3" in err, err[-3000:]


def test_killed_worker_is_restarted_by_torchrun_and_the_run_completes(tmp_path):
    cfg = tmp_path / "restart.yaml"
    cfg.write_text("name: restart\nmode: baseline\ndata: {name: digits, batch_size: 32}\n"
                   "model: {arch: digits, T: 2}\n"
                   "train: {epochs: 3, limit_batches: 40, limit_eval_batches: 1, progress: false}\n")
    proc = subprocess.Popen([sys.executable, "-m", "tna_kernels.cli", "train", "--config", str(cfg),
                             "--out", str(tmp_path), "--nproc", "2", "--max-restarts", "2"], env=DIST_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = tmp_path / "restart" / "checkpoints" / "last.json"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not first.exists():
        err = _finish(proc, 0, "no checkpoint after the first epoch")
        pytest.fail(f"no checkpoint after the first epoch (exit code {proc.returncode}); stderr ends:\n{err[-3000:]}")
    _, before = checkpoint.load(first)
    assert before["epoch"] == 1
    # SIGKILL one training worker (a grandchild: tna -> torchrun -> workers) in the second epoch
    workers = [w for launcher in _children(proc.pid) for w in _children(launcher)]
    assert workers, "no worker processes found"
    os.kill(workers[-1], signal.SIGKILL)
    err = _finish(proc, 180)
    assert proc.returncode == 0, err[-3000:]
    # the group failed (torchrun logs whichever worker it saw die first: the killed one, or the
    # other one, which loses its peer) and was restarted, since the run then succeeded
    assert "failed (exitcode: " in err, err[-3000:]
    state, meta = checkpoint.load(tmp_path / "restart" / "checkpoints" / "last.json")
    assert meta["epoch"] == 3 and [r["epoch"] for r in meta["history"]] == [1, 2, 3]
    assert meta["history"][0] == before["history"][0]  # resumed from epoch 1's checkpoint, not retrained
    assert (tmp_path / "restart" / "base.json").is_file()


def test_frozen_pretrained_twin_stays_fixed_and_late_matching(tmp_path, teacher_path):
    cfg = tiny_cfg(tmp_path, "mode=tna", f"twin.pretrained={teacher_path}", "twin.frozen=true",
                   "twin.precision=fp", "loss.late_matching_epoch=1")
    trainer = Trainer(cfg)
    before = params(trainer.twin)
    assert torch.equal(before["features.0.weight"], load_model(teacher_path).state_dict()["features.0.weight"])
    trainer.fit()
    after = trainer.twin.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # frozen: weights and BN stats
    assert trainer.opt_twin is None


def test_spike_rate_regularisation_lowers_firing(tmp_path):
    from tna_kernels.nn import firing_rates

    x = torch.randn(16, 1, 8, 8)
    rates = {}
    for weight in (0.0, 5.0):
        trainer = Trainer(tiny_cfg(tmp_path / str(weight), "mode=baseline", "train.epochs=2",
                                   f"loss.spike_rate_weight={weight}"))
        trainer.fit()
        rates[weight] = sum(firing_rates(trainer.base.eval(), x).values())
    assert rates[5.0] < rates[0.0]


def test_recompute_switch_reaches_every_spiking_layer(tmp_path):
    from tna_kernels.nn.spiking import _SpikingMixin

    for flag in (True, False):
        trainer = Trainer(tiny_cfg(tmp_path / str(flag), "mode=tna", f"train.recompute={str(flag).lower()}"))
        layers = [m for net in (trainer.base, trainer.twin) for m in net.modules() if isinstance(m, _SpikingMixin)]
        assert layers and all(m.recompute is flag for m in layers)


def test_eval_train_images_measures_an_evenly_spread_unaugmented_slice(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path, "mode=baseline", "train.epochs=1", "train.eval_train_images=200"))
    subset = trainer._train_eval_set()
    train = trainer.data.train
    assert len(subset) == 200
    counts = subset.class_counts()
    assert min(counts) > 0, counts  # every class
    # the images are the training split's own (the first and last included), not augmented copies
    assert torch.equal(subset.data[0], train.data[0]) and torch.equal(subset.data[-1], train.data[-1])
    row = trainer.fit()
    assert 0.0 <= row["train_eval_acc"] <= 1.0 and row["train_eval_loss"] > 0
    manual = trainer.evaluate(trainer.base, "train_eval")
    assert manual["acc"] == row["train_eval_acc"] and manual["n"] == 200
    with pytest.raises(ConfigError, match="eval_train_images"):
        Trainer(tiny_cfg(tmp_path, "train.eval_train_images=-1"))


def test_data_on_device_decision():
    from types import SimpleNamespace

    from tna_kernels.train.trainer import PRELOAD_LIMIT_BYTES, preload_on_device

    def data(nbytes):
        return SimpleNamespace(train=SimpleNamespace(data=torch.empty(nbytes, dtype=torch.uint8, device="meta")),
                               val=None, test=None)

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert preload_on_device("auto", cuda, data(150 << 20))
    assert not preload_on_device("auto", cuda, data(PRELOAD_LIMIT_BYTES + 1))
    assert preload_on_device(True, cuda, data(PRELOAD_LIMIT_BYTES + 1))
    assert not preload_on_device(False, cuda, data(1))
    assert not preload_on_device(True, cpu, data(1))  # the CPU holds the data already
    with pytest.raises(ConfigError, match="data.on_device"):
        preload_on_device("yes", cuda, data(1))


def test_loaders_are_built_on_the_training_device_once(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path, "mode=baseline", "train.epochs=1", "data.on_device=true"))
    assert trainer.train_loader.device == trainer.device and trainer.preload is False
    first = trainer.evaluate(trainer.base)
    loader = trainer._eval_loaders[trainer.eval_split]
    assert trainer.evaluate(trainer.base) == first and trainer._eval_loaders[trainer.eval_split] is loader


def test_train_path_choices_are_checkpointed_and_restored(tmp_path, monkeypatch, capsys):
    """train_path="auto" measures per layer; the choices travel with the checkpoint so a resumed
    run (another process) takes the paths the interrupted one took."""
    from tna_kernels.ops import spike_train

    monkeypatch.setattr(spike_train, "PATH_CHOICES", {})
    monkeypatch.setattr(spike_train, "PATH_TIMES", {})
    first = Trainer(tiny_cfg(tmp_path, "mode=tna", "train.epochs=2"))
    first.fit(stop_after=1)
    assert "training paths of the spike-input ternary convs" in capsys.readouterr().out
    chosen = dict(spike_train.PATH_CHOICES)
    assert chosen and set(chosen.values()) <= {"spike", "dense"}
    _, meta = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.json")
    assert len(meta["train_path_choices"]) == len(chosen)
    spike_train.PATH_CHOICES.clear()  # as in a new process
    resumed = Trainer(tiny_cfg(tmp_path, "mode=tna", "train.epochs=2"))
    resumed.resume(tmp_path / "run" / "checkpoints" / "last.json")
    assert spike_train.PATH_CHOICES == chosen


@pytest.mark.parametrize("path", ["spike", "dense"])
def test_train_path_option_reaches_every_layer(tmp_path, path):
    from tna_kernels.nn import train_paths

    trainer = Trainer(tiny_cfg(tmp_path, "mode=tna", "train.epochs=1", f"train.train_path={path}"))
    trainer.fit()
    for model in (trainer.base, trainer.twin):
        got = train_paths(model)
        assert got and set(got.values()) == {path}
