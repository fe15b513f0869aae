"""Drop-in modules. Neuron state is never kept between forward calls unless you pass it."""

from .lif import LIF
from .loss import DMLLoss, KDLoss, TwinLoss

__all__ = ["LIF", "TwinLoss", "KDLoss", "DMLLoss"]
