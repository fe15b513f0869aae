"""Checkpoints without pickle: every tensor (weights, optimiser buffers, RNG states) in one
safetensors file, everything else in a JSON file next to it that also records the tensors' SHA-256.

Both files are written to temporary names and moved into place with ``os.replace`` (JSON last, so
a checkpoint whose JSON exists is complete); loading verifies the checksum, so a truncated or
corrupted file is reported instead of half-loaded."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT = "tna_kernels.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupted or for another model."""


def split_tensors(obj, prefix: str, tensors: dict):
    """Replaces every tensor inside nested dicts/lists by ``{"__tensor__": key}``, collecting the
    tensors into ``tensors``; returns the JSON-ready rest."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[str(k)] = split_tensors(v, f"{prefix}.{k}", tensors)
        if any(not isinstance(k, str) for k in obj):  # optimiser state is keyed by int
            out = {"__intkeys__": out}
        return out
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def join_tensors(obj, tensors: dict):
    """Inverse of :func:`split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__intkeys__"}:
            return {int(k): join_tensors(v, tensors) for k, v in obj["__intkeys__"].items()}
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(path: str | Path, state: dict, meta: dict | None = None) -> Path:
    """Writes ``state`` (nested dicts/lists of tensors and JSON values) to ``path`` (``.json`` +
    ``.safetensors``) atomically. Returns the JSON path."""
    path = Path(path).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    rest = split_tensors(state, "s", tensors)
    weights = path.with_suffix(".safetensors")
    tmp_w = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
    tmp_j = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp_w))
    doc = {"format": FORMAT, "tensors_sha256": _sha256(tmp_w), "meta": meta or {}, "state": rest}
    tmp_j.write_text(json.dumps(doc, indent=1))
    os.replace(tmp_w, weights)
    os.replace(tmp_j, path)
    return path


def load(path: str | Path) -> tuple[dict, dict]:
    """Returns ``(state, meta)``; raises :class:`CheckpointError` naming the file on any problem."""
    path = Path(path)
    path = path.with_suffix(".json") if path.suffix in (".safetensors", "") else path
    weights = path.with_suffix(".safetensors")
    if not path.is_file() or not weights.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete or missing (needs {path.name} and {weights.name})")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unreadable JSON file: {exc}") from exc
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tna_kernels checkpoint (format {doc.get('format')!r})")
    if _sha256(weights) != doc.get("tensors_sha256"):
        raise CheckpointError(f"{weights} does not match the checksum in {path.name}: truncated or corrupted")
    try:
        tensors = load_file(str(weights))  # safetensors: a header + raw bytes, never executes code
    except Exception as exc:  # safetensors raises its own error type for malformed files
        raise CheckpointError(f"{weights} is not a valid safetensors file: {exc}") from exc
    return join_tensors(doc["state"], tensors), doc.get("meta", {})
