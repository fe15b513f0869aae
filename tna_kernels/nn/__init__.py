"""Drop-in modules. Neuron state is never kept between forward calls unless you pass it."""

from .lif import LIF
from .ternary import PackedTernaryConv2d, PackedTernaryLinear, TernaryConv2d, TernaryLinear

__all__ = ["LIF", "TernaryLinear", "TernaryConv2d", "PackedTernaryLinear", "PackedTernaryConv2d"]
