"""Shared pieces of the data layer: in-memory datasets, splits, the batched loader and the cache.

Datasets are held as whole tensors (uint8 images or float16 event frames) because every dataset
here fits in memory, and indexing one big tensor per batch is far faster than a per-sample
``Dataset.__getitem__`` + collate.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .augment import Augment

__all__ = [
    "ArrayDataset",
    "DataSplits",
    "BatchLoader",
    "default_cache_dir",
    "split_per_class",
    "DatasetNotFoundError",
    "CorruptFileError",
]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for; the message says where to put them."""


class CorruptFileError(ValueError):
    """A data file that is there but cannot be read: truncated, corrupted or not in the expected
    format. The message names the file."""


@dataclass
class ArrayDataset:
    """A labelled dataset held as two tensors.

    ``data``: ``[N, C, H, W]`` uint8 images, or ``[N, T, C, H, W]`` event frames (float16/float32).
    ``targets``: ``[N]`` int64 class indices. ``classes``: class names, index = label.
    """

    data: torch.Tensor
    targets: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.data.shape[0] != self.targets.shape[0]:
            raise ValueError(f"data has {self.data.shape[0]} samples but targets has {self.targets.shape[0]}")
        if self.targets.dtype != torch.int64:
            self.targets = self.targets.long()

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, i):
        return self.data[i], self.targets[i]

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> ArrayDataset:
        """A new dataset holding the samples at ``indices`` (copied, in that order)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ArrayDataset(self.data[idx], self.targets[idx], list(self.classes))

    def class_counts(self) -> list[int]:
        """Number of samples of each class, indexed by label."""
        return torch.bincount(self.targets, minlength=len(self.classes)).tolist()


@dataclass
class DataSplits:
    """What :func:`tna_kernels.data.get_dataset` returns.

    ``train`` always; ``val`` when a validation split was carved out of train (else None); ``test``
    when the source has a test split (else None). ``mean``/``std`` are the per-channel statistics
    used for normalisation; ``train_augment``/``eval_augment`` are the matching batch transforms
    (pass them to :class:`BatchLoader`). ``info`` records where the data came from.
    """

    name: str
    train: ArrayDataset
    val: ArrayDataset | None
    test: ArrayDataset | None
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_augment: Augment
    eval_augment: Augment
    info: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Class names, index = label."""
        return self.train.classes

    def loader(self, split: str, batch_size: int, **kwargs) -> BatchLoader:
        """A :class:`BatchLoader` over ``split`` ("train", "val", "test") with that split's augmentation.

        Training shuffles and augments; the other splits do neither unless ``kwargs`` says otherwise.
        """
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        ds = getattr(self, split)
        if ds is None:
            raise ValueError(f"the {self.name} data has no {split!r} split (val needs val_per_class > 0)")
        train = split == "train"
        kwargs.setdefault("shuffle", train)
        kwargs.setdefault("augment", self.train_augment if train else self.eval_augment)
        return BatchLoader(ds, batch_size, **kwargs)


def split_per_class(
    targets: torch.Tensor | np.ndarray,
    per_class: int,
    mode: str = "random",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out) with ``per_class`` samples of every class held out.

    ``mode="random"``: the held-out samples of each class are drawn with ``numpy``'s generator
    seeded by ``seed`` (same seed, same split). ``mode="last"``: the last ``per_class`` samples of
    each class in dataset order (deterministic, no seed). Both index arrays are sorted ascending.
    """
    t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets).astype(np.int64)
    if mode not in ("random", "last"):
        raise ValueError(f"val_mode must be 'random' or 'last', got {mode!r}")
    if not isinstance(per_class, (int, np.integer)) or per_class < 0:
        raise ValueError(f"val_per_class must be a non-negative int, got {per_class!r}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(t):
        idx = np.flatnonzero(t == c)
        if per_class >= len(idx):
            raise ValueError(
                f"val_per_class={per_class} leaves no training sample of class {c} "
                f"(it has {len(idx)} samples)"
            )
        held.append(idx[-per_class:] if mode == "last" else rng.permutation(idx)[:per_class])
    held_idx = np.sort(np.concatenate(held)) if held and per_class else np.zeros(0, np.int64)
    mask = np.ones(len(t), bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


class BatchLoader:
    """Batches of ``(inputs, targets)`` from an :class:`ArrayDataset`, augmented on whole batches.

    Each pass shuffles with a generator seeded by ``(seed, epoch)``, so an epoch's order and
    augmentation depend only on those two numbers: a run resumed at epoch ``e`` (``set_epoch(e)``
    or ``load_state_dict``) sees the same batches as an uninterrupted one. The epoch counter
    advances by one after every full pass. ``device`` moves each batch (pinned + non-blocking on
    CUDA); ``preload=True`` keeps the whole dataset on ``device`` instead; ``max_batches`` caps a
    pass (CPU smoke runs).
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        max_batches: int | None = None,
        preload: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if max_batches is not None and max_batches <= 0:
            raise ValueError(f"max_batches must be positive or None, got {max_batches!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment if augment is not None else Augment()
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else None
        self.max_batches = max_batches
        self.epoch = 0
        # preload: copy the whole dataset to ``device`` once (150 MB for CIFAR-10 uint8), so each
        # batch is a device-side gather instead of a host copy + transfer.
        self._resident = dataset.data.to(self.device) if preload and self.device is not None else None
        self._resident_targets = dataset.targets.to(self.device) if self._resident is not None else None

    def __len__(self) -> int:
        n = len(self.dataset)
        b = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return min(b, self.max_batches) if self.max_batches is not None else b

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (its shuffle and augmentation)."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        """The loader's position: the epoch the next pass will run, and its seed."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.dataset)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        resident = self._resident is not None
        data = self._resident if resident else self.dataset.data
        targets = self._resident_targets if resident else self.dataset.targets
        if resident:
            order = order.to(self.device)
        cuda = self.device is not None and self.device.type == "cuda"
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x, y = data[idx], targets[idx]
            if self.device is not None and not resident:
                if cuda:
                    x, y = x.pin_memory(), y.pin_memory()
                x, y = x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)
            yield self.augment(x, g), y
        self.epoch += 1


# ---------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$TNA_CACHE`` if set, else ``~/.cache/tna_kernels``."""
    env = os.environ.get("TNA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tna_kernels"


def source_key(files: Sequence[Path], root: Path, extra: dict | None = None) -> str:
    """Hash of the source: its absolute path, file count, and every file's relative path, size and mtime.

    Any added, removed, renamed, resized or touched file gives a new key (so a stale cache is never
    read); ``extra`` folds in the decoding options.
    """
    h = hashlib.sha256()
    h.update(str(Path(root).resolve()).encode())
    h.update(f"|{len(files)}|".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if extra:
        h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cache_paths(cache_dir: Path, stem: str) -> tuple[Path, Path, Path]:
    """The (data, targets, meta) files of cache entry ``stem``."""
    return cache_dir / f"{stem}.data.npy", cache_dir / f"{stem}.targets.npy", cache_dir / f"{stem}.json"


def cache_load(cache_dir: Path, stem: str, mmap: bool = False) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """The cached arrays and metadata of entry ``stem``, or None when absent or incomplete.

    The metadata file is written last, so its presence marks a complete entry.
    """
    data_p, targets_p, meta_p = cache_paths(cache_dir, stem)
    if not (meta_p.exists() and data_p.exists() and targets_p.exists()):
        return None
    try:
        meta = json.loads(meta_p.read_text())
        data = np.load(data_p, mmap_mode="r" if mmap else None)
        targets = np.load(targets_p)
    except (ValueError, OSError, json.JSONDecodeError):
        return None  # a damaged entry is rebuilt, not trusted
    if data.shape[0] != targets.shape[0] or list(data.shape) != meta.get("shape"):
        return None
    return data, targets, meta


def cache_store(cache_dir: Path, stem: str, data: np.ndarray, targets: np.ndarray, meta: dict) -> bool:
    """Write entry ``stem`` atomically: each file via temp + ``os.replace``, the metadata last.

    Returns False (with a warning) when the cache directory cannot be written: the data was
    decoded fine, so the caller carries on without a cache rather than failing.
    """
    data_p, targets_p, meta_p = cache_paths(cache_dir, stem)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save_npy(data_p, np.ascontiguousarray(data))
        _atomic_save_npy(targets_p, np.ascontiguousarray(targets))
        _atomic_write_text(meta_p, json.dumps({**meta, "shape": list(data.shape)}, indent=1))
    except OSError as exc:
        warnings.warn(
            f"could not write the data cache in {cache_dir} ({exc}); set TNA_CACHE or cache_dir", stacklevel=3
        )
        return False
    return True
