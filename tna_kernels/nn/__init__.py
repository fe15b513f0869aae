"""Drop-in modules. Neuron state is never kept between forward calls unless you pass it."""

from .lif import LIF
from .loss import DMLLoss, KDLoss, TwinLoss
from .packed import PackedConv2d, PackedLIFConv2d, lif_pack, or_pool2d, pack
from .spiking import (
    MeanOverTime,
    SeqToANN,
    SpikeMaxPool2d,
    TernaryLIFConv2d,
    TernaryLIFLinear,
    firing_rates,
    fold_time,
    set_recompute,
    set_train_path,
    spiking_layers,
    train_paths,
    unfold_time,
)
from .ternary import PackedTernaryConv2d, PackedTernaryLinear, TernaryConv2d, TernaryLinear

__all__ = ["LIF", "TernaryLinear", "TernaryConv2d", "PackedTernaryLinear", "PackedTernaryConv2d",
           "TernaryLIFConv2d", "TernaryLIFLinear", "SeqToANN", "SpikeMaxPool2d", "MeanOverTime", "fold_time",
           "unfold_time", "spiking_layers", "set_recompute", "set_train_path", "train_paths", "firing_rates",
           "TwinLoss", "KDLoss", "DMLLoss",
           "PackedConv2d", "PackedLIFConv2d", "lif_pack", "or_pool2d", "pack"]
