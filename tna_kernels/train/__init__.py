"""Training layer: TNA / KD / DML / baseline trainer, configs, checkpoints, metrics.
Depends on the kernel layers; they never import it."""

from .checkpoint import CheckpointError
from .config import DEFAULTS, ConfigError, load_config
from .export import PackedModelError
from .trainer import Trainer, TrainingError, load_model

__all__ = ["Trainer", "TrainingError", "load_config", "ConfigError", "DEFAULTS", "CheckpointError",
           "PackedModelError", "load_model"]
