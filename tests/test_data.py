"""Data layer: CIFAR python-batch and ImageFolder readers on files written here in the real formats,
the cache, splits, augmentation, the batched loader, the embedded digits, and bad input."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tna_kernels.data import (
    Augment,
    BatchLoader,
    CorruptImageError,
    DatasetNotFoundError,
    get_dataset,
    load_image_folder,
    normalize,
    random_crop,
    random_hflip,
    read_cifar_batches,
    split_per_class,
    to_float,
)
from tna_kernels.data.core import ArrayDataset

PIL = pytest.importorskip("PIL.Image")

REAL_CIFAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg"
if not REAL_CIFAR.exists():
    REAL_CIFAR = Path("/work/shared/data/cifar10-jpeg")


def test_layering_and_lazy_imports():
    """The kernel package never loads the data layer; the data layer never loads the trainer, and
    loads scikit-learn / Pillow only when a reader needs them."""
    import subprocess
    import sys

    code = (
        "import sys, tna_kernels\n"
        "assert 'tna_kernels.data' not in sys.modules\n"
        "import tna_kernels.data\n"
        "bad = [m for m in ('tna_kernels.train', 'sklearn', 'PIL', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------ file writers


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10_batches(folder: Path, per_batch: int = 20, seed: int = 0) -> dict:
    """The official layout: 5 train batches + test batch + meta, dicts with bytes keys (Python 2 pickles)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    out = {"train_x": [], "train_y": []}
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        _pickle(
            folder / f"data_batch_{i}",
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [b"x.png"] * per_batch,
            },
        )
        out["train_x"].append(data)
        out["train_y"] += labels
    test = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
    test_y = [int(v) for v in rng.integers(0, 10, per_batch)]
    _pickle(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_y,
            b"data": test,
            b"filenames": [b"y.png"] * per_batch,
        },
    )
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _pickle(
        folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    )
    out["train_x"] = np.concatenate(out["train_x"])
    out.update(test_x=test, test_y=test_y)
    return out


def write_image_folder(
    root: Path, classes, per_class: int, fmt: str = "png", size=(32, 32), seed: int = 0
) -> dict:
    """``root/<class>/<i>.<fmt>`` with random RGB images; returns {path: HWC uint8 array}."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            p = root / c / f"{i}.{fmt}"
            PIL.fromarray(arr).save(p)
            written[p] = arr
    return written


# ---------------------------------------------------------------------------------- python batches


def test_cifar10_batches_layout(tmp_path):
    ref = write_cifar10_batches(tmp_path / "cifar-10-batches-py", per_batch=7)
    train, test = read_cifar_batches(tmp_path / "cifar-10-batches-py", "cifar10")
    assert train.data.shape == (35, 3, 32, 32) and train.data.dtype == torch.uint8
    assert test.data.shape == (7, 3, 32, 32)
    assert train.targets.tolist() == ref["train_y"] and test.targets.tolist() == ref["test_y"]
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    # Row layout: 1024 red, then green, then blue values, each plane row-major.
    row = ref["train_x"][11]
    c, r, col = 2, 5, 17
    assert train.data[11, c, r, col].item() == row[c * 1024 + r * 32 + col]
    assert torch.equal(test.data.reshape(7, -1), torch.from_numpy(ref["test_x"]))


def test_cifar_via_get_dataset_parent_folder(tmp_path):
    write_cifar10_batches(tmp_path / "cifar-10-batches-py", per_batch=10)
    ds = get_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert len(ds.train) == 50 and len(ds.test) == 10 and ds.val is None
    assert ds.info["format"] == "python-batches"
    assert not (tmp_path / "cache").exists()  # nothing to cache for arrays already in memory form


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine = [int(v) for v in rng.integers(0, 100, 30)]
    coarse = [v // 5 for v in fine]
    data = rng.integers(0, 256, (30, 3072), dtype=np.uint8)
    _pickle(
        d / "train",
        {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse, b"filenames": [b"a"] * 30},
    )
    _pickle(d / "test", {b"data": data[:4], b"fine_labels": fine[:4], b"coarse_labels": coarse[:4]})
    names = [f"class{i:03d}".encode() for i in range(100)]
    _pickle(d / "meta", {b"fine_label_names": names, b"coarse_label_names": names[:20]})
    ds = get_dataset("cifar100", tmp_path, val_per_class=0)
    assert ds.num_classes == 100 and ds.train.targets.tolist() == fine and len(ds.test) == 4
    assert ds.train.classes[7] == "class007"


def test_batch_file_with_code_is_refused(tmp_path):
    write_cifar10_batches(tmp_path / "b", per_batch=2)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "b" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match="data_batch_3.*refusing to load"):
        read_cifar_batches(tmp_path / "b", "cifar10")


def test_batch_file_wrong_shape(tmp_path):
    write_cifar10_batches(tmp_path / "b", per_batch=2)
    _pickle(tmp_path / "b" / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="test_batch.*3072"):
        read_cifar_batches(tmp_path / "b", "cifar10")


# -------------------------------------------------------------------------------------- ImageFolder


def test_image_folder_png_exact_and_order(tmp_path):
    written = write_image_folder(tmp_path / "train", ["b_cls", "a_cls"], per_class=12)
    ds, info = load_image_folder(tmp_path / "train", cache_dir=tmp_path / "cache", workers=2)
    assert ds.classes == ["a_cls", "b_cls"]  # sorted class folders
    assert ds.data.shape == (24, 3, 32, 32) and ds.targets.tolist() == [0] * 12 + [1] * 12
    # Natural order inside a class: 0, 1, ..., 9, 10, 11 (not 0, 1, 10, 11, 2, ...).
    for i in range(12):
        ref = written[tmp_path / "train" / "a_cls" / f"{i}.png"]
        assert np.array_equal(ds.data[i].permute(1, 2, 0).numpy(), ref), i
    assert np.array_equal(
        ds.data[12 + 10].permute(1, 2, 0).numpy(), written[tmp_path / "train" / "b_cls" / "10.png"]
    )
    assert info["cache"] == "miss"


def test_image_folder_jpeg(tmp_path):
    write_image_folder(tmp_path / "train", ["x"], per_class=3, fmt="jpg")
    # A smooth image survives JPEG almost unchanged: check the decoder is really used on the file content.
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    PIL.fromarray(smooth).save(tmp_path / "train" / "x" / "3.jpg", quality=95)
    ds, _ = load_image_folder(tmp_path / "train", cache_dir=tmp_path / "c")
    got = ds.data[3].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(got - smooth.astype(int)).max() <= 8


def test_cache_hit_and_invalidation(tmp_path):
    write_image_folder(tmp_path / "train", ["a", "b"], per_class=4)
    cache = tmp_path / "cache"
    ds1, info1 = load_image_folder(tmp_path / "train", cache_dir=cache)
    ds2, info2 = load_image_folder(tmp_path / "train", cache_dir=cache)
    assert (info1["cache"], info2["cache"]) == ("miss", "hit")
    assert torch.equal(ds1.data, ds2.data) and torch.equal(ds1.targets, ds2.targets)
    assert all(Path(p).exists() for p in info1["cache_files"])
    assert not [p for p in os.listdir(cache) if p.endswith(".tmp")]  # atomic writes leave no temp files
    # Overwrite one image with new content (new mtime): the cache must not be used.
    p = tmp_path / "train" / "b" / "2.png"
    PIL.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(p)
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds3, info3 = load_image_folder(tmp_path / "train", cache_dir=cache)
    assert info3["cache"] == "miss" and (ds3.data[4 + 2] == 7).all()
    # An added file changes the key too.
    PIL.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "train" / "a" / "9.png")
    ds4, info4 = load_image_folder(tmp_path / "train", cache_dir=cache)
    assert info4["cache"] == "miss" and len(ds4) == 9


def test_cache_dir_from_env(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "train", ["a"], per_class=2)
    monkeypatch.setenv("TNA_CACHE", str(tmp_path / "envcache"))
    _, info = load_image_folder(tmp_path / "train")
    assert all(str(tmp_path / "envcache") in p for p in info["cache_files"])


def test_unwritable_cache_warns_and_still_loads(tmp_path):
    write_image_folder(tmp_path / "train", ["a"], per_class=2)
    blocker = tmp_path / "cache_is_a_file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="could not write the data cache"):
        ds, info = load_image_folder(tmp_path / "train", cache_dir=blocker)
    assert len(ds) == 2 and info["cache_files"] is None and blocker.read_text() == "not a directory"


def test_corrupt_image_names_file(tmp_path):
    write_image_folder(tmp_path / "train", ["a", "b"], per_class=3, fmt="jpg")
    bad = tmp_path / "train" / "b" / "1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" + bytes(100))
    with pytest.raises(CorruptImageError, match=r"b/1\.jpg"):
        load_image_folder(tmp_path / "train", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not os.listdir(tmp_path / "c")  # nothing cached on failure


def test_wrong_image_size_names_file(tmp_path):
    write_image_folder(tmp_path / "train", ["a"], per_class=2)
    PIL.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "train" / "a" / "5.png")
    with pytest.raises(CorruptImageError, match=r"a/5\.png is 16x16 pixels, expected 32x32"):
        load_image_folder(tmp_path / "train", cache_dir=tmp_path / "c")


def test_image_folder_get_dataset_last_val_and_test(tmp_path):
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    written = write_image_folder(tmp_path / "train", classes, per_class=6)
    write_image_folder(tmp_path / "test", classes, per_class=1, seed=5)
    ds = get_dataset("cifar10", tmp_path, val_per_class=2, val_mode="last", cache_dir=tmp_path / "c")
    assert len(ds.train) == 40 and len(ds.val) == 20 and len(ds.test) == 10
    assert ds.val.class_counts() == [2] * 10
    # The validation images are files 4 and 5 of every class.
    for k, c in enumerate(classes):
        for j, i in enumerate((4, 5)):
            assert np.array_equal(
                ds.val.data[2 * k + j].permute(1, 2, 0).numpy(), written[tmp_path / "train" / c / f"{i}.png"]
            )
    x, y = next(iter(ds.loader("val", 8)))
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_train_per_class_keeps_the_first_images_of_each_class(tmp_path):
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    written = write_image_folder(tmp_path / "train", classes, per_class=6)
    ds = get_dataset("cifar10", tmp_path, val_per_class=2, val_mode="last", train_per_class=3,
                     cache_dir=tmp_path / "c")
    assert len(ds.train) == 30 and ds.train.class_counts() == [3] * 10 and len(ds.val) == 20
    assert ds.info["train_per_class"] == 3
    for k, c in enumerate(classes):  # files 0, 1, 2 of every class; the validation split is unchanged
        for j in range(3):
            assert np.array_equal(ds.train.data[3 * k + j].permute(1, 2, 0).numpy(), written[tmp_path / "train" / c / f"{j}.png"])
    full = get_dataset("cifar10", tmp_path, val_per_class=2, val_mode="last", cache_dir=tmp_path / "c")
    assert torch.equal(full.val.data, ds.val.data) and len(full.train) == 40
    with pytest.raises(ValueError, match="train_per_class=5 exceeds the 4 training samples of class 0"):
        get_dataset("cifar10", tmp_path, val_per_class=2, train_per_class=5, cache_dir=tmp_path / "c")
    for bad in (-1, True, 2.0):
        with pytest.raises(ValueError, match="train_per_class must be a non-negative int"):
            get_dataset("cifar10", tmp_path, train_per_class=bad, cache_dir=tmp_path / "c")


def test_wrong_class_count(tmp_path):
    write_image_folder(tmp_path / "train", ["a", "b", "c"], per_class=1)
    with pytest.raises(ValueError, match="cifar10 needs 10 classes.*has 3"):
        get_dataset("cifar10", tmp_path, cache_dir=tmp_path / "c")


def test_missing_dataset_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        get_dataset("cifar10", tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "cifar-10-python.tar.gz" in msg and "--download" in msg
    assert "train/<class>" in msg
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        get_dataset("cifar100", tmp_path)
    write_image_folder(tmp_path / "x" / "train", ["cat", "dog"], per_class=1)
    with pytest.raises(DatasetNotFoundError, match="looks like a folder of class folders: pass its parent"):
        get_dataset("cifar10", tmp_path / "x" / "train")


def _serve_archive(monkeypatch, archive: bytes, md5: str) -> list:
    """Make download_cifar fetch ``archive`` from memory (no network) and expect ``md5``."""
    import io

    from tna_kernels.data import cifar

    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(archive)

    monkeypatch.setattr(cifar.urllib.request, "urlopen", fake_urlopen)
    url, _, sub = cifar.CIFAR_URLS["cifar10"]
    monkeypatch.setitem(cifar.CIFAR_URLS, "cifar10", (url, md5, sub))
    return calls


def test_download_cifar_checks_md5_and_unpacks(tmp_path, monkeypatch):
    import hashlib
    import io
    import tarfile

    from tna_kernels.data import download_cifar

    write_cifar10_batches(tmp_path / "src" / "cifar-10-batches-py", per_batch=3)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = buf.getvalue()
    root = tmp_path / "root"
    # A damaged download (md5 mismatch) is refused and leaves nothing behind.
    _serve_archive(monkeypatch, archive, "0" * 32)
    with pytest.raises(OSError, match="md5"):
        download_cifar(root, "cifar10")
    assert os.listdir(root) == []
    calls = _serve_archive(monkeypatch, archive, hashlib.md5(archive).hexdigest())
    folder = download_cifar(root, "cifar10")
    assert folder == root / "cifar-10-batches-py" and calls == [
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    ]
    ds = get_dataset("cifar10", root)
    assert len(ds.train) == 15 and len(ds.test) == 3
    download_cifar(root, "cifar10")  # already complete: no second fetch
    assert len(calls) == 1
    # get_dataset(download=True) on a missing copy goes through the same path.
    ds2 = get_dataset("cifar10", tmp_path / "other", download=True)
    assert len(ds2.train) == 15 and len(calls) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        get_dataset("mnist")
    with pytest.raises(TypeError, match="frames_number"):
        get_dataset("digits", frames_number=3)
    with pytest.raises(ValueError, match="val_mode must be"):
        get_dataset("digits", val_mode="first")
    with pytest.raises(ValueError, match="val_per_class must be"):
        get_dataset("digits", val_per_class=-1)


# ------------------------------------------------------------------------------------------- splits


def test_split_per_class_random_and_last():
    t = torch.tensor([0, 1, 2] * 10)
    keep, held = split_per_class(t, 3, "random", seed=4)
    keep2, held2 = split_per_class(t, 3, "random", seed=4)
    _, held3 = split_per_class(t, 3, "random", seed=5)
    assert np.array_equal(held, held2) and np.array_equal(keep, keep2) and not np.array_equal(held, held3)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(30))
    assert np.bincount(t[held].numpy()).tolist() == [3, 3, 3]
    _, last = split_per_class(t, 2, "last")
    assert last.tolist() == [24, 25, 26, 27, 28, 29]
    with pytest.raises(ValueError, match="val_per_class=10 leaves no training sample"):
        split_per_class(t, 10)
    with pytest.raises(ValueError, match="val_mode"):
        split_per_class(t, 1, "middle")


# --------------------------------------------------------------------------------------- augmentation


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """img [C, H, W] content moved so that out[y, x] = img[y + dy, x + dx] (zero outside)."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    ys, ye = max(0, -dy), min(h, h - dy)
    xs, xe = max(0, -dx), min(w, w - dx)
    out[:, ys:ye, xs:xe] = img[:, ys + dy : ye + dy, xs + dx : xe + dx]
    return out


def test_random_crop_is_a_zero_padded_shift():
    x = torch.randint(1, 256, (16, 3, 10, 12), dtype=torch.uint8)  # no zeros, so the padding is visible
    out = random_crop(x, 2, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == torch.uint8
    offsets = []
    for n in range(16):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out[n], _shift(x[n], dy, dx))
        ]
        assert len(matches) == 1, n
        offsets.append(matches[0])
    assert len(set(offsets)) > 3  # per-sample offsets, not one for the batch


def test_random_crop_extra_dims_share_offset():
    x = torch.rand(5, 4, 2, 9, 9) + 1  # [N, T, C, H, W]
    out = random_crop(x, 3, torch.Generator().manual_seed(0))
    for n in range(5):
        hits = [
            (dy, dx)
            for dy in range(-3, 4)
            for dx in range(-3, 4)
            if torch.equal(out[n].reshape(8, 9, 9), _shift(x[n].reshape(8, 9, 9), dy, dx))
        ]
        assert len(hits) == 1


def test_augment_deterministic_under_generator():
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    aug = Augment(padding=2, flip=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.shape == x.shape
    assert a.min() >= (0 - 0.5) / 0.25 and a.max() <= (1 - 0.5) / 0.25


def test_augment_matches_composition_of_the_parts():
    x = torch.randint(0, 256, (64, 3, 10, 10), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    for pad, flip in ((3, True), (0, True), (3, False), (0, False)):
        got = Augment(pad, flip, mean, std)(x, torch.Generator().manual_seed(11))
        g = torch.Generator().manual_seed(11)
        ref = x
        if pad:
            ref = random_crop(ref, pad, g)
        if flip:
            ref = random_hflip(ref, g)
        ref = normalize(to_float(ref), mean, std)
        assert torch.allclose(got, ref, atol=1e-5), (pad, flip)
    frames = torch.rand(4, 3, 2, 6, 6, dtype=torch.float16)
    out = Augment(0, False, channel_dim=2)(frames)
    assert out.dtype == torch.float32 and torch.equal(out, frames.float())  # frames are not rescaled
    with pytest.raises(ValueError, match="3 entries but dim 1 of the batch has 1"):
        Augment(0, False, mean, std)(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


def test_hflip_probability_and_content():
    x = torch.arange(2000 * 4, dtype=torch.float32).reshape(2000, 1, 2, 2)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped ^ same).all())
    assert 0.45 < flipped.float().mean().item() < 0.55
    assert torch.equal(random_hflip(x, p=1.0), x.flip(-1)) and torch.equal(random_hflip(x, p=0.0), x)


def test_to_float_and_normalize():
    x = torch.tensor([[[[0, 255]]], [[[51, 102]]]], dtype=torch.uint8)
    f = to_float(x)
    assert f.dtype == torch.float32 and f.max() == 1.0 and f.min() == 0.0
    y = torch.randn(64, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + torch.tensor(
        [5.0, -1.0, 0.0]
    ).view(1, 3, 1, 1)
    m = y.mean((0, 2, 3)).tolist()
    s = y.std((0, 2, 3)).tolist()
    z = normalize(y, m, s)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="3 entries"):
        normalize(y, [0.0], [1.0])
    with pytest.raises(TypeError, match="to_float first"):
        normalize(x, [0.0], [1.0])


# -------------------------------------------------------------------------------------------- loader


def _toy(n=50):
    return ArrayDataset(
        torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone(),
        torch.arange(n) % 5,
        [str(i) for i in range(5)],
    )


def test_loader_epoch_covers_all_and_is_reproducible():
    ds = _toy()
    loader = BatchLoader(ds, 16, shuffle=True, seed=3)
    assert len(loader) == 4
    ep0 = [y.clone() for _, y in loader]
    assert [len(y) for y in ep0] == [16, 16, 16, 2]
    ids0 = torch.cat([x[:, 0, 0, 0] for x, _ in BatchLoader(ds, 16, shuffle=True, seed=3)])
    assert sorted((ids0 * 255).round().long().tolist()) == list(range(50))
    ep1 = [y.clone() for _, y in loader]  # the loader advanced to epoch 1: a new order
    assert not all(torch.equal(a, b) for a, b in zip(ep0, ep1, strict=True))
    resumed = BatchLoader(ds, 16, shuffle=True, seed=3)
    resumed.load_state_dict({"epoch": 1, "seed": 3})
    assert all(torch.equal(a, b) for a, b in zip(ep1, (y for _, y in resumed), strict=True))
    assert loader.state_dict() == {"epoch": 2, "seed": 3}


def test_loader_preload_same_batches():
    ds = _toy()
    aug = Augment(padding=1, flip=True)
    a = list(BatchLoader(ds, 16, shuffle=True, seed=2, augment=aug))
    b = list(BatchLoader(ds, 16, shuffle=True, seed=2, augment=aug, device="cpu", preload=True))
    assert len(a) == len(b) == 4
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))


def test_loader_drop_last_max_batches_and_order():
    ds = _toy()
    assert len(BatchLoader(ds, 16, drop_last=True)) == 3
    lim = BatchLoader(ds, 8, max_batches=2)
    assert len(lim) == 2 and sum(1 for _ in lim) == 2
    ys = torch.cat([y for _, y in BatchLoader(ds, 7)])
    assert torch.equal(ys, ds.targets)  # no shuffle: dataset order
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(ds, 0)


# -------------------------------------------------------------------------------------------- digits


def test_digits_offline_fixed_split():
    pytest.importorskip("sklearn")
    a = get_dataset("digits")
    b = get_dataset("digits", seed=123)
    assert len(a.train) + len(a.test) == 1797 and a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.test.data, b.test.data) and torch.equal(a.train.targets, b.train.targets)
    # Stratified ~80/20: every class has 20% (rounded) of its images in test.
    from sklearn.datasets import load_digits

    full = np.bincount(load_digits().target)
    assert a.test.class_counts() == [int(round(0.2 * n)) for n in full]
    assert a.train.data.dtype == torch.uint8 and int(a.train.data.max()) == 255
    # The test images are not in train.
    tr = {bytes(r) for r in a.train.data.flatten(1).numpy()}
    te = [bytes(r) for r in a.test.data.flatten(1).numpy()]
    assert sum(r in tr for r in te) < 10  # only exact duplicate digits in the source could collide
    v = get_dataset("digits", val_per_class=5, seed=1)
    assert len(v.val) == 50 and len(v.train) == len(a.train) - 50
    x, y = next(iter(v.loader("train", 64)))
    assert x.shape == (64, 1, 8, 8) and abs(x.mean().item()) < 0.5


# ------------------------------------------------------------------------------------- real CIFAR-10


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_CIFAR / "train").is_dir(), reason="the shared CIFAR-10 JPEG copy is not here")
def test_real_cifar10_jpeg(tmp_path, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("decodes 50,000 JPEGs: run with -m slow")
    ds = get_dataset(
        "cifar10",
        REAL_CIFAR,
        val_per_class=500,
        val_mode="last",
        cache_dir=os.environ.get("TNA_CACHE", tmp_path),
    )
    assert len(ds.train) == 45000 and len(ds.val) == 5000
    assert ds.train.class_counts() == [4500] * 10 and ds.val.class_counts() == [500] * 10
    assert ds.train.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    mean = ds.train.data.float().div(255).mean((0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.489, 0.481, 0.447]), atol=0.01)


@pytest.mark.cuda
def test_loader_on_cuda_matches_cpu():
    """Random draws come from the CPU generator, so the GPU loader (copied per batch or preloaded)
    yields the CPU loader's batches."""
    ds = ArrayDataset(
        torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8), torch.arange(300) % 10, list("abcdefghij")
    )
    aug = Augment(4, True, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    cpu = list(BatchLoader(ds, 64, shuffle=True, seed=1, augment=aug))
    for preload in (False, True):
        gpu = list(BatchLoader(ds, 64, shuffle=True, seed=1, augment=aug, device="cuda", preload=preload))
        assert len(gpu) == len(cpu)
        for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
            assert xg.is_cuda and yg.is_cuda
            assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)
