"""Export of the trained base network with its ternary layers in packed format v1.

One safetensors file: for every ternary conv/linear layer ``<name>.words`` (int64 bit-planes) and
``<name>.scale`` (float32 per output channel) instead of its float32 latent weights; every other
parameter and buffer as is; the architecture (``model.config``) and the packed-format version in
the file's metadata, with a SHA-256 of the tensors so that a damaged file is refused rather than
loaded with altered weights. Loading needs no pickle; every problem with the file raises
:class:`PackedModelError` naming it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..models import build_model
from ..nn.ternary import TernaryConv2d, TernaryLinear
from ..ops.ternary import FORMAT_VERSION, PackedTernary

FORMAT = "tna_kernels.packed_model/1"


class PackedModelError(ValueError):
    """A packed model file that cannot be loaded: not a safetensors file, truncated or corrupted,
    another format version, or tensors that do not fit the recorded architecture."""


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


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
            "model_config": json.dumps(model.config), "packed_layers": json.dumps(packed_info),
            "tensors_sha256": _tensors_sha256(tensors)}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    fp32 = sum(v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
    return {"file_bytes": path.stat().st_size, "fp32_bytes": fp32, "packed_layers": len(layers)}


def load_packed(path: str | Path) -> nn.Module:
    """Rebuilds the model from a packed export. Ternary layers get ``code × scale`` as their
    latent weights, which the TWN ternariser maps back to the same codes and scales (every
    non-zero |w| equals the scale, above the 0.7·mean|w| threshold).

    Raises :class:`PackedModelError` naming the file when it is not a packed model, is truncated
    or corrupted (checksum; files exported before the checksum existed are checked only for
    structure), has another format version, or holds tensors that do not fit its architecture."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error type for malformed files
        raise PackedModelError(f"{path} is not a readable safetensors file: {exc}") from exc
    fmt = meta.get("format")
    if fmt != FORMAT:
        if fmt is not None and fmt.startswith(FORMAT.rsplit("/", 1)[0] + "/"):
            raise PackedModelError(f"{path} is in packed-model format {fmt!r}; this build reads {FORMAT!r}")
        raise PackedModelError(f"{path} is not a tna_kernels packed model (format {fmt!r})")
    version = meta.get("ternary_format_version")
    if version != str(FORMAT_VERSION):
        raise PackedModelError(f"{path} uses packed format v{version}; this build reads v{FORMAT_VERSION}")
    if "tensors_sha256" in meta and meta["tensors_sha256"] != _tensors_sha256(tensors):
        raise PackedModelError(f"{path}: the tensors do not match the file's checksum: corrupted")
    try:
        config, layers = json.loads(meta["model_config"]), json.loads(meta["packed_layers"])
    except (KeyError, ValueError) as exc:
        raise PackedModelError(f"{path} has no readable model_config / packed_layers metadata: {exc}") from exc
    try:
        model = build_model(config)
    except Exception as exc:  # a config this build cannot construct: TypeError, KeyError, ValueError, ...
        raise PackedModelError(f"{path} records an architecture this build cannot build: {exc!r}") from exc
    modules = dict(model.named_modules())
    state, name = {}, None
    try:
        for name, info in layers.items():
            layer = modules.get(name)
            if not isinstance(layer, (TernaryConv2d, TernaryLinear)):
                raise PackedModelError(f"{path}: packed layer {name!r} is not a ternary layer of the recorded "
                                       "architecture (a file for another architecture?)")
            if getattr(layer, "method", "twn") != "twn":
                raise PackedModelError(f"load_packed restores TWN-ternarised layers exactly; {name} in {path} "
                                       f"uses {layer.method!r}")
            packed = PackedTernary(tensors.pop(f"{name}.words"), tensors.pop(f"{name}.scale"), info["K"])
            codes = packed.codes().to(torch.float32)
            w = codes * packed.scale.view(-1, *[1] * (codes.dim() - 1))
            state[f"{name}.weight"] = w.reshape(info["shape"])
    except PackedModelError:
        raise
    except KeyError as exc:
        raise PackedModelError(f"{path} lacks the packed tensor or record {exc}") from exc
    except (TypeError, ValueError, RuntimeError, AttributeError) as exc:  # bad words, shapes, K
        raise PackedModelError(f"{path}: the packed layer records are damaged (at {name!r}): {exc}") from exc
    state.update(tensors)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise PackedModelError(f"{path}: the tensors do not fit the recorded architecture "
                               f"(a file for another architecture, or missing tensors): {exc}") from exc
    return model
