"""Spiking network builders (VGG, ResNet, a tiny digits net) and twin construction.

Every model stores the keyword arguments it was built with in ``model.config`` (JSON-friendly),
so a checkpoint can rebuild it and :func:`make_twin` can build a same-architecture twin."""

from .resnet import SpikingResNet
from .twin import build_model, make_twin
from .vgg import VGG_CONFIGS, SpikingVGG

MODELS = {"vgg": SpikingVGG, "resnet": SpikingResNet}

__all__ = ["SpikingVGG", "SpikingResNet", "VGG_CONFIGS", "MODELS", "build_model", "make_twin"]
