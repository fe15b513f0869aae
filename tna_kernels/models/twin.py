"""Building models from their config, and same-architecture twins for TNA."""

import copy

import torch
from torch import nn


def build_model(config: dict) -> nn.Module:
    """Rebuilds a model from ``model.config`` (e.g. read from a checkpoint's metadata)."""
    from . import MODELS

    config = copy.deepcopy(config)
    name = config.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"config['name'] must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**config)


def make_twin(model: nn.Module, seed: int, precision: str | None = None,
              width_mult: float | None = None) -> nn.Module:
    """A twin of ``model``: same architecture, a different random initialisation (``seed``).

    precision: None (same as the model), "fp" (full-precision weights everywhere the model has
    ternary ones) or "ternary". width_mult: optional channel multiplier for the twin.
    The global RNG state is left untouched."""
    if not hasattr(model, "config"):
        raise TypeError(f"make_twin needs a tna_kernels model with a .config, got {type(model).__name__}")
    if precision not in (None, "fp", "ternary"):
        raise ValueError(f"precision must be None, 'fp' or 'ternary', got {precision!r}")
    config = copy.deepcopy(model.config)
    if precision is not None:
        config["ternary"] = precision == "ternary"
    if width_mult is not None:
        config["width_mult"] = width_mult
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = build_model(config)
    return twin.to(next(model.parameters()).device)
