"""Bad files: every damaged input gives the library's own error naming the file (or, for image
trees and on request, is skipped and reported), never an interpreter crash, never code execution,
and a failed checkpoint write never replaces a good checkpoint.

Covered here (the neighbouring files already cover a planted pickle in a CIFAR batch and in a
checkpoint, a non-JPEG ``.jpg``, an image of another size, a truncated ``.aedat`` payload and a
truncated / deleted checkpoint): truncated JPEG / PNG files, the opt-in skip of bad images,
truncated and fuzzed CIFAR python batches, garbage CIFAR10-DVS files, checkpoint JSON damage,
interrupted checkpoint writes, packed-model damage (version, architecture, missing tensors,
flipped bytes), and a seeded fuzz of checkpoint and packed files. Everything is built in tmp_path.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tna_kernels.data import (
    CorruptFileError,
    CorruptImageError,
    get_dataset,
    load_image_folder,
    read_cifar_batches,
)
from tna_kernels.data.dvs import DVS_CLASSES, load_cifar10_dvs, read_aedat_events
from tna_kernels.models import SpikingVGG
from tna_kernels.train import CheckpointError, PackedModelError, checkpoint, load_model
from tna_kernels.train.export import _tensors_sha256, export_packed, load_packed

PIL = pytest.importorskip("PIL.Image")

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def mutate(raw: bytes, rng: random.Random, lo: int, hi: int) -> bytes:
    """One seeded mutation inside ``raw[lo:hi]``: bit flips, a random byte, a truncation, an
    insertion or a deletion."""
    b = bytearray(raw)
    kind = rng.randrange(5)
    pos = rng.randrange(lo, hi)
    if kind == 0:
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    elif kind == 1:
        b[pos] = (b[pos] + rng.randrange(1, 256)) % 256
    elif kind == 2:
        del b[pos:]
    elif kind == 3:
        b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    else:
        del b[pos : pos + rng.randint(1, 8)]
    return bytes(b)


# ------------------------------------------------------------------------------------ image trees


def write_images(root: Path, classes, per_class: int, fmt: str = "jpg", seed: int = 0) -> dict:
    """``root/<class>/<i>.<fmt>``, random 32x32 RGB; returns {path: HWC uint8} of what was written."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            p = root / c / f"{i}.{fmt}"
            PIL.fromarray(arr).save(p)
            out[p] = np.asarray(PIL.open(p).convert("RGB"))  # as decoded (JPEG is lossy)
    return out


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_image_names_the_file(tmp_path, fmt):
    write_images(tmp_path / "train", ["a", "b"], per_class=3, fmt=fmt)
    truncate(tmp_path / "train" / "b" / f"2.{fmt}")
    with pytest.raises(CorruptImageError, match=rf"b/2\.{fmt}") as e:
        load_image_folder(tmp_path / "train", cache_dir=tmp_path / "c", workers=2)
    assert isinstance(e.value, CorruptFileError) and isinstance(e.value, ValueError)
    assert not (tmp_path / "c").exists() or not os.listdir(tmp_path / "c")  # nothing cached
    truncate(tmp_path / "train" / "a" / f"0.{fmt}")  # the first file (decoded before the others)
    with pytest.raises(CorruptImageError, match=rf"a/0\.{fmt}"):
        load_image_folder(tmp_path / "train", cache_dir=tmp_path / "c")


def _damage_tree(train: Path) -> set[str]:
    """A truncated JPEG, a garbage JPEG, an image of another size, and a damaged first file."""
    truncate(train / "a" / "0.jpg", 0.3)
    (train / "b" / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3)
    PIL.fromarray(np.zeros((16, 16, 3), np.uint8)).save(train / "b" / "3.jpg")
    truncate(train / "c" / "2.jpg", 0.6)
    return {os.path.join("a", "0.jpg"), os.path.join("b", "1.jpg"), os.path.join("b", "3.jpg"),
            os.path.join("c", "2.jpg")}


def test_skip_bad_images_leaves_them_out_counts_and_warns(tmp_path):
    written = write_images(tmp_path / "train", ["a", "b", "c"], per_class=4)
    bad = _damage_tree(tmp_path / "train")
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match=r"skipped 4 unreadable image file\(s\).*a/0\.jpg") as rec:
        ds, info = load_image_folder(tmp_path / "train", cache_dir=cache, workers=2, skip_bad_images=True)
    assert any("(and 1 more)" in str(w.message) for w in rec)
    assert info["skipped_images"] == 4 and set(info["skipped_files"]) == bad and info["cache"] == "miss"
    assert len(ds) == 8 and ds.class_counts() == [3, 2, 3] and ds.classes == ["a", "b", "c"]
    good = [p for p in written if os.path.relpath(p, tmp_path / "train") not in bad]
    for k, p in enumerate(sorted(good, key=lambda p: (p.parent.name, int(p.stem)))):
        assert np.array_equal(ds.data[k].permute(1, 2, 0).numpy(), written[p]), p  # order kept
    # A cache hit reports (and warns about) the same files.
    with pytest.warns(UserWarning, match="skipped 4"):
        ds2, info2 = load_image_folder(tmp_path / "train", cache_dir=cache, skip_bad_images=True)
    assert info2["cache"] == "hit" and info2["skipped_files"] == info["skipped_files"]
    assert torch.equal(ds2.data, ds.data) and torch.equal(ds2.targets, ds.targets)
    # A strict load never reads the entry that left files out.
    with pytest.raises(CorruptImageError, match=r"\.jpg"):
        load_image_folder(tmp_path / "train", cache_dir=cache)


def test_skip_bad_images_clean_tree_and_all_bad(tmp_path):
    write_images(tmp_path / "train", ["a"], per_class=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when nothing is skipped
        ds, info = load_image_folder(tmp_path / "train", cache_dir=tmp_path / "c", skip_bad_images=True)
    assert len(ds) == 2 and info["skipped_images"] == 0 and info["skipped_files"] == []
    for p in (tmp_path / "train" / "a").iterdir():
        p.write_bytes(b"not an image")
    with pytest.raises(CorruptImageError, match=r"none of the 2 image files.*a/0\.jpg"):
        load_image_folder(tmp_path / "train", cache_dir=tmp_path / "c", skip_bad_images=True)


def test_skip_bad_images_through_get_dataset_and_the_training_config(tmp_path, monkeypatch):
    write_images(tmp_path / "train", CIFAR10, per_class=2)
    write_images(tmp_path / "test", CIFAR10, per_class=1, seed=1)
    truncate(tmp_path / "train" / "cat" / "1.jpg")
    truncate(tmp_path / "test" / "ship" / "0.jpg")
    with pytest.raises(CorruptImageError, match=r"cat/1\.jpg"):
        get_dataset("cifar10", tmp_path, cache_dir=tmp_path / "c")  # strict by default
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = get_dataset("cifar10", tmp_path, cache_dir=tmp_path / "c", skip_bad_images=True)
    assert len(ds.train) == 19 and len(ds.test) == 9 and ds.info["skipped_images"] == 2
    assert ds.info["skipped_files"] == [os.path.join("train", "cat", "1.jpg"), os.path.join("test", "ship", "0.jpg")]
    # The trainer passes data.options to get_dataset.
    from tna_kernels.train import Trainer, load_config

    monkeypatch.setenv("TNA_CACHE", str(tmp_path / "c2"))
    cfg = load_config(None, ["data.name=cifar10", f"data.root={tmp_path}", "data.options.skip_bad_images=true",
                             "model.arch=digits", "model.T=1", f"out_dir={tmp_path / 'runs'}", "train.progress=false"])
    with pytest.warns(UserWarning, match="skipped 1"):
        trainer = Trainer(cfg)
    assert trainer.data.info["skipped_images"] == 2 and len(trainer.data.train) == 19


# ----------------------------------------------------------------------------- CIFAR python batches


def write_batches(folder: Path, per_batch: int = 4) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
             b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR10], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch", "batches.meta"])
@pytest.mark.parametrize("keep", [0.0, 0.02, 0.5, 0.999])
def test_truncated_cifar_batch_names_the_file(tmp_path, name, keep):
    write_batches(tmp_path / "b")
    truncate(tmp_path / "b" / name, keep)
    with pytest.raises(CorruptFileError, match=rf"b/{name} is not a readable CIFAR python batch file"):
        read_cifar_batches(tmp_path / "b", "cifar10")


@pytest.mark.parametrize("payload,match", [
    # An allowed global called with arguments it rejects (LookupError: unknown codec).
    (b"c_codecs\nencode\n(Vabc\nVno-such-codec\ntR.", "LookupError"),
    (pickle.dumps([1, 2, 3], protocol=2), "holds a list, not a dict"),
    (pickle.dumps({b"data": np.full((2, 3072), 300, np.int64), b"labels": [0, 1]}, protocol=2), "0..255"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, protocol=2), "0..255"),
    (pickle.dumps({b"data": [["x"] * 3072] * 2, b"labels": [0, 1]}, protocol=2), "0..255"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": {1: 2}}, protocol=2), "not arrays"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 2**70]}, protocol=2), "not arrays"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": 3}, protocol=2), "flat list"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2),
     r"labels outside \[0, 10\)"),
    (pickle.dumps({1: 2, "a": 3}, protocol=2), "lacks the 'data'"),
])
def test_cifar_batch_with_bad_content_names_the_file(tmp_path, payload, match):
    write_batches(tmp_path / "b")
    (tmp_path / "b" / "data_batch_4").write_bytes(payload)
    with pytest.raises(CorruptFileError, match=rf"data_batch_4.*{match}"):
        read_cifar_batches(tmp_path / "b", "cifar10")


@pytest.mark.parametrize("names,match", [(5, "not a list"), ([b"\xff\xfe"] * 10, "not UTF-8")])
def test_cifar_meta_with_bad_names(tmp_path, names, match):
    write_batches(tmp_path / "b")
    (tmp_path / "b" / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    with pytest.raises(CorruptFileError, match=rf"batches\.meta.*{match}"):
        read_cifar_batches(tmp_path / "b", "cifar10")


def test_fuzzed_cifar_batch_gives_only_clean_errors(tmp_path):
    """Seeded byte flips, truncations and insertions, mostly in the pickle's structure (the first
    few hundred bytes); a mutation that still parses must give arrays of the right shape."""
    write_batches(tmp_path / "b", per_batch=3)
    f = tmp_path / "b" / "data_batch_1"
    raw = f.read_bytes()
    rng = random.Random(17)
    loaded = 0
    for i in range(150):
        f.write_bytes(mutate(raw, rng, 0, 400 if i % 4 else len(raw)))
        try:
            train, test = read_cifar_batches(tmp_path / "b", "cifar10")
        except CorruptFileError as exc:
            assert "data_batch_1" in str(exc)
            continue
        loaded += 1
        assert train.data.shape[1:] == (3, 32, 32) and train.data.dtype == torch.uint8
        assert train.targets.shape == (train.data.shape[0],)
    assert loaded < 150


# --------------------------------------------------------------------------------------- CIFAR10-DVS


def write_dvs_tree(root: Path) -> None:
    header = b"#!AER-DAT2.0\r\n# Timestamps tick is 1 us\r\n"
    for c, name in enumerate(DVS_CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(2):
            words = np.array([(c << 1) | 1, 10, (i << 8), 20], dtype=">u4")
            (root / name / f"cifar10_{name}_{i}.aedat").write_bytes(header + words.tobytes())


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npz_with_pickled_object(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k in "txyp":
            member = io.BytesIO()
            np.save(member, np.array([Evil()], dtype=object), allow_pickle=True)
            z.writestr(f"{k}.npy", member.getvalue())
    return buf.getvalue()


def test_garbage_event_files_name_the_file(tmp_path):
    rng = np.random.default_rng(3)
    marker = tmp_path / "pwned"
    ok = np.arange(4)
    cases = {
        "random.aedat": (b"\0" + rng.integers(0, 256, 8 * 50 + 3, dtype=np.uint8).tobytes(), "not a whole number"),
        "header_never_ends.aedat": (b"#!AER-DAT2.0" + rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
                                    .replace(b"\n", b"x"), "never ends"),
        "garbage.npz": (rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), "not a readable event .npz"),
        "zip_damaged.npz": (_npz_bytes(t=ok, x=ok, y=ok, p=ok % 2)[:150], "not a readable event .npz"),
        "missing_key.npz": (_npz_bytes(t=ok, x=ok, y=ok), "not a readable event .npz"),
        "pickled.npz": (_npz_with_pickled_object(marker), "not a readable event .npz"),
        "two_dim.npz": (_npz_bytes(t=ok[None], x=ok[None], y=ok[None], p=ok[None] % 2), "1-D"),
        "out_of_sensor.npz": (_npz_bytes(t=ok, x=ok * 100, y=ok, p=ok % 2), "outside the 128x128 sensor"),
    }
    for name, (content, match) in cases.items():
        f = tmp_path / name
        f.write_bytes(content)
        with pytest.raises(CorruptFileError, match=rf"{name}.*{match}"):
            read_aedat_events(f)
    assert not marker.exists()


def test_garbage_event_file_in_the_tree_is_named_and_nothing_cached(tmp_path):
    write_dvs_tree(tmp_path / "dvs")
    bad = tmp_path / "dvs" / "horse" / "cifar10_horse_1.npz"
    bad.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(CorruptFileError, match=r"cifar10_horse_1\.npz"):
        load_cifar10_dvs(tmp_path / "dvs", frames_number=2, size=16, cache_dir=tmp_path / "c", workers=2)
    assert not (tmp_path / "c").exists()
    bad.unlink()
    train, test, _ = load_cifar10_dvs(tmp_path / "dvs", frames_number=2, size=16, cache_dir=tmp_path / "c")
    assert len(train) + len(test) == 20


# ------------------------------------------------------------------------------------- checkpoints


def tiny_model(seed: int = 0, **kw) -> SpikingVGG:
    torch.manual_seed(seed)
    return SpikingVGG("digits", in_channels=1, input_size=8, T=2, **kw)


def checkpoint_state(model) -> tuple[dict, dict]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    state = {"base": model.state_dict(), "optim": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": 1}
    return state, {"model_config": model.config, "history": [{"epoch": 1, "train_loss": 0.5}]}


def tensors_of(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_of(v)]
    if isinstance(obj, list):
        return [t for v in obj for t in tensors_of(v)]
    return []


def same_state(a, b) -> bool:
    ta, tb = tensors_of(a), tensors_of(b)
    return len(ta) == len(tb) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(ta, tb, strict=True))


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    state, meta = checkpoint_state(tiny_model())
    path = checkpoint.save(folder / "ck", state, meta)
    return path, state, meta


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(edit(doc)))


@pytest.mark.parametrize("edit,match", [
    (lambda raw: raw.replace(b'"vgg"', b'"v\xffg"'), "unreadable JSON"),  # invalid UTF-8
    (lambda raw: raw[: len(raw) // 2], "unreadable JSON"),
    (lambda raw: b"[1, 2, 3]", "not a tna_kernels checkpoint"),
    (lambda raw: raw.replace(b"checkpoint/1", b"checkpoint/2"), "checkpoint format 'tna_kernels.checkpoint/2'"),
])
def test_damaged_checkpoint_json(tmp_path, saved_checkpoint, edit, match):
    src, _, _ = saved_checkpoint
    path = checkpoint.save(tmp_path / "ck", *checkpoint.load(src))
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(CheckpointError, match=match) as e:
        checkpoint.load(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("edit,match", [
    (lambda d: {k: v for k, v in d.items() if k != "state"}, "'state' or 'meta' record"),
    (lambda d: {**d, "meta": [1]}, "'state' or 'meta' record"),
    (lambda d: {**d, "state": {**d["state"], "extra": {"__tensor__": "s.nowhere"}}}, "tensor 's.nowhere'"),
    (lambda d: {**d, "state": {**d["state"], "extra": {"__tensor__": ["s.base"]}}}, "malformed state"),
    (lambda d: {**d, "state": {**d["state"], "extra": {"__intkeys__": {"x": 1}}}}, "malformed state"),
    (lambda d: {**d, "state": {**d["state"], "extra": {"__intkeys__": [1]}}}, "malformed state"),
])
def test_checkpoint_json_with_bad_structure(tmp_path, saved_checkpoint, edit, match):
    src, _, _ = saved_checkpoint
    path = checkpoint.save(tmp_path / "ck", *checkpoint.load(src))
    _edit_json(path, edit)
    with pytest.raises(CheckpointError, match=match) as e:
        checkpoint.load(path)
    assert str(path) in str(e.value)


def test_checkpoint_with_missing_tensors_or_of_another_architecture(tmp_path):
    model = tiny_model()
    state, meta = checkpoint_state(model)
    # Another architecture: the weights of one model with the config of a wider one.
    wide = tiny_model(width_mult=2.0)
    path = checkpoint.save(tmp_path / "other", {"base": state["base"]}, {"model_config": wide.config})
    with pytest.raises(CheckpointError, match=r"other\.json.*do not fit the recorded architecture"):
        load_model(path)
    # A consistent pair (checksum and all) whose base model lacks a tensor.
    base = {k: v for k, v in state["base"].items() if k != "classifier.weight"}
    path = checkpoint.save(tmp_path / "missing", {"base": base}, meta)
    with pytest.raises(CheckpointError, match=r"(?s)missing\.json.*classifier\.weight"):
        load_model(path)


class _Boom(Exception):
    pass


def _partial_save_file(tensors, filename, *args, **kwargs):
    with open(filename, "wb") as f:
        f.write(b"\x00" * 100)  # half-written, then the writer dies
    raise _Boom("disk full")


@pytest.mark.parametrize("where", ["weights", "json", "replace_json", "interrupt"])
def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, saved_checkpoint, monkeypatch, where):
    src, state, meta = saved_checkpoint
    path = checkpoint.save(tmp_path / "ck", state, meta)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    new_state, new_meta = checkpoint_state(tiny_model(seed=1))
    if where == "weights":
        monkeypatch.setattr(checkpoint, "save_file", _partial_save_file)
    elif where in ("json", "interrupt"):
        exc = _Boom("disk full") if where == "json" else KeyboardInterrupt()

        def fail_write_text(self, *a, **k):
            self.write_bytes(b'{"format": "tna_k')  # a partial temp JSON
            raise exc

        monkeypatch.setattr(Path, "write_text", fail_write_text)
    else:
        real_replace = os.replace

        def replace(a, b):
            if str(b).endswith(".json"):
                raise _Boom("rename failed")
            return real_replace(a, b)

        monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises((_Boom, KeyboardInterrupt)):
        checkpoint.save(tmp_path / "ck", new_state, new_meta)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files either
    got, got_meta = checkpoint.load(path)
    assert same_state(got, state) and got_meta == json.loads(json.dumps(meta))
    checkpoint.save(tmp_path / "ck", new_state, new_meta)  # and the next save works
    assert same_state(checkpoint.load(path)[0], new_state)


# -------------------------------------------------------------------------------------- packed models


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("packed")
    model = tiny_model().eval()
    export_packed(model, folder / "m.safetensors")
    shapes = {k: v.shape for k, v in load_packed(folder / "m.safetensors").state_dict().items()}
    return folder / "m.safetensors", model, shapes


def rewrite(src: Path, dst: Path, meta_edit=None, tensors_edit=None, resum: bool = False) -> Path:
    """A copy of a safetensors file with edited metadata / tensors, written by the real writer;
    ``resum`` recomputes the checksum so that only the edit itself is wrong."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = tensors_edit(tensors) if tensors_edit else tensors
    meta = meta_edit(meta) if meta_edit else meta
    if resum:
        meta["tensors_sha256"] = _tensors_sha256(tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _drop(key):
    return lambda t: {k: v for k, v in t.items() if k != key}


def _config(**kw):
    return lambda m: {**m, "model_config": json.dumps({**json.loads(m["model_config"]), **kw})}


@pytest.mark.parametrize("meta_edit,tensors_edit,resum,match", [
    (lambda m: {**m, "format": "tna_kernels.packed_model/2"}, None, False,
     "packed-model format 'tna_kernels.packed_model/2'"),
    (lambda m: {**m, "format": "something.else/1"}, None, False, "not a tna_kernels packed model"),
    (lambda m: {**m, "ternary_format_version": "2"}, None, False, "packed format v2; this build reads v1"),
    (lambda m: {k: v for k, v in m.items() if k != "ternary_format_version"}, None, False, "packed format vNone"),
    (_config(width_mult=2.0), None, False, "do not fit the recorded architecture"),
    (_config(arch="nope"), None, False, "architecture this build cannot build"),
    (_config(bogus=1), None, False, "architecture this build cannot build"),
    (lambda m: {**m, "model_config": "{oops"}, None, False, "no readable model_config"),
    (lambda m: {**m, "packed_layers": json.dumps({"features.9": {"K": 1, "shape": [1]}})}, None, False,
     "'features.9' is not a ternary layer"),
    (lambda m: {**m, "packed_layers": json.dumps({"classifier": {"K": 3, "shape": [10, 3]}})}, None, False,
     "packed layer records are damaged"),
    (None, _drop("features.2.bn.bias"), True, r"(?s)missing tensors.*features\.2\.bn\.bias"),
    (None, _drop("classifier.words"), True, "lacks the packed tensor or record 'classifier.words'"),
    (None, lambda t: {**t, "classifier.scale": t["classifier.scale"] * 2}, False, "do not match the file's checksum"),
])
def test_damaged_packed_model(tmp_path, packed_file, meta_edit, tensors_edit, resum, match):
    dst = rewrite(packed_file[0], tmp_path / "bad.safetensors", meta_edit, tensors_edit, resum)
    with pytest.raises(PackedModelError, match=match) as e:
        load_packed(dst)
    assert str(dst) in str(e.value)


def test_packed_file_that_is_not_safetensors(tmp_path):
    for name, content in {"empty": b"", "text": b"hello", "pickle": pickle.dumps({"a": 1}),
                          "huge_header": (2**62).to_bytes(8, "little") + b"{}"}.items():
        f = tmp_path / f"{name}.safetensors"
        f.write_bytes(content)
        with pytest.raises(PackedModelError, match=rf"{name}\.safetensors is not a readable safetensors file"):
            load_packed(f)
    with pytest.raises(FileNotFoundError):
        load_packed(tmp_path / "absent.safetensors")


def test_legacy_packed_file_without_checksum_checks_the_words(tmp_path, packed_file):
    """Files exported before the checksum load unverified; words with a bit in both planes are still
    refused (by the packed-format check), with the file named."""
    src, model, _ = packed_file
    legacy = rewrite(src, tmp_path / "legacy.safetensors", lambda m: {k: v for k, v in m.items()
                                                                     if k != "tensors_sha256"})
    restored = load_packed(legacy)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), model(x))

    def both_planes(t):
        w = t["classifier.words"].clone()
        w[0, :, 0] |= 1  # weight 0 of row 0 set in both the P and the N plane
        return {**t, "classifier.words": w}

    bad = rewrite(legacy, tmp_path / "bad.safetensors", tensors_edit=both_planes)
    with pytest.raises(PackedModelError, match=r"bad\.safetensors.*classifier"):
        load_packed(bad)


# ------------------------------------------------------------------------------------------- fuzzing


def _header_end(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


def test_fuzzed_checkpoints_and_packed_models_give_only_clean_errors(tmp_path, saved_checkpoint, packed_file):
    """~400 seeded mutations of a checkpoint's JSON and tensor file and of a packed model (with and
    without its checksum), in the headers and in the tensor data. Only the library's errors are
    accepted; a load that succeeds must give tensors of the shapes that were saved; a damaged
    checksummed tensor file must never load."""
    rng = random.Random(2024)
    src_json, state, _ = saved_checkpoint
    ck_json = checkpoint.save(tmp_path / "ck", state, checkpoint.load(src_json)[1])
    ck_weights = ck_json.with_suffix(".safetensors")
    saved_shapes = sorted(tuple(t.shape) for t in tensors_of(state))
    src_packed, _, packed_shapes = packed_file
    packed = rewrite(src_packed, tmp_path / "p.safetensors")
    legacy = rewrite(src_packed, tmp_path / "legacy.safetensors",
                     lambda m: {k: v for k, v in m.items() if k != "tensors_sha256"})

    def check_checkpoint(region):
        try:
            got, _ = checkpoint.load(ck_json)
        except CheckpointError:
            return "error"
        assert region == "json", "a damaged tensor file loaded"
        for t in tensors_of(got):  # the JSON may re-route keys, but the tensors are the saved ones
            assert tuple(t.shape) in saved_shapes
        return "ok"

    def check_packed(path, checksummed):
        def run(region):
            try:
                model = load_packed(path)
            except PackedModelError as exc:
                assert str(path) in str(exc)
                return "error"
            assert not (checksummed and region == "data"), "a damaged checksummed packed model loaded"
            assert {k: v.shape for k, v in model.state_dict().items()} == packed_shapes
            return "ok"
        return run

    targets = [
        (ck_json, lambda raw: (0, len(raw)), "json", check_checkpoint, 80),
        (ck_weights, lambda raw: (0, _header_end(raw)), "header", check_checkpoint, 30),
        (ck_weights, lambda raw: (_header_end(raw), len(raw)), "data", check_checkpoint, 30),
        (packed, lambda raw: (0, _header_end(raw)), "header", check_packed(packed, True), 80),
        (packed, lambda raw: (_header_end(raw), len(raw)), "data", check_packed(packed, True), 60),
        (legacy, lambda raw: (0, _header_end(raw)), "header", check_packed(legacy, False), 60),
        (legacy, lambda raw: (_header_end(raw), len(raw)), "data", check_packed(legacy, False), 60),
    ]
    outcomes = {}
    for path, region_of, region, check, n in targets:
        raw = path.read_bytes()
        lo, hi = region_of(raw)
        for i in range(n):
            damaged = mutate(raw, rng, lo, hi)
            if damaged == raw:
                continue
            path.write_bytes(damaged)
            try:
                result = check(region)
            except (CheckpointError, PackedModelError):
                raise
            except BaseException as exc:
                pytest.fail(f"{path.name} {region} mutation {i}: {type(exc).__name__}: {exc}")
            outcomes.setdefault((path.name, region), []).append(result)
        path.write_bytes(raw)
    assert sum(len(v) for v in outcomes.values()) >= 380
    for key, results in outcomes.items():
        assert "error" in results, key  # every region's mutations were caught at least sometimes


def test_a_checkpoint_whose_model_config_cannot_be_built_names_the_file(tmp_path):
    from tna_kernels.train import CheckpointError, load_model
    from tna_kernels.train import checkpoint as ckpt

    for bad in ({"name": "vgg", "arch": "no-such-arch"}, {"arch": "digits"}, {"name": "vgg", "T": "four"}):
        path = ckpt.save(tmp_path / "bad", {"base": {"w": torch.zeros(1)}}, {"model_config": bad})
        with pytest.raises(CheckpointError, match=str(path.name)):
            load_model(path)
