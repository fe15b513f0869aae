"""Evaluation of models and checkpoints (shared by the trainer and the CLI)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data import get_dataset
from . import checkpoint


def model_input(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Loader batches → model input: frames come as ``[B, T, ...]`` and models take ``[T, B, ...]``."""
    x = x.to(device, non_blocking=True)
    return x.transpose(0, 1) if x.dim() == 5 else x


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, device: torch.device | str) -> dict:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) over ``loader``."""
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        for x, y in loader:
            x, y = model_input(x, device), y.to(device)
            logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
    finally:
        model.train(was_training)
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "n": seen}


def _data_for(meta: dict, root: str | None):
    d = meta["config"]["data"]
    return get_dataset(d["name"], root or d["root"], val_per_class=d["val_per_class"],
                       val_mode=d["val_mode"], train_per_class=d.get("train_per_class", 0),
                       seed=meta["config"]["seed"], **d["options"])


def evaluate_checkpoint(path: str | Path, split: str | None = None, root: str | None = None,
                        limit: int | None = None) -> dict:
    """Accuracy of a checkpoint's base model on the data it was trained for."""
    from .trainer import load_model

    _, meta = checkpoint.load(path)
    if "config" not in meta:
        raise checkpoint.CheckpointError(f"{path} records no training config (which data to use)")
    model = load_model(path)
    data = _data_for(meta, root)
    split = split or ("val" if data.val is not None else "test")
    loader = data.loader(split, meta["config"]["data"]["eval_batch_size"], max_batches=limit)
    return {"split": split, **evaluate_model(model, loader, "cpu")}


def sample_batch(path: str | Path, batch: int, root: str | None = None) -> torch.Tensor | None:
    """One evaluation batch of the checkpoint's data (None if the checkpoint records no config)."""
    _, meta = checkpoint.load(path)
    if "config" not in meta:
        return None
    data = _data_for(meta, root)
    split = "val" if data.val is not None else "test"
    x, _ = next(iter(data.loader(split, batch)))
    return model_input(x, "cpu")
