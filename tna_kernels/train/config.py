"""Run configuration: YAML files with ``key=value`` overrides, checked against the defaults below
(an unknown key is an error, so a typo never silently falls back to a default)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

DEFAULTS: dict = {
    "name": "run",
    "seed": 0,
    "mode": "tna",  # baseline | tna | kd | dml
    "device": "auto",  # auto | cpu | cuda
    "out_dir": "runs",  # the run writes into <out_dir>/<name>
    "data": {
        "name": "digits",
        "root": None,
        "batch_size": 64,
        "eval_batch_size": 256,
        "val_per_class": 0,
        "val_mode": "random",
        "train_per_class": 0,  # > 0: only the first N training images of each class (a fixed subset)
        "augment": True,
        # where batches are gathered and augmented: "auto" = on the GPU when training on CUDA and the
        # dataset takes at most 4 GiB there (CIFAR-10: 150 MB), else on the CPU (each batch copied over)
        "on_device": "auto",
        "download": False,
        "options": {},  # dataset-specific (CIFAR10-DVS: frames_number, split_by, size; CIFAR trees: skip_bad_images)
    },
    "model": {
        "name": "vgg",
        "arch": "digits",
        "T": 4,
        "ternary": True,
        "first_layer_fp": True,
        "last_layer_fp": False,
        "width_mult": 1.0,
        "method": "twn",
        "neuron": {},
        "bn": True,
    },
    "twin": {  # the second network of tna / dml
        "precision": None,  # None = as the base; "fp" or "ternary"
        "width_mult": None,
        "seed_offset": 1000,
        "pretrained": None,  # checkpoint path: start the twin from it
        "frozen": False,  # a frozen pretrained twin = offline logit matching
    },
    "loss": {
        "mse_weight": 0.005,
        "mse_reduction": "sum_over_batch",  # the authors' convention; "mean" = F.mse_loss
        "late_matching_epoch": 0,  # the MSE term is on from this epoch
        "label_smoothing": 0.0,
        "kd_temperature": 4.0,
        "kd_alpha": 0.9,
        "teacher": None,  # kd: checkpoint of the teacher (any tna_kernels model)
        "dml_weight": 1.0,
        "spike_rate_weight": 0.0,  # weight x mean firing rate of every spiking layer
    },
    "optim": {
        "name": "sgd",  # sgd | adamw
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,  # not applied to BN parameters and biases
        "betas": [0.9, 0.999],
    },
    "schedule": {
        "name": "cosine",  # cosine | step | constant
        "warmup_epochs": 0.0,
        "step_epochs": 30,
        "gamma": 0.1,
        "min_lr": 0.0,
    },
    "train": {
        "epochs": 10,
        "grad_clip": None,
        "amp": False,  # bf16 autocast (CUDA)
        "limit_batches": None,  # cap on training batches per epoch (CPU smoke runs)
        "limit_eval_batches": None,
        # > 0: after each epoch also evaluate on this many training images (evenly spread, no
        # augmentation), so the train-validation gap is measured like validation is
        "eval_train_images": 0,
        "nan_policy": "stop",  # stop | skip: what a non-finite loss does
        "progress": True,
        "sync_bn": False,  # batch-norm statistics over all processes' batches (any backend)
        "recompute": True,  # recompute BN, LIF membrane and max-pool in backward (less memory, slower)
        # spike-input ternary convs: "auto" (measured per layer and spike density), "spike" (popcount
        # forward, event-driven weight gradient) or "dense" (dense QAT)
        "train_path": "auto",
        # training on a CPU: keep freed memory in the process instead of page-faulting each step's
        # buffers in again (glibc mallopt, process-wide; tna_kernels.malloc.tune_malloc)
        "tune_malloc": True,
    },
}

MODES = ("baseline", "tna", "kd", "dml")


class ConfigError(ValueError):
    """A configuration file or override that cannot be used as written."""


def _merge(base: dict, update: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {where!r}; known keys here: {sorted(base)}")
        free_form = key in ("neuron", "options")  # passed through to the model / dataset
        if isinstance(base[key], dict) and not free_form:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, where + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(cfg: dict, dotted: str, value) -> dict:
    update: dict = {}
    node = update
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return update


def parse_override(text: str) -> tuple[str, object]:
    """``"optim.lr=0.05"`` → ``("optim.lr", 0.05)`` (values parsed as YAML scalars)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.lr=0.05)")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Defaults ← YAML file ← ``key=value`` overrides, validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        cfg = _merge(cfg, loaded)
    for text in overrides or []:
        key, value = parse_override(text)
        cfg = _merge(cfg, _set_dotted(cfg, key, value))
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    if cfg["mode"] not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {cfg['mode']!r}")
    if cfg["mode"] == "kd" and not cfg["loss"]["teacher"]:
        raise ConfigError("mode 'kd' needs loss.teacher: the checkpoint of a trained teacher")
    if cfg["twin"]["frozen"] and not cfg["twin"]["pretrained"]:
        raise ConfigError("twin.frozen needs twin.pretrained (a frozen random twin teaches nothing)")
    if cfg["optim"]["name"] not in ("sgd", "adamw"):
        raise ConfigError(f"optim.name must be 'sgd' or 'adamw', got {cfg['optim']['name']!r}")
    if cfg["schedule"]["name"] not in ("cosine", "step", "constant"):
        raise ConfigError(f"schedule.name must be cosine, step or constant, got {cfg['schedule']['name']!r}")
    if cfg["train"]["train_path"] not in ("auto", "spike", "dense"):
        raise ConfigError(f"train.train_path must be auto, spike or dense, got {cfg['train']['train_path']!r}")
    if not isinstance(cfg["train"]["tune_malloc"], bool):
        raise ConfigError(f"train.tune_malloc must be true or false, got {cfg['train']['tune_malloc']!r}")
    if cfg["train"]["nan_policy"] not in ("stop", "skip"):
        raise ConfigError(f"train.nan_policy must be 'stop' or 'skip', got {cfg['train']['nan_policy']!r}")
    for key in ("epochs",):
        if not isinstance(cfg["train"][key], int) or cfg["train"][key] < 1:
            raise ConfigError(f"train.{key} must be a positive int, got {cfg['train'][key]!r}")
    if cfg["loss"]["mse_reduction"] not in ("mean", "sum_over_batch"):
        raise ConfigError("loss.mse_reduction must be 'mean' or 'sum_over_batch'")
