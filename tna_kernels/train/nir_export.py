"""Export of a trained spiking VGG or ResNet to NIR (the Neuromorphic Intermediate Representation,
``pip install nir``), readable back with ``nir.read``.

Mapping (one NIR graph step = one time step; the image is held at the input for all T steps):
- ternary conv + eval batch norm → ``nir.Conv2d`` with weight ``code · scale'`` and bias ``bias'``
  (BN folded, as in the packed model); full-precision conv + BN → ``nir.Conv2d`` with BN folded;
- LIF → ``nir.LIF``: Euler step dt = 1 of ``tau dv/dt = (v_leak − v) + r·I`` gives SpikingJelly's
  charge with ``v_leak = v_reset`` and ``r = 1`` (decay_input) or ``r = tau``; hard reset to
  ``v_reset``; ``v_threshold`` as is. Soft reset has no NIR LIF equivalent and is refused;
- VGG 2×2 max-pooling of binary spikes = ``nir.SumPool2d`` then ``nir.Threshold(0.5)`` (sum ≥ 1);
- ResNet residual block: NIR sums the inputs of a node that several edges enter, so the second
  conv (BN folded) and the shortcut (a 1×1 conv with BN folded, or the block's input spikes
  themselves for an identity shortcut) both feed the block's output ``nir.LIF``: its current is
  ``conv2 + shortcut``, as in the model. Node names are the module paths with "." → "_"
  (``stem``, ``stem_neuron``, ``blocks_0_conv1``, ``blocks_0_conv1_neuron``, ``blocks_0_conv2``,
  ``blocks_0_shortcut``, ``blocks_0_neuron``, ...); the global average pool is ``nir.AvgPool2d``
  over the whole feature map;
- readout: ``nir.Flatten`` + ``nir.Affine``; the model's logits are the time average of the
  Affine outputs (the readout is linear, so averaging before or after it is the same).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.resnet import BasicBlock
from ..nn.lif import LIF
from ..nn.spiking import SeqToANN, TernaryLIFConv2d


def _folded_conv(layer: TernaryLIFConv2d) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        if layer.ternary:
            p = layer.folded_packed() if layer.bn is not None else layer.packed_weight()
            w = p.codes().float() * p.scale.view(-1, 1, 1, 1)
            b = p.bias if p.bias is not None else torch.zeros(w.shape[0])
        else:
            w, b = layer.weight.detach().float(), (layer.bias.detach().float() if layer.bias is not None
                                                    else torch.zeros(layer.out_channels))
            if layer.bn is not None:
                bn = layer.bn
                a = torch.rsqrt(bn.running_var + bn.eps) * (bn.weight if bn.affine else 1)
                w = w * a.view(-1, 1, 1, 1)
                b = (b - bn.running_mean) * a + (bn.bias if bn.affine else 0)
    return w.numpy().astype(np.float32), b.detach().numpy().astype(np.float32)


def _conv_node(nir, layer: TernaryLIFConv2d, hw: tuple[int, int]):
    """The ``nir.Conv2d`` of ``layer`` (BN folded) on an ``hw`` input, and its output size."""
    w, b = _folded_conv(layer)
    node = nir.Conv2d(input_shape=hw, weight=w, stride=layer.stride, padding=layer.padding,
                      dilation=layer.dilation, groups=layer.groups, bias=b)
    out = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                zip(hw, layer.padding, layer.dilation, layer.kernel_size, layer.stride, strict=True))
    return node, out


def _lif_node(nir, neuron: LIF, shape: tuple[int, ...], where: str):
    kw = neuron.kwargs
    if kw.get("v_reset", 0.0) is None:
        raise ValueError(f"{where}: NIR's LIF has a hard reset only; soft-reset (v_reset=None) layers cannot be "
                         "exported")
    if kw.get("beta") is not None:
        tau, decay_input = 1.0 / (1.0 - kw["beta"]), False
    else:
        tau = 2.0 if kw.get("tau") is None else kw["tau"]
        decay_input = True if kw.get("decay_input") is None else kw["decay_input"]
    full = lambda v: np.full(shape, v, dtype=np.float32)  # noqa: E731
    v_reset = float(kw.get("v_reset", 0.0))
    return nir.LIF(tau=full(tau), r=full(1.0 if decay_input else tau), v_leak=full(v_reset),
                   v_threshold=full(kw.get("v_threshold", 1.0)), v_reset=full(v_reset))


def _spiking_conv(layer: nn.Module, where: str, lif: bool) -> TernaryLIFConv2d:
    """``layer`` checked to be a TernaryLIFConv2d with (``lif``) or without its own neuron."""
    if not isinstance(layer, TernaryLIFConv2d) or (layer.neuron is not None) != lif:
        kind = "with" if lif else "without"
        raise ValueError(f"{where} ({type(layer).__name__}) has no NIR mapping: expected a TernaryLIFConv2d "
                         f"{kind} a neuron")
    return layer


def _vgg_features(nir, model: nn.Module, nodes: dict, edges: list) -> tuple[str, int, tuple[int, int]]:
    c, size = model.config["in_channels"], model.config["input_size"]
    prev, hw = "input", (size, size)
    for i, layer in enumerate(model.features):
        if isinstance(layer, SeqToANN) and isinstance(layer.body, nn.MaxPool2d):
            k = layer.body.kernel_size
            hw = (hw[0] // k, hw[1] // k)
            nodes[f"pool{i}"] = nir.SumPool2d(kernel_size=np.array([k, k]), stride=np.array([k, k]),
                                              padding=np.array([0, 0]))
            nodes[f"pool{i}_max"] = nir.Threshold(threshold=np.full((c, *hw), 0.5, np.float32))
            edges += [(prev, f"pool{i}"), (f"pool{i}", f"pool{i}_max")]
            prev = f"pool{i}_max"
            continue
        layer = _spiking_conv(layer, f"features.{i}", lif=True)
        nodes[f"conv{i}"], hw = _conv_node(nir, layer, hw)
        c = layer.out_channels
        nodes[f"lif{i}"] = _lif_node(nir, layer.neuron, (c, *hw), f"features.{i}")
        edges += [(prev, f"conv{i}"), (f"conv{i}", f"lif{i}")]
        prev = f"lif{i}"
    return prev, c, hw


def _resnet_features(nir, model: nn.Module, nodes: dict, edges: list) -> tuple[str, int, tuple[int, int]]:
    size = model.config["input_size"]

    def conv(path: str, layer: nn.Module, src: str, hw: tuple[int, int], lif: bool):
        """Adds the conv node ``path`` (and its LIF ``path_neuron``) fed by ``src``; returns the last
        node's name and its output size."""
        layer = _spiking_conv(layer, path, lif)
        name = path.replace(".", "_")
        nodes[name], hw = _conv_node(nir, layer, hw)
        edges.append((src, name))
        if lif:
            nodes[f"{name}_neuron"] = _lif_node(nir, layer.neuron, (layer.out_channels, *hw), f"{path}.neuron")
            edges.append((name, f"{name}_neuron"))
            name = f"{name}_neuron"
        return name, hw

    prev, hw = conv("stem", model.stem, "input", (size, size), lif=True)
    c = model.stem.out_channels
    for i, block in enumerate(model.blocks):
        path = f"blocks.{i}"
        if not isinstance(block, BasicBlock) or not isinstance(block.neuron, LIF):
            raise ValueError(f"{path} ({type(block).__name__}) has no NIR mapping: expected a BasicBlock")
        mid, mid_hw = conv(f"{path}.conv1", block.conv1, prev, hw, lif=True)
        y, out_hw = conv(f"{path}.conv2", block.conv2, mid, mid_hw, lif=False)
        if block.shortcut is None:
            skip = prev  # identity: the block's input spikes enter its neuron directly
        else:
            skip, _ = conv(f"{path}.shortcut", block.shortcut, prev, hw, lif=False)
        c, hw, name = block.conv2.out_channels, out_hw, f"{path}.neuron".replace(".", "_")
        nodes[name] = _lif_node(nir, block.neuron, (c, *hw), f"{path}.neuron")
        edges += [(y, name), (skip, name)]  # NIR sums a node's inputs: current = conv2 + shortcut
        prev = name
    pool = model.pool
    if not (isinstance(pool, SeqToANN) and isinstance(pool.body, nn.AdaptiveAvgPool2d)
            and pool.body.output_size in (1, (1, 1))):
        raise ValueError(f"pool ({type(pool).__name__}) has no NIR mapping: expected SeqToANN(AdaptiveAvgPool2d(1))")
    nodes["pool"] = nir.AvgPool2d(kernel_size=np.array(hw), stride=np.array(hw), padding=np.array([0, 0]))
    edges.append((prev, "pool"))
    return "pool", c, (1, 1)


_FEATURES = {"vgg": _vgg_features, "resnet": _resnet_features}


def to_nir(model: nn.Module):
    """The NIR graph of a trained :class:`~tna_kernels.models.SpikingVGG` or
    :class:`~tna_kernels.models.SpikingResNet` (eval statistics)."""
    import nir

    family = getattr(model, "config", {}).get("name")
    if family not in _FEATURES:
        raise ValueError(f"NIR export supports the spiking VGG and ResNet families (tna_kernels.models), got "
                         f"{type(model).__name__} with config name {family!r}")
    model = model.eval()
    c, size = model.config["in_channels"], model.config["input_size"]
    nodes = {"input": nir.Input(input_type={"input": np.array([c, size, size])})}
    edges = []
    prev, c, hw = _FEATURES[family](nir, model, nodes, edges)
    head = model.classifier
    with torch.no_grad():
        w = (head.ternary_weight() if hasattr(head, "ternary_weight") else head.weight).detach().numpy()
        b = head.bias.detach().numpy() if head.bias is not None else np.zeros(w.shape[0], np.float32)
    nodes["flatten"] = nir.Flatten(input_type={"input": np.array([c, *hw])}, start_dim=0)
    nodes["readout"] = nir.Affine(weight=w.astype(np.float32), bias=b.astype(np.float32))
    nodes["output"] = nir.Output(output_type={"output": np.array([w.shape[0]])})
    edges += [(prev, "flatten"), ("flatten", "readout"), ("readout", "output")]
    meta = {"producer": "tna_kernels", "T": model.T, "readout": "time-average of the readout output",
            "model_config": str(model.config)}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def export_nir(model: nn.Module, path: str | Path) -> Path:
    """Writes the NIR graph of ``model`` to ``path`` (HDF5, via ``nir.write``)."""
    try:
        import nir
    except ImportError as exc:
        raise ImportError("NIR export needs the nir package: pip install 'tna_kernels[nir]'") from exc
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    nir.write(tmp, to_nir(model))
    tmp.replace(path)
    return path
