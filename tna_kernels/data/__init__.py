"""Datasets for training ternary spiking networks: digits (embedded), CIFAR-10/100, CIFAR10-DVS.

No torchvision: data is held as whole tensors, batched by :class:`BatchLoader`, and augmented on
whole batches by :mod:`tna_kernels.data.augment`. Typical use::

    from tna_kernels.data import get_dataset
    ds = get_dataset("cifar10", root="../shared/data/cifar10-jpeg", val_per_class=500, val_mode="last")
    for x, y in ds.loader("train", batch_size=128, seed=0):   # x float [128, 3, 32, 32], normalised
        ...

This package imports nothing from :mod:`tna_kernels.train`; the kernel layers never import it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .augment import Augment, normalize, random_crop, random_hflip, to_float
from .cifar import (
    CIFAR10_CLASSES,
    CorruptImageError,
    download_cifar,
    find_cifar_source,
    load_image_folder,
    read_cifar_batches,
)
from .core import (
    ArrayDataset,
    BatchLoader,
    CorruptFileError,
    DatasetNotFoundError,
    DataSplits,
    default_cache_dir,
    split_per_class,
)
from .digits import digits_splits
from .dvs import download_cifar10_dvs, load_cifar10_dvs

__all__ = [
    "get_dataset",
    "DATASETS",
    "default_data_root",
    "ArrayDataset",
    "DataSplits",
    "BatchLoader",
    "Augment",
    "random_crop",
    "random_hflip",
    "normalize",
    "to_float",
    "split_per_class",
    "default_cache_dir",
    "DatasetNotFoundError",
    "CorruptFileError",
    "CorruptImageError",
    "CIFAR10_CLASSES",
    "read_cifar_batches",
    "load_image_folder",
    "find_cifar_source",
    "download_cifar",
    "load_cifar10_dvs",
    "download_cifar10_dvs",
]

# Per-channel statistics of the official training sets (the usual published figures).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_ALIASES = {
    "digits": "digits",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
    "cifar10_dvs": "cifar10_dvs",
    "cifar10dvs": "cifar10_dvs",
    "cifar10-dvs": "cifar10_dvs",
}
DATASETS = ("digits", "cifar10", "cifar100", "cifar10_dvs")


def default_data_root() -> Path:
    """``$TNA_DATA`` if set, else ``./data``: where datasets are looked for when no root is given."""
    env = os.environ.get("TNA_DATA")
    return Path(env).expanduser() if env else Path("data")


def _carve_val(train: ArrayDataset, val_per_class: int, val_mode: str, seed: int):
    if not val_per_class:
        return train, None
    keep, held = split_per_class(train.targets, val_per_class, val_mode, seed)
    return train.subset(keep), train.subset(held)


def _first_per_class(train: ArrayDataset, per_class: int) -> ArrayDataset:
    """The first ``per_class`` samples of each class, in dataset order (0: all of them)."""
    if not per_class:
        return train
    t = train.targets.cpu().numpy()
    keep = []
    for c in np.unique(t):
        idx = np.flatnonzero(t == c)
        if per_class > len(idx):
            raise ValueError(f"train_per_class={per_class} exceeds the {len(idx)} training samples of class {c}")
        keep.append(idx[:per_class])
    return train.subset(np.sort(np.concatenate(keep)))


def get_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    val_per_class: int = 0,
    val_mode: str = "random",
    train_per_class: int = 0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    augment: bool = True,
    padding: int | None = None,
    flip: bool | None = None,
    workers: int | None = None,
    skip_bad_images: bool = False,
    **opts,
) -> DataSplits:
    """Load dataset ``name`` and return its splits, statistics and batch transforms.

    name: "digits" (embedded, ``root`` ignored), "cifar10", "cifar100", "cifar10_dvs".
    root: the dataset folder (default :func:`default_data_root`). CIFAR: a python-batches folder,
        its parent, or an ImageFolder tree with ``train/`` (see :func:`find_cifar_source`).
        CIFAR10-DVS: a folder of class folders of ``.aedat`` event files.
    val_per_class: samples of each class moved from train into ``val`` (0: no val split).
    val_mode: "random" (drawn with ``seed``) or "last" (the last ``val_per_class`` of each class
        in file order, e.g. the issue 8 evaluation's ``val_per_class=500, val_mode="last"``).
    train_per_class: keep only the first ``train_per_class`` samples of each class of the training
        split, in file order, after the validation samples are taken out (0: all): a fixed smaller
        training set (the same images every epoch and every seed), e.g. to study overfitting.
    seed: seeds the random validation split only; the train/test splits are fixed.
    cache_dir: where decoded images / event frames are cached (default ``$TNA_CACHE`` or
        ``~/.cache/tna_kernels``).
    download: fetch the official archives into ``root`` when the data is missing (needs network).
    augment, padding, flip: training augmentation (random crop with zero ``padding``, horizontal
        ``flip``); defaults per dataset: CIFAR padding 4 + flip, digits padding 1 (no flip: digits
        are not mirror-symmetric), CIFAR10-DVS flip + translation by up to 1/16 of the side
        (8 px at 128, 3 at 48).
    workers: decoding threads (default: CPU count).
    skip_bad_images: CIFAR ImageFolder trees only: leave out image files that cannot be decoded
        (truncated, corrupted, another size) instead of raising :class:`CorruptImageError`; a
        warning names them, ``info["skipped_images"]`` counts them and ``info["skipped_files"]``
        lists them (relative to ``root``). A damaged python-batches or CIFAR10-DVS file is always
        an error (:class:`CorruptFileError`, naming the file). In a training config:
        ``data.options.skip_bad_images=true``.
    opts: CIFAR10-DVS only: ``frames_number`` (10), ``split_by`` ("number" | "time"), ``size``
        (128, or e.g. 48 to downsample), ``split`` ("first" | "tebn"); see :func:`load_cifar10_dvs`.
    """
    key = _ALIASES.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if key != "cifar10_dvs" and opts:
        raise TypeError(f"get_dataset({key!r}) got unexpected options {sorted(opts)}")
    if val_mode not in ("random", "last"):
        raise ValueError(f"val_mode must be 'random' or 'last', got {val_mode!r}")
    if not isinstance(val_per_class, int) or val_per_class < 0:
        raise ValueError(f"val_per_class must be a non-negative int, got {val_per_class!r}")
    if isinstance(train_per_class, bool) or not isinstance(train_per_class, int) or train_per_class < 0:
        raise ValueError(f"train_per_class must be a non-negative int, got {train_per_class!r}")
    root_path = Path(root).expanduser() if root is not None else default_data_root()
    info: dict = {}

    if key == "digits":
        train, test = digits_splits()
        info["source"] = "sklearn.datasets.load_digits (bundled)"
        x = train.data.float().div(255)
        mean, std = (x.mean().item(),), (x.std().item(),)
        default_pad, default_flip, channel_dim = 1, False, 1
    elif key in ("cifar10", "cifar100"):
        try:
            kind, where = find_cifar_source(root_path, key)
        except DatasetNotFoundError:
            if not download:
                raise
            download_cifar(root_path, key)
            kind, where = find_cifar_source(root_path, key)
        if kind == "batches":
            train, test = read_cifar_batches(where, key)
            info.update(source=str(where), format="python-batches")
        else:
            train, info = load_image_folder(where / "train", cache_dir, workers, skip_bad_images=skip_bad_images)
            if skip_bad_images:
                info["skipped_files"] = [os.path.join("train", f) for f in info["skipped_files"]]
            test = None
            if (where / "test").is_dir():
                test, tinfo = load_image_folder(where / "test", cache_dir, workers, skip_bad_images=skip_bad_images)
                if test.classes != train.classes:
                    raise ValueError(
                        f"{where}/test has classes {test.classes}, but train has {train.classes}"
                    )
                info["test_cache"] = tinfo["cache"]
                if skip_bad_images:
                    info["skipped_images"] += tinfo["skipped_images"]
                    info["skipped_files"] += [os.path.join("test", f) for f in tinfo["skipped_files"]]
        n_expected = 10 if key == "cifar10" else 100
        if len(train.classes) != n_expected:
            raise ValueError(
                f"{key} needs {n_expected} classes, but {info.get('source', where)} has {len(train.classes)}"
            )
        mean, std = CIFAR_STATS[key]
        default_pad, default_flip, channel_dim = 4, True, 1
    else:
        train, test, info = load_cifar10_dvs(
            root_path, cache_dir=cache_dir, download=download, workers=workers, **opts
        )
        mean = std = None
        default_pad, default_flip, channel_dim = max(1, train.data.shape[-1] // 16), True, 2

    train, val = _carve_val(train, val_per_class, val_mode, seed)
    train = _first_per_class(train, train_per_class)
    info.update(val_per_class=val_per_class, val_mode=val_mode, seed=seed, train_per_class=train_per_class)
    pad = default_pad if padding is None else padding
    flp = default_flip if flip is None else flip
    if not augment:
        pad, flp = 0, False
    train_aug = Augment(pad, flp, mean, std, channel_dim=channel_dim)
    eval_aug = Augment(0, False, mean, std, channel_dim=channel_dim)
    c = train.data.shape[channel_dim]
    return DataSplits(
        name=key,
        train=train,
        val=val,
        test=test,
        num_classes=len(train.classes),
        input_shape=tuple(train.data.shape[1:]),
        mean=tuple(mean) if mean is not None else (0.0,) * c,
        std=tuple(std) if std is not None else (1.0,) * c,
        train_augment=train_aug,
        eval_augment=eval_aug,
        info=info,
    )
