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
    ``.safetensors``) atomically. Returns the JSON path.

    Both files are written under temporary names first; a failure before they are moved into
    place (a full disk, an exception while serialising) leaves an existing checkpoint at ``path``
    untouched and no temporary files behind. The previous weights are kept (hard link) until the
    new JSON is in place, and put back if that last move fails."""
    path = Path(path).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    rest = split_tensors(state, "s", tensors)
    weights = path.with_suffix(".safetensors")
    tmp_w = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
    tmp_j = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old_w = weights.with_name(f".{weights.name}.{os.getpid()}.old")
    try:
        save_file(tensors, str(tmp_w))
        doc = {"format": FORMAT, "tensors_sha256": _sha256(tmp_w), "meta": meta or {}, "state": rest}
        tmp_j.write_text(json.dumps(doc, indent=1))
        kept = _link(weights, old_w)
        os.replace(tmp_w, weights)
        try:
            os.replace(tmp_j, path)
        except BaseException:
            if kept:  # the old JSON is still in place: give it back its weights
                os.replace(old_w, weights)
            raise
    finally:
        for p in (tmp_w, tmp_j, old_w):
            p.unlink(missing_ok=True)
    return path


def _link(src: Path, dst: Path) -> bool:
    """Hard-links ``src`` to ``dst`` (replacing ``dst``); False when ``src`` does not exist or the
    file system has no hard links."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        return False
    return True


def load(path: str | Path) -> tuple[dict, dict]:
    """Returns ``(state, meta)``; raises :class:`CheckpointError` naming the file on any problem."""
    path = Path(path)
    path = path.with_suffix(".json") if path.suffix in (".safetensors", "") else path
    weights = path.with_suffix(".safetensors")
    if not path.is_file() or not weights.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete or missing (needs {path.name} and {weights.name})")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON (JSONDecodeError) or bad UTF-8
        raise CheckpointError(f"checkpoint {path} has an unreadable JSON file: {exc}") from exc
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith(FORMAT.rsplit("/", 1)[0] + "/"):
            raise CheckpointError(f"{path} is in checkpoint format {fmt!r}; this build reads {FORMAT!r}")
        raise CheckpointError(f"{path} is not a tna_kernels checkpoint (format {fmt!r})")
    if not isinstance(doc.get("state"), dict) or not isinstance(doc.get("meta", {}), dict):
        raise CheckpointError(f"{path} is damaged: its 'state' or 'meta' record is missing or not a mapping")
    if _sha256(weights) != doc.get("tensors_sha256"):
        raise CheckpointError(f"{weights} does not match the checksum in {path.name}: truncated or corrupted")
    try:
        tensors = load_file(str(weights))  # safetensors: a header + raw bytes, never executes code
    except Exception as exc:  # safetensors raises its own error type for malformed files
        raise CheckpointError(f"{weights} is not a valid safetensors file: {exc}") from exc
    try:
        state = join_tensors(doc["state"], tensors)
    except KeyError as exc:
        raise CheckpointError(f"{path} refers to tensor {exc} that {weights.name} does not hold") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} is damaged: malformed state record ({exc})") from exc
    return state, doc.get("meta", {})
