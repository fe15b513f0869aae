"""Drop-in modules. Neuron state is never kept between forward calls unless you pass it."""

from .lif import LIF

__all__ = ["LIF"]
