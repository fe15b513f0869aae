"""Export of a trained spiking VGG to NIR (the Neuromorphic Intermediate Representation,
``pip install nir``), readable back with ``nir.read``.

Mapping (one NIR graph step = one time step; the image is held at the input for all T steps):
- ternary conv + eval batch norm → ``nir.Conv2d`` with weight ``code · scale'`` and bias ``bias'``
  (BN folded, as in the packed model); full-precision conv + BN → ``nir.Conv2d`` with BN folded;
- LIF → ``nir.LIF``: Euler step dt = 1 of ``tau dv/dt = (v_leak − v) + r·I`` gives SpikingJelly's
  charge with ``v_leak = v_reset`` and ``r = 1`` (decay_input) or ``r = tau``; hard reset to
  ``v_reset``; ``v_threshold`` as is. Soft reset has no NIR LIF equivalent and is refused;
- 2×2 max-pooling of binary spikes = ``nir.SumPool2d`` then ``nir.Threshold(0.5)`` (sum ≥ 1);
- readout: ``nir.Flatten`` + ``nir.Affine``; the model's logits are the time average of the
  Affine outputs (the readout is linear, so averaging before or after it is the same).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

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


def _lif_node(nir, layer: TernaryLIFConv2d, shape: tuple[int, ...]):
    kw = layer.neuron.kwargs
    if kw.get("v_reset", 0.0) is None:
        raise ValueError("NIR's LIF has a hard reset only; soft-reset (v_reset=None) layers cannot be exported")
    if kw.get("beta") is not None:
        tau, decay_input = 1.0 / (1.0 - kw["beta"]), False
    else:
        tau = 2.0 if kw.get("tau") is None else kw["tau"]
        decay_input = True if kw.get("decay_input") is None else kw["decay_input"]
    full = lambda v: np.full(shape, v, dtype=np.float32)  # noqa: E731
    v_reset = float(kw.get("v_reset", 0.0))
    return nir.LIF(tau=full(tau), r=full(1.0 if decay_input else tau), v_leak=full(v_reset),
                   v_threshold=full(kw.get("v_threshold", 1.0)), v_reset=full(v_reset))


def to_nir(model: nn.Module):
    """The NIR graph of a trained :class:`~tna_kernels.models.SpikingVGG` (eval statistics)."""
    import nir

    if getattr(model, "config", {}).get("name") != "vgg":
        raise ValueError("NIR export supports the spiking VGG family")
    model = model.eval()
    c, size = model.config["in_channels"], model.config["input_size"]
    nodes = {"input": nir.Input(input_type={"input": np.array([c, size, size])})}
    edges, prev, h = [], "input", size
    for i, layer in enumerate(model.features):
        if isinstance(layer, SeqToANN) and isinstance(layer.body, nn.MaxPool2d):
            k = layer.body.kernel_size
            nodes[f"pool{i}"] = nir.SumPool2d(kernel_size=np.array([k, k]), stride=np.array([k, k]),
                                              padding=np.array([0, 0]))
            nodes[f"pool{i}_max"] = nir.Threshold(threshold=np.full((c, h // k, h // k), 0.5, np.float32))
            edges += [(prev, f"pool{i}"), (f"pool{i}", f"pool{i}_max")]
            prev, h = f"pool{i}_max", h // k
            continue
        if not isinstance(layer, TernaryLIFConv2d) or layer.neuron is None:
            raise ValueError(f"features.{i} ({type(layer).__name__}) has no NIR mapping")
        w, b = _folded_conv(layer)
        nodes[f"conv{i}"] = nir.Conv2d(input_shape=(h, h), weight=w, stride=layer.stride, padding=layer.padding,
                                       dilation=layer.dilation, groups=1, bias=b)
        h = (h + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1) // layer.stride[0] + 1
        c = layer.out_channels
        nodes[f"lif{i}"] = _lif_node(nir, layer, (c, h, h))
        edges += [(prev, f"conv{i}"), (f"conv{i}", f"lif{i}")]
        prev = f"lif{i}"
    head = model.classifier
    with torch.no_grad():
        if hasattr(head, "ternary_weight"):
            hw = head.ternary_weight().detach().numpy()
        else:
            hw = head.weight.detach().numpy()
        hb = head.bias.detach().numpy() if head.bias is not None else np.zeros(hw.shape[0], np.float32)
    nodes["flatten"] = nir.Flatten(input_type={"input": np.array([c, h, h])}, start_dim=0)
    nodes["readout"] = nir.Affine(weight=hw.astype(np.float32), bias=hb.astype(np.float32))
    nodes["output"] = nir.Output(output_type={"output": np.array([hw.shape[0]])})
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
