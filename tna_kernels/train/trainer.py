"""Trainer for ternary SNNs: baseline, TNA (base + twin with the fused twin loss), KD and DML.

One run = one config (see :mod:`tna_kernels.train.config`). Every epoch trains, evaluates base and
twin, appends a metrics row (CSV, optional TensorBoard) and writes the ``last`` checkpoint (and
``best`` when validation accuracy improves). Only the base model is exported at the end."""

from __future__ import annotations

import copy
import math
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import functional as F
from ..data import BatchLoader, get_dataset
from ..malloc import tune_malloc
from ..models import build_model, make_twin
from ..nn.spiking import set_recompute, set_train_path, spiking_layers, train_paths
from ..nn.sync_bn import convert_sync_batchnorm
from ..ops import spike_train
from . import checkpoint, distributed
from .config import ConfigError
from .evaluate import evaluate_model, model_input
from .metrics import MetricsLog


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. a non-finite loss with ``nan_policy: stop``)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is visible")
    return torch.device(name)


def model_config(cfg: dict, data) -> dict:
    """The model's constructor arguments: the config's model section + the data's shapes."""
    m = copy.deepcopy(cfg["model"])
    shape = data.input_shape  # [C, H, W] images or [T, C, H, W] frames
    m.update(in_channels=shape[-3], input_size=shape[-1], num_classes=data.num_classes)
    if len(shape) == 4:
        m["T"] = shape[0]
    return m


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """A model from a checkpoint written by the trainer (``last``/``best``/``base``)."""
    state, meta = checkpoint.load(path)
    if "model_config" not in meta or "base" not in state:
        raise checkpoint.CheckpointError(f"{path} holds no base model")
    try:
        model = build_model(meta["model_config"])
    except (TypeError, KeyError, ValueError) as exc:
        raise checkpoint.CheckpointError(
            f"{path}: its model_config cannot be built: {type(exc).__name__}: {exc}") from exc
    try:
        model.load_state_dict(state["base"])
    except RuntimeError as exc:
        raise checkpoint.CheckpointError(f"{path}: weights do not fit the recorded architecture: {exc}") from exc
    return model.to(device)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # BN weights/biases and biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, o: dict) -> torch.optim.Optimizer:
    groups = _param_groups(model, o["weight_decay"])
    if o["name"] == "sgd":
        return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])
    return torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]))


PRELOAD_LIMIT_BYTES = 4 << 30


def preload_on_device(option, device: torch.device, data) -> bool:
    """Whether the loaders keep the dataset on ``device`` and gather and augment batches there
    (``data.on_device``): ``"auto"`` does on CUDA when all splits take at most 4 GiB."""
    if option not in ("auto", True, False):
        raise ConfigError(f"data.on_device must be 'auto', true or false, got {option!r}")
    if device.type == "cpu" or option is False:
        return False
    if option is True:
        return True
    splits = [s for s in (data.train, data.val, data.test) if s is not None]
    return sum(s.data.numel() * s.data.element_size() for s in splits) <= PRELOAD_LIMIT_BYTES


def lr_at(step: int, total: int, steps_per_epoch: int, lr: float, s: dict) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, then the schedule."""
    warmup = int(s["warmup_epochs"] * steps_per_epoch)
    if step < warmup:
        return lr * (step + 1) / warmup
    if s["name"] == "constant":
        return lr
    if s["name"] == "step":
        return lr * s["gamma"] ** ((step // steps_per_epoch) // s["step_epochs"])
    progress = (step - warmup) / max(1, total - warmup)
    return s["min_lr"] + (lr - s["min_lr"]) * 0.5 * (1 + math.cos(math.pi * progress))


class _RateCollector:
    """Collects every spiking layer's mean firing rate (differentiable) during one forward."""

    def __init__(self, model: nn.Module):
        self.rates: list[torch.Tensor] = []
        self.hooks = [m.neuron.register_forward_hook(lambda _m, _i, out: self.rates.append(out.mean()))
                      for _, m in spiking_layers(model) if m.neuron is not None]

    def pop_mean(self) -> torch.Tensor:
        rate = torch.stack(self.rates).mean()
        self.rates = []
        return rate


class Trainer:
    """Builds data, networks and optimisers from ``cfg`` and runs training (``fit``)."""

    def __init__(self, cfg: dict, data=None):
        self.cfg = cfg
        seed_everything(cfg["seed"])
        self.device = resolve_device(cfg["device"])
        self.dist = distributed.setup(self.device)
        if cfg["train"]["tune_malloc"] and self.device.type == "cpu":
            tune_malloc()
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if cfg["data"]["batch_size"] % self.dist.world:
            raise ConfigError(f"data.batch_size ({cfg['data']['batch_size']}) is the global batch and must be "
                              f"divisible by the number of processes ({self.dist.world})")
        self.out = Path(cfg["out_dir"]) / cfg["name"]
        d = cfg["data"]
        self.data = data if data is not None else get_dataset(
            d["name"], d["root"], val_per_class=d["val_per_class"], val_mode=d["val_mode"],
            train_per_class=d["train_per_class"], seed=cfg["seed"], download=d["download"],
            augment=d["augment"], **d["options"])
        self.eval_split = "val" if self.data.val is not None else "test"
        n = cfg["train"]["eval_train_images"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"train.eval_train_images must be an integer >= 0, got {n!r}")
        if getattr(self.data, self.eval_split) is None:
            raise ConfigError(f"the {d['name']} data has neither a val nor a test split to evaluate on")
        self.preload = preload_on_device(d["on_device"], self.device, self.data)
        self.train_loader = self.data.loader("train", d["batch_size"], seed=cfg["seed"],
                                             max_batches=cfg["train"]["limit_batches"], drop_last=True,
                                             device=self.device, preload=self.preload)

        self.base = build_model(model_config(cfg, self.data)).to(self.device)
        self.twin = self.teacher = None
        mode, t = cfg["mode"], cfg["twin"]
        if mode in ("tna", "dml"):
            self.twin = make_twin(self.base, cfg["seed"] + t["seed_offset"], t["precision"], t["width_mult"])
            if t["pretrained"]:
                self.twin.load_state_dict(load_model(t["pretrained"]).state_dict())
        if mode == "kd":
            self.teacher = load_model(cfg["loss"]["teacher"], self.device).eval()
            self.teacher.requires_grad_(False)
        for model in (self.base, self.twin):
            if model is not None:
                set_recompute(model, cfg["train"]["recompute"])
                set_train_path(model, cfg["train"]["train_path"])
        self.twin_trainable = self.twin is not None and not t["frozen"]
        if self.twin is not None and t["frozen"]:
            self.twin.requires_grad_(False)
        self.opt_base = make_optimizer(self.base, cfg["optim"])
        self.opt_twin = make_optimizer(self.twin, cfg["optim"]) if self.twin_trainable else None
        self.rates = _RateCollector(self.base) if cfg["loss"]["spike_rate_weight"] > 0 else None
        self.base_fwd = self._wrap(self.base)
        self.twin_fwd = self._wrap(self.twin) if self.twin_trainable else self.twin
        self.epoch, self.step, self.best_acc, self.history, self.skipped = 0, 0, -1.0, [], 0
        self.partial: dict | None = None  # position inside an interrupted epoch (preemption)
        self._stop_requested = False
        self._eval_loaders: dict = {}

    def _wrap(self, model: nn.Module | None) -> nn.Module | None:
        """DistributedDataParallel around a trained network when several processes run."""
        if model is None or not self.dist.enabled:
            return model
        if self.cfg["train"]["sync_bn"]:  # the fused BN + LIF layers synchronise these too
            model = convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ---- one step ---------------------------------------------------------------------------

    def _loss(self, x, y):
        c, lw = self.cfg, self.cfg["loss"]
        logits = self.base_fwd(x)
        twin_logits = None
        if self.cfg["mode"] == "baseline":
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=lw["label_smoothing"])
        elif c["mode"] == "kd":
            with torch.no_grad():
                teacher = self.teacher(x)
            loss = F.kd_loss(logits, teacher, y, temperature=lw["kd_temperature"], alpha=lw["kd_alpha"],
                             label_smoothing=lw["label_smoothing"])
        else:
            with torch.set_grad_enabled(self.twin_trainable):
                twin_logits = self.twin_fwd(x)
            if c["mode"] == "dml":
                loss = F.dml_loss(logits, twin_logits, y, kl_weight=lw["dml_weight"],
                                  label_smoothing=lw["label_smoothing"])
            else:
                matching = self.epoch >= lw["late_matching_epoch"]
                loss = F.twin_loss(logits, twin_logits, y, mse_weight=lw["mse_weight"] if matching else 0.0,
                                   mse_reduction=lw["mse_reduction"], label_smoothing=lw["label_smoothing"],
                                   detach_twin=not self.twin_trainable)
        if self.rates is not None:
            loss = loss + lw["spike_rate_weight"] * self.rates.pop_mean()
        return loss, logits, twin_logits

    def _optimizers(self):
        return [o for o in (self.opt_base, self.opt_twin) if o is not None]

    def train_epoch(self) -> dict | None:
        """One epoch (or the rest of an interrupted one). Returns its metrics, or None when a stop
        was requested (SIGTERM/SIGINT): then a mid-epoch checkpoint has been written."""
        c, d = self.cfg, self.dist
        self.base.train()
        if self.twin is not None:
            self.twin.train(self.twin_trainable)
        self.train_loader.set_epoch(self.epoch)
        spe, total = len(self.train_loader), len(self.train_loader) * c["train"]["epochs"]
        amp = c["train"]["amp"] and self.device.type == "cuda"
        done = self.partial or {"batch": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.partial = None
        loss_sum, correct, seen = done["loss_sum"], done["correct"], done["seen"]
        start = time.perf_counter() - done["seconds"]
        lr = lr_at(self.step, total, spe, c["optim"]["lr"], c["schedule"])
        batches = enumerate(self.train_loader)
        bar = None
        if c["train"]["progress"] and d.main:
            from tqdm import tqdm

            bar = tqdm(total=spe, initial=done["batch"], desc=f"epoch {self.epoch + 1}/{c['train']['epochs']}",
                       leave=False, dynamic_ncols=True)
        for i, (x, y) in batches:
            if i < done["batch"]:
                continue  # resuming inside the epoch: same order and augmentation, already trained
            if d.enabled:  # every process reads the global batch and trains on its slice
                x, y = x[d.rank::d.world], y[d.rank::d.world]
            x, y = model_input(x, self.device), y.to(self.device)
            lr = lr_at(self.step, total, spe, c["optim"]["lr"], c["schedule"])
            for opt in self._optimizers():
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                loss, logits, _ = self._loss(x, y)
            loss.backward()
            # One device-to-host copy per step for the finite check and the running sums (on a GPU
            # each .item() is a synchronisation). Backward runs before the check, on every rank
            # alike; a skipped step's gradients are discarded by the next zero_grad.
            stats = torch.stack([torch.isfinite(loss.detach()).double(), loss.detach().double(),
                                 (logits.detach().argmax(1) == y).sum().double()]).cpu()
            finite = bool(distributed.all_reduce_host(stats[:1].clone(), d, distributed.dist.ReduceOp.MIN))
            if not finite:
                if c["train"]["nan_policy"] == "stop":
                    raise TrainingError(f"non-finite loss ({stats[1].item()}) at epoch {self.epoch + 1}, step "
                                        f"{self.step}; stopping without writing a checkpoint "
                                        f"(the last good one stays in {self.out / 'checkpoints'})")
                self.skipped += 1
                self.step += 1
                continue
            if c["train"]["grad_clip"]:
                for net in (self.base, self.twin if self.twin_trainable else None):
                    if net is not None:
                        nn.utils.clip_grad_norm_(net.parameters(), c["train"]["grad_clip"])
            for opt in self._optimizers():
                opt.step()
            self.step += 1
            loss_sum += stats[1].item() * len(y)
            correct += int(stats[2].item())
            seen += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{d.world * seen / (time.perf_counter() - start):.0f}")
            stop = torch.tensor([float(self._stop_requested)])
            if bool(distributed.all_reduce_host(stop, d, distributed.dist.ReduceOp.MAX)) and i + 1 < spe:
                self.partial = {"batch": i + 1, "loss_sum": loss_sum, "correct": correct, "seen": seen,
                                "seconds": time.perf_counter() - start}
                if bar is not None:
                    bar.close()
                return None
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        sums = distributed.all_reduce_host(torch.tensor([loss_sum, correct, seen], dtype=torch.float64), d)
        loss_sum, correct, seen = sums.tolist()
        return {"lr": lr, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                "images_per_s": seen / seconds, "epoch_seconds": seconds}

    def evaluate(self, model: nn.Module, split: str | None = None) -> dict:
        """Loss and accuracy of ``model`` on ``split`` (default: val if carved, else test;
        "train_eval": ``train.eval_train_images`` training images, evenly spread, not augmented)."""
        bs, limit = self.cfg["data"]["eval_batch_size"], self.cfg["train"]["limit_eval_batches"]
        split = split or self.eval_split
        if split not in self._eval_loaders:  # built once: a preloaded split is copied to the GPU once
            if split == "train_eval":
                self._eval_loaders[split] = BatchLoader(
                    self._train_eval_set(), bs, shuffle=False, augment=self.data.eval_augment,
                    max_batches=limit, device=self.device, preload=self.preload)
            else:
                self._eval_loaders[split] = self.data.loader(split, bs, max_batches=limit, device=self.device,
                                                             preload=self.preload)
        loader = self._eval_loaders[split]
        return evaluate_model(model, loader, self.device)

    def _train_eval_set(self):
        """A fixed, class-balanced-in-expectation slice of the training split: every k-th image
        (the split is stored class by class, so a prefix would be one class)."""
        if getattr(self, "_train_eval", None) is None:
            n, total = int(self.cfg["train"]["eval_train_images"]), len(self.data.train)
            idx = np.linspace(0, total - 1, num=min(n, total)).round().astype(np.int64)
            self._train_eval = self.data.train.subset(np.unique(idx))
        return self._train_eval

    # ---- checkpoints ------------------------------------------------------------------------

    def state(self) -> tuple[dict, dict]:
        state = {"base": self.base.state_dict(), "opt_base": self.opt_base.state_dict(),
                 "rng": {"torch": torch.get_rng_state()}}
        if self.twin is not None:
            state["twin"] = self.twin.state_dict()
        if self.opt_twin is not None:
            state["opt_twin"] = self.opt_twin.state_dict()
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        meta = {"config": self.cfg, "model_config": self.base.config,
                "twin_config": None if self.twin is None else self.twin.config,
                "epoch": self.epoch, "step": self.step, "best_acc": self.best_acc, "history": self.history,
                "skipped_steps": self.skipped, "partial_epoch": self.partial,
                # train_path="auto"'s measured choices, so a resumed run takes the same paths
                "train_path_choices": [[_jsonable(k), v] for k, v in spike_train.PATH_CHOICES.items()],
                "python_random": _jsonable(random.getstate()),
                "numpy_random": _jsonable(np.random.get_state())}
        return state, meta

    def save(self, tag: str) -> Path | None:
        """Writes a checkpoint (rank 0 only; the others have identical state). The previous
        ``last`` is kept as ``previous`` so a checkpoint damaged after writing still has a fallback."""
        if not self.dist.main:
            return None
        state, meta = self.state()
        folder = self.out / "checkpoints"
        if tag == "last" and (folder / "last.json").is_file():
            for suffix in (".safetensors", ".json"):  # JSON last: it is the completeness marker
                (folder / f"last{suffix}").replace(folder / f"previous{suffix}")
        return checkpoint.save(folder / tag, state, meta)

    def resume(self, path: str | Path) -> None:
        state, meta = checkpoint.load(path)
        if meta.get("model_config") != self.base.config:
            raise checkpoint.CheckpointError(
                f"{path} was written for another architecture: {meta.get('model_config')} != {self.base.config}")
        self.base.load_state_dict(state["base"])
        self.opt_base.load_state_dict(state["opt_base"])
        if self.twin is not None:
            if "twin" not in state:
                raise checkpoint.CheckpointError(f"{path} holds no twin but mode {self.cfg['mode']!r} needs one")
            self.twin.load_state_dict(state["twin"])
        if self.opt_twin is not None:
            self.opt_twin.load_state_dict(state["opt_twin"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        random.setstate(_tupled(meta["python_random"]))
        np.random.set_state(tuple(_tupled(meta["numpy_random"])))
        self.epoch, self.step, self.best_acc = meta["epoch"], meta["step"], meta["best_acc"]
        self.history, self.skipped = meta["history"], meta.get("skipped_steps", 0)
        self.partial = meta.get("partial_epoch")
        for key, path in meta.get("train_path_choices", []):
            spike_train.PATH_CHOICES.setdefault(_tupled(key), path)

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint of this run that loads and verifies (last, then previous); a
        damaged one is reported on stderr and skipped."""
        import sys

        for tag in ("last", "previous"):
            p = self.out / "checkpoints" / f"{tag}.json"
            if not p.is_file():
                continue
            try:
                checkpoint.load(p)
                return p
            except checkpoint.CheckpointError as exc:
                print(f"warning: skipping damaged checkpoint: {exc}", file=sys.stderr)
        return None

    # ---- the run ----------------------------------------------------------------------------

    def request_stop(self, *_args) -> None:
        """Finish the current step, write a resumable checkpoint and return (SIGTERM/SIGINT)."""
        self._stop_requested = True

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def fit(self, resume: str | Path | None = None, stop_after: int | None = None) -> dict:
        """Trains to ``train.epochs``; ``resume`` = a checkpoint path or "auto" (the run's last
        checkpoint, if any). ``stop_after`` ends this call after that many epochs (a time-sliced
        job). On SIGTERM/SIGINT the current step finishes, a checkpoint with the position inside
        the epoch is written and ``fit`` returns ``{"preempted": True}``; ``--resume auto``
        continues exactly. The base is exported only when the run is complete."""
        if resume == "auto":
            resume = self.latest_checkpoint()
        if resume:
            self.resume(resume)
        log = MetricsLog(self.out, tensorboard=True) if self.dist.main else None
        end = self.cfg["train"]["epochs"]
        if stop_after is not None:
            end = min(end, self.epoch + stop_after)
        previous = self._install_signal_handlers()
        try:
            while self.epoch < end:
                metrics = self.train_epoch()
                if metrics is None:
                    self.save("last")
                    return {"preempted": True, "epoch": self.epoch, "batch": self.partial["batch"]}
                row = {"epoch": self.epoch + 1, **metrics}
                if self.epoch == 0 and self.dist.main and train_paths(self.base):
                    print(f"training paths of the spike-input ternary convs (train.train_path="
                          f"{self.cfg['train']['train_path']}): {train_paths(self.base)}", flush=True)
                ev = self.evaluate(self.base)
                row.update(val_loss=ev["loss"], val_acc=ev["acc"])
                if self.twin is not None:
                    tw = self.evaluate(self.twin)
                    row.update(twin_val_loss=tw["loss"], twin_val_acc=tw["acc"])
                if self.cfg["train"]["eval_train_images"]:
                    tr = self.evaluate(self.base, "train_eval")
                    row.update(train_eval_loss=tr["loss"], train_eval_acc=tr["acc"])
                self.epoch += 1
                self.history.append(row)
                if log is not None:
                    log.write(row)
                improved = row["val_acc"] > self.best_acc
                self.best_acc = max(self.best_acc, row["val_acc"])
                self.save("last")
                if improved:
                    self.save("best")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if log is not None:
                log.close()
        if self.epoch >= self.cfg["train"]["epochs"] and self.dist.main:
            self.export_base()
            MetricsLog.plot(self.history, self.out / "curves.png", title=self.cfg["name"])
        return self.history[-1] if self.history else {}

    def export_base(self) -> Path:
        """The deliverable: the base network alone (weights + architecture), no twin/optimiser."""
        return checkpoint.save(self.out / "base", {"base": self.base.state_dict()},
                               {"model_config": self.base.config, "config": self.cfg,
                                "best_acc": self.best_acc, "history": self.history})


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, list)):
        return [_jsonable(v) for v in obj]
    return obj


def _tupled(obj):
    """JSON lists back to the nested tuples that random/numpy RNG states expect."""
    if isinstance(obj, list):
        return tuple(_tupled(v) for v in obj)
    return obj
