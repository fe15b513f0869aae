"""CIFAR10-DVS (Li et al., 2017): event files -> frames ``[T, 2, H, W]``, cached, split 9:1 per class.

File format of the published release (``<root>/<class>/cifar10_<class>_<i>.aedat``, 1,000 files per
class): ASCII header lines starting with ``#``, then big-endian uint32 pairs ``(address, timestamp)``,
timestamps in microseconds. In each address, bit 0 is the polarity, bits 1-7 the sensor x, bits
8-14 the sensor y (128 x 128 sensor). Following the convention of SpikingJelly's reader (so frames
match published pipelines), the sensor axes are mirrored and swapped on reading:
``x = 127 - y_sensor``, ``y = 127 - x_sensor``, ``p = 1 - polarity``.

Framing (SpikingJelly's ``integrate_events_by_fixed_frames_number``): with ``N`` events and
``M = frames_number`` frames,

* ``split_by="number"``: frame ``j`` holds events ``[j * (N // M), (j + 1) * (N // M))``, the last
  frame everything from ``(M - 1) * (N // M)`` to the end;
* ``split_by="time"``: with ``dT = (t_last - t_first) // M`` (integer floor), frame ``j`` holds the
  events with ``t_first + j dT <= t < t_first + (j + 1) dT``, the last frame everything from
  ``t_first + (M - 1) dT`` on (an empty interval gives an all-zero frame; out-of-order events are
  put in time order first);

and channel ``p`` of a frame counts the events of polarity ``p`` at each pixel ``(y, x)``.
``size < 128`` downsamples each frame by area averaging (``F.interpolate(mode="area")``: the mean
count over the source pixels an output pixel covers).

Train/test split (the dataset has none): per class, files in lexicographic name order (the order
SpikingJelly's folder dataset uses), the first ``ceil(0.9 n)`` train and the rest test (``split="first"``,
SpikingJelly's ``split_to_train_test_set(0.9, ..., random_split=False)``); or ``split="tebn"``: files
``_0 .. _99`` (the first 10% in numeric order) test, the rest train (the split of the TEBN paper).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .core import (
    ArrayDataset,
    CorruptFileError,
    DatasetNotFoundError,
    cache_load,
    cache_store,
    default_cache_dir,
    source_key,
)

__all__ = [
    "DVS_CLASSES",
    "DVS_URLS",
    "SENSOR_SIZE",
    "read_aedat_events",
    "segment_bounds",
    "events_to_frames",
    "load_cifar10_dvs",
    "download_cifar10_dvs",
]

DVS_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SENSOR_SIZE = 128

# The release on figshare (one zip per class holding <class>/*.aedat) and the md5 sums SpikingJelly lists.
DVS_URLS = {
    "airplane": ("https://ndownloader.figshare.com/files/7712788", "0afd5c4bf9ae06af762a77b180354fdd"),
    "automobile": ("https://ndownloader.figshare.com/files/7712791", "8438dfeba3bc970c94962d995b1b9bdd"),
    "bird": ("https://ndownloader.figshare.com/files/7712794", "a9c207c91c55b9dc2002dc21c684d785"),
    "cat": ("https://ndownloader.figshare.com/files/7712812", "52c63c677c2b15fa5146a8daf4d56687"),
    "deer": ("https://ndownloader.figshare.com/files/7712815", "b6bf21f6c04d21ba4e23fc3e36c8a4a3"),
    "dog": ("https://ndownloader.figshare.com/files/7712818", "f379ebdf6703d16e0a690782e62639c3"),
    "frog": ("https://ndownloader.figshare.com/files/7712842", "cad6ed91214b1c7388a5f6ee56d08803"),
    "horse": ("https://ndownloader.figshare.com/files/7712851", "e7cbbf77bec584ffbf913f00e682782a"),
    "ship": ("https://ndownloader.figshare.com/files/7712836", "41c7bd7d6b251be82557c6cce9a7d5c9"),
    "truck": ("https://ndownloader.figshare.com/files/7712839", "89f3922fd147d9aeff89e76a2b0b70a7"),
}


def _header_length(raw: bytes) -> int | None:
    """Bytes taken by the leading ``#`` header lines; None when the last header line never ends."""
    pos = 0
    while pos < len(raw) and raw[pos : pos + 1] == b"#":
        nl = raw.find(b"\n", pos)
        if nl < 0:
            return None
        pos = nl + 1
    return pos


def read_aedat_events(path: str | Path) -> dict[str, np.ndarray]:
    """Events of one CIFAR10-DVS file as ``{"t", "x", "y", "p"}`` int64 arrays (see the module docstring).

    Also reads SpikingJelly's converted ``.npz`` files (keys t, x, y, p, already in these coordinates;
    never unpickled). Raises :class:`CorruptFileError` (a ValueError) naming the file when the payload
    is not whole (address, timestamp) pairs, a header line never ends, an ``.npz`` is damaged or
    lacks a key, or an event lies outside the sensor.
    """
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                ev = {k: np.asarray(z[k]).astype(np.int64) for k in ("t", "x", "y", "p")}
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise  # the file cannot be opened: the message names it
        except Exception as exc:  # zipfile.BadZipFile, KeyError, ValueError (pickled data, bad header), ...
            raise CorruptFileError(f"{path} is not a readable event .npz file (keys t, x, y, p): "
                                   f"{type(exc).__name__}: {exc}") from exc
        if any(v.ndim != 1 for v in ev.values()):
            raise CorruptFileError(f"{path}: event fields must be 1-D, got shapes {[v.shape for v in ev.values()]}")
    else:
        raw = path.read_bytes()
        head = _header_length(raw)
        if head is None:
            raise CorruptFileError(f"{path}: the '#' header's last line never ends (no newline): damaged file")
        body = raw[head:]
        if len(body) % 8:
            raise CorruptFileError(
                f"{path}: event payload of {len(body)} bytes is not a whole number of 8-byte "
                "(address, timestamp) pairs"
            )
        words = np.frombuffer(body, dtype=">u4")
        addr = words[0::2].astype(np.int64)
        ev = {
            "t": words[1::2].astype(np.int64),
            "x": (SENSOR_SIZE - 1) - ((addr >> 8) & 0x7F),
            "y": (SENSOR_SIZE - 1) - ((addr >> 1) & 0x7F),
            "p": 1 - (addr & 1),
        }
    n = {k: v.shape for k, v in ev.items()}
    if len(set(n.values())) != 1:
        raise CorruptFileError(f"{path}: event fields have different lengths {n}")
    bad = (
        (ev["x"] < 0)
        | (ev["x"] >= SENSOR_SIZE)
        | (ev["y"] < 0)
        | (ev["y"] >= SENSOR_SIZE)
        | (ev["p"] < 0)
        | (ev["p"] > 1)
    )
    if bad.any():
        raise CorruptFileError(
            f"{path}: {int(bad.sum())} events outside the 128x128 sensor or with polarity not 0/1"
        )
    return ev


def segment_bounds(t: np.ndarray, frames_number: int, split_by: str) -> tuple[np.ndarray, np.ndarray]:
    """Event index ranges ``[j_l[j], j_r[j])`` of each frame (rules in the module docstring).

    ``t`` must be non-decreasing for ``split_by="time"``. The ranges tile ``[0, N)`` in order.
    """
    if not isinstance(frames_number, (int, np.integer)) or frames_number <= 0:
        raise ValueError(f"frames_number must be a positive int, got {frames_number!r}")
    n = len(t)
    m = int(frames_number)
    if split_by == "number":
        di = n // m
        j_l = np.arange(m, dtype=np.int64) * di
    elif split_by == "time":
        if n == 0:
            j_l = np.zeros(m, np.int64)
        else:
            if np.any(np.diff(t) < 0):
                raise ValueError("split_by='time' needs non-decreasing timestamps")
            dt = (int(t[-1]) - int(t[0])) // m
            j_l = np.searchsorted(t, int(t[0]) + dt * np.arange(m, dtype=np.int64), side="left").astype(
                np.int64
            )
    else:
        raise ValueError(f"split_by must be 'number' or 'time', got {split_by!r}")
    j_r = np.append(j_l[1:], n)
    return j_l, j_r


def events_to_frames(
    events: dict[str, np.ndarray],
    frames_number: int,
    split_by: str = "number",
    size: int = SENSOR_SIZE,
    sensor: int = SENSOR_SIZE,
) -> np.ndarray:
    """Integrate events into float32 frames ``[frames_number, 2, size, size]`` (event counts per pixel,
    area-averaged when ``size < sensor``)."""
    if not isinstance(size, (int, np.integer)) or not 0 < size <= sensor:
        raise ValueError(f"size must be an int in [1, {sensor}], got {size!r}")
    t, x, y, p = (np.asarray(events[k], dtype=np.int64) for k in ("t", "x", "y", "p"))
    if split_by == "time" and np.any(np.diff(t) < 0):
        # Frame j is defined by its time interval, so out-of-order events are put in time order first.
        order = np.argsort(t, kind="stable")
        t, x, y, p = t[order], x[order], y[order], p[order]
    j_l, j_r = segment_bounds(t, frames_number, split_by)
    frame_of = np.repeat(np.arange(frames_number, dtype=np.int64), j_r - j_l)
    flat = ((frame_of * 2 + p) * sensor + y) * sensor + x
    counts = np.bincount(flat, minlength=frames_number * 2 * sensor * sensor).astype(np.float32)
    frames = counts.reshape(frames_number, 2, sensor, sensor)
    if size != sensor:
        frames = F.interpolate(torch.from_numpy(frames), size=(size, size), mode="area").numpy()
    return frames


def _natural_key(name: str):
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def _list_event_files(root: Path) -> tuple[list[str], list[Path], np.ndarray]:
    classes = [c for c in DVS_CLASSES if (root / c).is_dir()]
    if len(classes) != len(DVS_CLASSES):
        missing = [c for c in DVS_CLASSES if c not in classes]
        raise DatasetNotFoundError(
            f"CIFAR10-DVS not found under {root} (missing class folders {missing}). Put the release there as "
            f"{root}/<class>/cifar10_<class>_<i>.aedat for the classes {', '.join(DVS_CLASSES)} "
            "(10 zips from https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671, "
            f"unzipped into {root}), "
            f"or pass download=True (CLI: --download) to fetch and check them."
        )
    files, labels = [], []
    for i, c in enumerate(classes):
        names = sorted(
            e.name for e in os.scandir(root / c) if e.is_file() and e.name.endswith((".aedat", ".npz"))
        )
        if not names:
            raise DatasetNotFoundError(f"class folder {root / c} holds no .aedat (or .npz) event files")
        files.extend(root / c / n for n in names)
        labels.extend([i] * len(names))
    return classes, files, np.asarray(labels, dtype=np.int64)


def _split_indices(
    files: list[Path], labels: np.ndarray, split: str, train_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)  # lexicographic file order within the class
        pos = math.ceil(len(idx) * train_ratio)
        if split == "first":
            train.append(idx[:pos])
            test.append(idx[pos:])
        elif split == "tebn":
            nat = sorted(idx, key=lambda i: _natural_key(files[i].name))
            n_test = len(idx) - pos
            test.append(np.asarray(nat[:n_test], dtype=np.int64))
            train.append(np.asarray(nat[n_test:], dtype=np.int64))
        else:
            raise ValueError(f"split must be 'first' or 'tebn', got {split!r}")
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_cifar10_dvs(
    root: str | Path,
    frames_number: int = 10,
    split_by: str = "number",
    size: int = SENSOR_SIZE,
    split: str = "first",
    train_ratio: float = 0.9,
    cache_dir: str | Path | None = None,
    download: bool = False,
    workers: int | None = None,
    use_cache: bool = True,
) -> tuple[ArrayDataset, ArrayDataset, dict]:
    """CIFAR10-DVS as ``(train, test, info)``; each dataset holds float16 frames ``[N, T, 2, size, size]``.

    The frames of all files are computed once (``workers`` threads) and cached under a key of the
    folder's path, every file's name/size/mtime and the framing options; later calls read the cache
    (``info["cache"]`` says "hit" or "miss"). Counts are stored as float16 (exact up to 2048 events
    per pixel and frame). Memory: 10,000 x T x 2 x size^2 x 2 bytes (T=10: 6.5 GB at 128, 0.9 GB at 48).
    """
    if split_by not in ("number", "time"):
        raise ValueError(f"split_by must be 'number' or 'time', got {split_by!r}")
    if split not in ("first", "tebn"):
        raise ValueError(f"split must be 'first' or 'tebn', got {split!r}")
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio must be in (0, 1), got {train_ratio}")
    if not isinstance(frames_number, int) or frames_number <= 0:
        raise ValueError(f"frames_number must be a positive int, got {frames_number!r}")
    if not isinstance(size, int) or not 0 < size <= SENSOR_SIZE:
        raise ValueError(f"size must be an int in [1, {SENSOR_SIZE}], got {size!r}")
    root = Path(root).expanduser()
    try:
        classes, files, labels = _list_event_files(root)
    except DatasetNotFoundError:
        if not download:
            raise
        download_cifar10_dvs(root)
        classes, files, labels = _list_event_files(root)

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    options = {"frames_number": frames_number, "split_by": split_by, "size": size, "layout": "f16-ntchw"}
    stem = "cifar10dvs-" + source_key(files, root, extra=options)
    info = {"source": str(root), "format": "cifar10-dvs", **options, "split": split}
    # Memory-map a cached entry: only the rows of each split are read, so the peak is one copy.
    hit = cache_load(cache_dir, stem, mmap=True) if use_cache else None
    if hit is not None:
        frames, targets, _ = hit
        info["cache"] = "hit"
    else:
        frames = np.empty((len(files), frames_number, 2, size, size), dtype=np.float16)

        def work(i: int) -> None:
            try:
                fr = events_to_frames(read_aedat_events(files[i]), frames_number, split_by, size)
            except ValueError as exc:
                if str(files[i]) in str(exc):
                    raise
                raise ValueError(f"{files[i]}: {exc}") from exc
            frames[i] = np.minimum(fr, np.finfo(np.float16).max)  # saturate rather than overflow to inf

        with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
            try:
                list(pool.map(work, range(len(files))))  # re-raises the first error, which names its file
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        targets = labels
        info["cache"] = "miss"
        if use_cache:
            cache_store(cache_dir, stem, frames, targets, {"source": str(root.resolve()), **options})
    if not np.array_equal(np.asarray(targets), labels):
        raise ValueError(f"cache entry {stem} in {cache_dir} disagrees with the folder's labels; delete it")
    train_idx, test_idx = _split_indices(files, labels, split, train_ratio)

    def part(idx: np.ndarray) -> ArrayDataset:
        data = torch.from_numpy(np.ascontiguousarray(frames[idx]))
        return ArrayDataset(data, torch.from_numpy(labels[idx]), list(classes))

    return part(train_idx), part(test_idx), info


def download_cifar10_dvs(root: str | Path, timeout: float = 120.0) -> Path:
    """Fetch the 10 CIFAR10-DVS class zips from figshare into ``root``, check their md5, unzip them.

    Classes already present as folders are skipped. Each zip goes to a temp file, is checked, and
    is unpacked into a temp folder renamed into place. Needs network access; never called by tests.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for cls, (url, md5) in DVS_URLS.items():
        if (root / cls).is_dir():
            continue
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{cls}-download-") as tmp:
            archive = Path(tmp) / f"{cls}.zip"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r, open(archive, "wb") as f:
                    shutil.copyfileobj(r, f, 1 << 20)
            except OSError as exc:
                raise OSError(
                    f"could not download {url} ({exc}); get {cls}.zip by other means and unzip it into {root}"
                ) from exc
            h = hashlib.md5()
            with open(archive, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != md5:
                raise OSError(
                    f"{url} downloaded with md5 {h.hexdigest()}, expected {md5}: damaged; try again"
                )
            unpack = Path(tmp) / "unpacked"
            with zipfile.ZipFile(archive) as z:
                z.extractall(unpack)  # zipfile drops absolute paths and '..' components
            if not (unpack / cls).is_dir():
                raise OSError(f"{cls}.zip did not unpack to a {cls}/ folder")
            os.replace(unpack / cls, root / cls)
    return root
