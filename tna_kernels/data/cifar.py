"""CIFAR-10 / CIFAR-100 readers: the official python-batches folders and ImageFolder trees.

* python batches: ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``)
  and ``cifar-100-python/`` (``train``, ``test``, ``meta``; fine labels). Read with a restricted
  unpickler that only lets the numpy array constructors through, so a tampered file cannot run code.
* ImageFolder: ``<root>/train/<class>/*.png|jpg|jpeg`` (and ``<root>/test/<class>/...`` if present).
  Class index = position in the sorted list of class folders; for CIFAR-10 and CIFAR-100 the
  official label order *is* alphabetical, so sorted order reproduces the official indices.
  Files within a class are taken in natural order (``9.png`` before ``10.png``), which defines
  "last N per class". Decoded once with Pillow on a thread pool, cached as uint8 ``[N, 3, H, W]``
  ``.npy`` files keyed by the folder's path, file count, sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .core import (
    ArrayDataset,
    CorruptFileError,
    DatasetNotFoundError,
    cache_load,
    cache_paths,
    cache_store,
    default_cache_dir,
    source_key,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR_URLS",
    "CorruptImageError",
    "read_cifar_batches",
    "load_image_folder",
    "find_cifar_source",
    "download_cifar",
]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Official archives (https://www.cs.toronto.edu/~kriz/cifar.html) and their published md5 sums.
CIFAR_URLS = {
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
    ),
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class CorruptImageError(CorruptFileError):
    """An image file could not be decoded, or has the wrong size; the message names the file."""


# ------------------------------------------------------------------------------------ python batches

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:  # an unreadable file is an OSError naming it
        try:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
        except Exception as exc:
            # A damaged pickle can fail in many ways (UnpicklingError, EOFError, MemoryError on a
            # huge length field, LookupError from a bad codec name, numpy's ValueError/TypeError...).
            raise CorruptFileError(
                f"{path} is not a readable CIFAR python batch file: {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(obj, dict):
        raise CorruptFileError(
            f"{path} is not a CIFAR python batch file (holds a {type(obj).__name__}, not a dict)"
        )
    # Python 2 pickles give bytes keys; files re-pickled under Python 3 give str keys.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if "data" not in d or label_key not in d:
        raise CorruptFileError(
            f"{path} lacks the 'data' or {label_key!r} entry of a CIFAR batch (has {sorted(map(str, d))})"
        )
    try:
        data = np.asarray(d["data"])
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise CorruptFileError(f"{path}: the batch's data or labels are not arrays of numbers: {exc}") from exc
    if data.dtype != np.uint8:  # the official files hold uint8; accept other integers in range
        if not np.issubdtype(data.dtype, np.integer) or (data.size and (data.min() < 0 or data.max() > 255)):
            raise CorruptFileError(f"{path}: the batch's data must be pixel values 0..255, got {data.dtype} data")
        data = data.astype(np.uint8)
    if labels.ndim != 1:
        raise CorruptFileError(f"{path}: the labels must be a flat list, got shape {labels.shape}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise CorruptFileError(
            f"{path}: expected data [N, 3072] and N labels, got data {data.shape} and "
            f"{labels.shape[0]} labels"
        )
    # Rows are the R, G and B planes of a 32x32 image, row-major: a plain reshape gives NCHW.
    return data.reshape(-1, 3, 32, 32), labels


def _names(path: Path, key: str) -> list[str]:
    d = _unpickle(path)
    if key not in d:
        raise CorruptFileError(f"{path} lacks the {key!r} entry of a CIFAR meta file (has {sorted(map(str, d))})")
    names = d[key]
    if not isinstance(names, (list, tuple)):
        raise CorruptFileError(f"{path}: {key!r} is a {type(names).__name__}, not a list of class names")
    try:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: a class name in {key!r} is not UTF-8: {exc}") from exc


def read_cifar_batches(folder: str | Path, name: str) -> tuple[ArrayDataset, ArrayDataset]:
    """Read an official python-batches folder into ``(train, test)`` datasets (uint8 NCHW).

    ``name`` is "cifar10" (``data_batch_1..5`` + ``test_batch`` + ``batches.meta``) or "cifar100"
    (``train`` + ``test`` + ``meta``, fine labels).
    """
    folder = Path(folder)
    if name == "cifar10":
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, label_key, names_key = (
            folder / "test_batch",
            folder / "batches.meta",
            "labels",
            "label_names",
        )
    elif name == "cifar100":
        train_files = [folder / "train"]
        test_file, meta_file, label_key, names_key = (
            folder / "test",
            folder / "meta",
            "fine_labels",
            "fine_label_names",
        )
    else:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    missing = [str(p) for p in [*train_files, test_file, meta_file] if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{folder} is not a complete {name} python-batches folder: missing {missing}"
        )
    classes = _names(meta_file, names_key)
    parts = []
    for p in [*train_files, test_file]:
        x, y = _batch_arrays(p, label_key)
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise CorruptFileError(
                f"{p}: labels outside [0, {len(classes)}) for the {len(classes)} classes of {meta_file.name}"
            )
        parts.append((x, y))
    (test_x, test_y), parts = parts[-1], parts[:-1]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return (
        ArrayDataset(torch.from_numpy(train_x), torch.from_numpy(train_y), classes),
        ArrayDataset(torch.from_numpy(test_x), torch.from_numpy(test_y), classes),
    )


# -------------------------------------------------------------------------------------- ImageFolder


def _natural_key(name: str):
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def _list_image_folder(folder: Path) -> tuple[list[str], list[Path], np.ndarray]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetNotFoundError(f"{folder} has no class folders (expected {folder}/<class>/*.png|jpg)")
    files, labels = [], []
    for i, c in enumerate(classes):
        names = sorted(
            (
                e.name
                for e in os.scandir(folder / c)
                if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            ),
            key=_natural_key,
        )
        if not names:
            raise DatasetNotFoundError(f"class folder {folder / c} holds no .png/.jpg/.jpeg files")
        files.extend(folder / c / n for n in names)
        labels.extend([i] * len(names))
    return classes, files, np.asarray(labels, dtype=np.int64)


def _decode(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image  # lazy: only ImageFolder needs Pillow

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as exc:  # Pillow raises several types (UnidentifiedImageError, OSError, SyntaxError)
        raise CorruptImageError(f"cannot decode image file {path}: {exc}") from exc
    if size is not None and arr.shape[:2] != size:
        raise CorruptImageError(
            f"image file {path} is {arr.shape[1]}x{arr.shape[0]} pixels, expected {size[1]}x{size[0]} "
            "like the others"
        )
    return arr


def load_image_folder(
    folder: str | Path,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    use_cache: bool = True,
    skip_bad_images: bool = False,
) -> tuple[ArrayDataset, dict]:
    """Decode ``folder/<class>/*.png|jpg|jpeg`` into a uint8 ``[N, 3, H, W]`` dataset, via the cache.

    All images must share the first image's size. The cache entry is keyed by the folder's absolute
    path and every file's relative path, size and mtime, so any change to the tree re-decodes.
    ``workers`` threads decode in parallel (Pillow releases the GIL while decoding); default: the
    CPU count. Returns ``(dataset, info)`` where ``info["cache"]`` is "hit" or "miss" and
    ``info["cache_files"]`` lists the entry's files.

    A file that cannot be decoded (truncated, corrupted) or has another size raises
    :class:`CorruptImageError` naming it. With ``skip_bad_images=True`` such files are left out
    instead: a warning names the first few, ``info["skipped_images"]`` counts them and
    ``info["skipped_files"]`` lists them (also on a cache hit; entries built with and without
    skipping are separate, so a strict load never reads a cache that left files out).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"image folder {folder} does not exist")
    classes, files, labels = _list_image_folder(folder)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    extra = {"layout": "uint8-nchw-rgb", "classes": classes}
    if skip_bad_images:
        extra["skip_bad_images"] = True  # only then, so existing cache keys stay as they were
    stem = "imagefolder-" + source_key(files, folder, extra=extra)
    info = {"source": str(folder), "format": "imagefolder", "cache_files": None}
    if skip_bad_images:
        info.update(skipped_images=0, skipped_files=[])
    if use_cache:
        hit = cache_load(cache_dir, stem)
        if hit is not None and hit[2].get("classes") == classes:
            data, targets, meta = hit
            info.update(cache="hit", cache_files=[str(p) for p in _entry_files(cache_dir, stem)])
            if skip_bad_images:
                _report_skipped(folder, meta.get("skipped_files", []), info)
            return ArrayDataset(torch.from_numpy(data), torch.from_numpy(targets), classes), info

    bad: dict[int, str] = {}  # index -> reason, when skipping
    first_i = 0
    while True:  # the first decodable image sets the size
        try:
            first = _decode(files[first_i], None)
            break
        except CorruptImageError as exc:
            if not skip_bad_images:
                raise
            bad[first_i] = str(exc)
            first_i += 1
            if first_i == len(files):
                raise CorruptImageError(f"none of the {len(files)} image files under {folder} can be decoded; "
                                        f"the first: {bad[0]}") from exc
    size = first.shape[:2]
    out = np.empty((len(files), 3, *size), dtype=np.uint8)
    out[first_i] = first.transpose(2, 0, 1)

    def work(i: int) -> None:
        try:
            out[i] = _decode(files[i], size).transpose(2, 0, 1)
        except CorruptImageError as exc:
            if not skip_bad_images:
                raise
            bad[i] = str(exc)  # distinct keys from each thread: safe without a lock

    n_workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        try:
            # list() re-raises the first worker exception (a CorruptImageError naming the file).
            list(pool.map(work, range(first_i + 1, len(files))))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # don't decode the rest of a broken folder
            raise
    skipped = []
    if bad:
        keep = np.setdiff1d(np.arange(len(files)), np.fromiter(bad, np.int64))
        out, labels = out[keep], labels[keep]
        skipped = [os.path.relpath(files[i], folder) for i in sorted(bad)]
    info["cache"] = "miss"
    if skip_bad_images:
        _report_skipped(folder, skipped, info, [bad[i] for i in sorted(bad)])
    if use_cache:
        meta = {"source": str(folder.resolve()), "classes": classes}
        if skip_bad_images:
            meta["skipped_files"] = skipped
        if cache_store(cache_dir, stem, out, labels, meta):
            info["cache_files"] = [str(p) for p in _entry_files(cache_dir, stem)]
    return ArrayDataset(torch.from_numpy(out), torch.from_numpy(labels), classes), info


def _report_skipped(folder: Path, skipped: list[str], info: dict, reasons: list[str] | None = None) -> None:
    info.update(skipped_images=len(skipped), skipped_files=list(skipped))
    if skipped:
        shown = reasons if reasons else [str(folder / f) for f in skipped]
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) under {folder} (skip_bad_images=True): "
            + "; ".join(shown[:3]) + more,
            stacklevel=3,
        )


def _entry_files(cache_dir: Path, stem: str) -> list[Path]:
    return list(cache_paths(cache_dir, stem))


# ------------------------------------------------------------------------------------ locating data


def _batches_dir_ok(d: Path, name: str) -> bool:
    if name == "cifar10":
        return (d / "data_batch_1").is_file() and (d / "batches.meta").is_file()
    return (d / "train").is_file() and (d / "meta").is_file()


def find_cifar_source(root: str | Path, name: str) -> tuple[str, Path]:
    """Locate ``name`` ("cifar10"/"cifar100") under ``root``.

    Returns ``("batches", folder)`` or ``("imagefolder", root)``.

    Looked for, in order: ``root`` itself as a python-batches folder; ``root/cifar-10-batches-py``
    (``root/cifar-100-python``); ``root`` as an ImageFolder tree with a ``train/`` folder of class
    folders. Raises :class:`DatasetNotFoundError` with instructions when none matches.
    """
    if name not in CIFAR_URLS:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    root = Path(root).expanduser()
    sub = CIFAR_URLS[name][2]
    for d in (root, root / sub):
        if d.is_dir() and _batches_dir_ok(d, name):
            return "batches", d
    if (root / "train").is_dir():
        return "imagefolder", root
    url = CIFAR_URLS[name][0]
    files = "data_batch_1..5, test_batch, batches.meta" if name == "cifar10" else "train, test, meta"
    hint = ""
    if root.is_dir() and any((root / c).is_dir() for c in CIFAR10_CLASSES + ["apple", "train"]):
        hint = f" ({root} looks like a folder of class folders: pass its parent, which holds train/.)"
    raise DatasetNotFoundError(
        f"{name} not found under {root}.{hint} Put either the official python version there "
        f"({root / sub}/ with {files}; get it from {url} and unpack it with tar xzf), or an "
        f"ImageFolder tree ({root}/train/<class>/*.png|jpg, optional {root}/test/<class>/...). "
        f"Or pass download=True (CLI: --download) to fetch and check the official archive."
    )


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_cifar(root: str | Path, name: str, timeout: float = 60.0) -> Path:
    """Fetch the official ``name`` ("cifar10"/"cifar100") archive into ``root``, check its md5, unpack it.

    Returns the python-batches folder (``root/cifar-10-batches-py`` or ``root/cifar-100-python``);
    does nothing when it is already complete. The archive is downloaded to a temp file and
    unpacked into a temp folder that is renamed into place, so an interrupted download leaves no
    half-written dataset. Needs network access; never called by the tests.
    """
    if name not in CIFAR_URLS:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    url, md5, sub = CIFAR_URLS[name]
    root = Path(root).expanduser()
    target = root / sub
    if target.is_dir() and _batches_dir_ok(target, name):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-download-") as tmp:
        archive = Path(tmp) / Path(url).name
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except OSError as exc:
            raise OSError(
                f"could not download {url} ({exc}). Download it by other means and unpack it into {root}"
            ) from exc
        got = _md5(archive)
        if got != md5:
            raise OSError(f"{url} downloaded with md5 {got}, expected {md5}: the file is damaged; try again")
        unpack = Path(tmp) / "unpacked"
        with tarfile.open(archive, "r:gz") as tar:
            # The 'data' filter refuses absolute paths, '..' and links out of the folder.
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(unpack, **kwargs)
        if not _batches_dir_ok(unpack / sub, name):
            raise OSError(f"{url} did not unpack to {sub}/ with the expected files")
        if target.exists():
            # Never delete what the caller put there: an incomplete copy is theirs to remove.
            raise FileExistsError(f"{target} exists but is incomplete; remove it and download again")
        os.replace(unpack / sub, target)
    return target
