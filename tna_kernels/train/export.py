"""Export of the trained base network with its ternary layers in packed format v1.

One safetensors file: for every ternary conv/linear layer ``<name>.words`` (int64 bit-planes) and
``<name>.scale`` (float32 per output channel) instead of its float32 latent weights; every other
parameter and buffer as is; the architecture (``model.config``) and the packed-format version in
the file's metadata. Loading needs no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..models import build_model
from ..nn.ternary import TernaryConv2d, TernaryLinear
from ..ops.ternary import FORMAT_VERSION, PackedTernary

FORMAT = "tna_kernels.packed_model/1"


def _ternary_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (TernaryConv2d, TernaryLinear)) and getattr(m, "ternary", True)}


def export_packed(model: nn.Module, path: str | Path) -> dict:
    """Writes ``model`` to ``path``; returns sizes (file bytes, float32-equivalent bytes)."""
    if not hasattr(model, "config"):
        raise TypeError("export_packed needs a tna_kernels model (with .config)")
    layers = _ternary_layers(model)
    tensors, packed_info = {}, {}
    skip = {f"{n}.weight" for n in layers}
    for key, value in model.state_dict().items():
        if key not in skip:
            tensors[key] = value.detach().cpu().contiguous()
    with torch.no_grad():
        for name, m in layers.items():
            p = m.packed_weight()
            tensors[f"{name}.words"] = p.words.contiguous()
            tensors[f"{name}.scale"] = p.scale.contiguous()
            packed_info[name] = {"K": p.K, "shape": list(m.weight.shape)}
    meta = {"format": FORMAT, "ternary_format_version": str(FORMAT_VERSION),
            "model_config": json.dumps(model.config), "packed_layers": json.dumps(packed_info)}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    fp32 = sum(v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
    return {"file_bytes": path.stat().st_size, "fp32_bytes": fp32, "packed_layers": len(layers)}


def load_packed(path: str | Path) -> nn.Module:
    """Rebuilds the model from a packed export. Ternary layers get ``code × scale`` as their
    latent weights, which the TWN ternariser maps back to the same codes and scales (every
    non-zero |w| equals the scale, above the 0.7·mean|w| threshold)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tna_kernels packed model (format {meta.get('format')!r})")
        if int(meta["ternary_format_version"]) != FORMAT_VERSION:
            raise ValueError(f"{path} uses packed format v{meta['ternary_format_version']}; "
                             f"this build reads v{FORMAT_VERSION}")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = build_model(json.loads(meta["model_config"]))
    state = {}
    for name, info in json.loads(meta["packed_layers"]).items():
        layer = dict(model.named_modules())[name]
        packed = PackedTernary(tensors.pop(f"{name}.words"), tensors.pop(f"{name}.scale"), info["K"])
        codes = packed.codes().to(torch.float32)
        state[f"{name}.weight"] = (codes * packed.scale.view(-1, *[1] * (codes.dim() - 1))).reshape(info["shape"])
        if getattr(layer, "method", "twn") != "twn":
            raise ValueError(f"load_packed restores TWN-ternarised layers exactly; {name} uses {layer.method!r}")
    state.update(tensors)
    model.load_state_dict(state)
    return model
