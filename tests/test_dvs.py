"""CIFAR10-DVS: parsing event files written here in the release's format, framing by number and by
time against hand-computed frames, downsampling, the per-class 9:1 split, the cache, augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tna_kernels.data import DatasetNotFoundError, get_dataset
from tna_kernels.data.dvs import (
    DVS_CLASSES,
    events_to_frames,
    load_cifar10_dvs,
    read_aedat_events,
    segment_bounds,
)

HEADER = (
    b"#!AER-DAT2.0\r\n"
    b"# This is a raw AE data file - do not edit\r\n"
    b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
    b"# Timestamps tick is 1 us\r\n"
    b"# created Tue Jan 10 12:00:00 CST 2017\r\n"
)


def write_aedat(path: Path, xs, ys, pols, ts) -> None:
    """Sensor coordinates -> the release's address word: bit 0 polarity, bits 1-7 x, bits 8-14 y."""
    addr = (np.asarray(ys, np.uint32) << 8) | (np.asarray(xs, np.uint32) << 1) | np.asarray(pols, np.uint32)
    words = np.empty(2 * len(addr), dtype=">u4")
    words[0::2] = addr
    words[1::2] = np.asarray(ts, np.uint32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(HEADER + words.tobytes())


def test_parse_coordinates_and_polarity(tmp_path):
    f = tmp_path / "a.aedat"
    write_aedat(f, xs=[0, 5, 127], ys=[0, 9, 3], pols=[0, 1, 1], ts=[100, 250, 4_000_000_000])
    ev = read_aedat_events(f)
    # Read as x = 127 - y_sensor, y = 127 - x_sensor, p = 1 - polarity (SpikingJelly's convention).
    assert ev["x"].tolist() == [127, 118, 124]
    assert ev["y"].tolist() == [127, 122, 0]
    assert ev["p"].tolist() == [1, 0, 0]
    assert ev["t"].tolist() == [100, 250, 4_000_000_000]  # unsigned 32-bit timestamps


def test_header_variants_parse_alike(tmp_path):
    """Whatever the version line says, the '#' header lines are skipped and the payload read the same."""
    a, b = tmp_path / "a.aedat", tmp_path / "b.aedat"
    write_aedat(a, [3, 4], [5, 6], [0, 1], [10, 20])
    payload = a.read_bytes()[len(HEADER) :]
    b.write_bytes(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 0: DVS128\r\n#!END-HEADER\r\n" + payload)
    ea, eb = read_aedat_events(a), read_aedat_events(b)
    assert all(np.array_equal(ea[k], eb[k]) for k in "txyp")
    c = tmp_path / "c.aedat"
    c.write_bytes(payload)  # no header at all (the first address byte is not '#')
    assert np.array_equal(read_aedat_events(c)["x"], ea["x"])


def test_header_only_and_truncated_file(tmp_path):
    f = tmp_path / "empty.aedat"
    f.write_bytes(HEADER)
    assert all(len(v) == 0 for v in read_aedat_events(f).values())
    g = tmp_path / "cut.aedat"
    write_aedat(g, [1, 2], [1, 2], [0, 1], [1, 2])
    g.write_bytes(g.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"cut\.aedat: event payload of 13 bytes"):
        read_aedat_events(g)


def test_frames_split_by_number_hand_computed():
    # 10 events, 3 frames: N // M = 3 -> events [0,3), [3,6), [6,10).
    ev = {
        "t": np.arange(10),
        "x": np.array([1, 1, 2, 3, 3, 3, 0, 0, 0, 5]),
        "y": np.array([0, 0, 0, 4, 4, 4, 7, 7, 7, 7]),
        "p": np.array([0, 0, 1, 1, 1, 0, 0, 0, 1, 1]),
    }
    fr = events_to_frames(ev, 3, "number", size=8, sensor=8)
    expect = np.zeros((3, 2, 8, 8), np.float32)
    expect[0, 0, 0, 1] = 2  # two polarity-0 events at (y=0, x=1)
    expect[0, 1, 0, 2] = 1
    expect[1, 1, 4, 3] = 2
    expect[1, 0, 4, 3] = 1
    expect[2, 0, 7, 0] = 2
    expect[2, 1, 7, 0] = 1
    expect[2, 1, 7, 5] = 1  # the remainder event goes to the last frame
    assert np.array_equal(fr, expect)


def test_segment_bounds_time_hand_computed():
    t = np.array([0, 1, 2, 5, 6, 9, 10, 10])
    # dT = (10 - 0) // 3 = 3: [0,3) -> 0..2, [3,6) -> 3, [6, end] -> 4..7
    j_l, j_r = segment_bounds(t, 3, "time")
    assert j_l.tolist() == [0, 3, 4] and j_r.tolist() == [3, 4, 8]
    # An empty interval gives an empty frame.
    j_l, j_r = segment_bounds(np.array([0, 0, 0, 9]), 3, "time")
    assert j_l.tolist() == [0, 3, 3] and j_r.tolist() == [3, 3, 4]
    # Fewer events than frames, by number: N // M = 0, everything in the last frame.
    j_l, j_r = segment_bounds(np.array([4, 5]), 4, "number")
    assert j_l.tolist() == [0, 0, 0, 0] and j_r.tolist() == [0, 0, 0, 2]
    with pytest.raises(ValueError, match="split_by must be"):
        segment_bounds(t, 3, "count")
    with pytest.raises(ValueError, match="non-decreasing"):
        segment_bounds(np.array([3, 1]), 2, "time")


def test_frames_split_by_time_counts():
    ev = {
        "t": np.array([0, 1, 2, 5, 6, 9, 10, 10]),
        "x": np.zeros(8, int),
        "y": np.zeros(8, int),
        "p": np.ones(8, int),
    }
    fr = events_to_frames(ev, 3, "time", size=4, sensor=4)
    assert fr[:, 1, 0, 0].tolist() == [3, 1, 4] and fr[:, 0].sum() == 0


def test_time_split_orders_events_by_time():
    rng = np.random.default_rng(0)
    ev = {"t": rng.integers(0, 1000, 200), "x": rng.integers(0, 8, 200), "y": rng.integers(0, 8, 200)}
    ev["p"] = rng.integers(0, 2, 200)
    order = np.argsort(ev["t"], kind="stable")
    sorted_ev = {k: v[order] for k, v in ev.items()}
    a = events_to_frames(ev, 4, "time", size=8, sensor=8)
    b = events_to_frames(sorted_ev, 4, "time", size=8, sensor=8)
    assert np.array_equal(a, b) and a.sum() == 200
    # Each frame holds exactly the events of its time interval: dT = (t_max - t_min) // 4.
    t0, dt = ev["t"].min(), (ev["t"].max() - ev["t"].min()) // 4
    for j in range(3):
        assert a[j].sum() == np.sum((ev["t"] >= t0 + j * dt) & (ev["t"] < t0 + (j + 1) * dt))


def test_downsample_by_area():
    ev = {
        "t": np.arange(5),
        "x": np.array([0, 1, 0, 1, 127]),
        "y": np.array([0, 0, 1, 1, 127]),
        "p": np.zeros(5, int),
    }
    fr = events_to_frames(ev, 1, "number", size=64)
    assert fr.shape == (1, 2, 64, 64)
    assert fr[0, 0, 0, 0] == 1.0  # 4 events over a 2x2 block -> mean 1
    assert fr[0, 0, 63, 63] == 0.25
    assert fr.sum() == pytest.approx(5 / 4)


def _write_tree(root: Path, per_class: int = 11) -> None:
    """Class c, file i: (i + 1) events of polarity 0 at sensor pixel (x=c, y=0), then 2 of polarity 1."""
    for c, name in enumerate(DVS_CLASSES):
        for i in range(per_class):
            k = i + 1
            write_aedat(
                root / name / f"cifar10_{name}_{i}.aedat",
                xs=[c] * k + [0, 0],
                ys=[0] * k + [5, 5],
                pols=[1] * k + [0, 0],
                ts=list(range(k + 2)),
            )


def _file_index(frames: torch.Tensor, c: int) -> int:
    # Sensor (x=c, y=0) reads as (x=127, y=127-c); the polarity-0 count there is i + 1.
    return int(frames[:, 0, 127 - c, 127].sum().item()) - 1


def test_load_split_first_and_tebn(tmp_path):
    _write_tree(tmp_path / "dvs")
    train, test, info = load_cifar10_dvs(
        tmp_path / "dvs", frames_number=2, cache_dir=tmp_path / "c", workers=2
    )
    assert train.data.shape == (100, 2, 2, 128, 128) and train.data.dtype == torch.float16
    assert train.class_counts() == [10] * 10 and test.class_counts() == [1] * 10  # ceil(0.9 * 11) = 10 train
    # "first": lexicographic file order 0, 1, 10, 2, ..., 9 -> the test file is _9.
    assert [_file_index(test.data[k], c) for k, c in enumerate(test.targets.tolist())] == [9] * 10
    assert info["cache"] == "miss"
    train2, test2, _ = load_cifar10_dvs(
        tmp_path / "dvs", frames_number=2, split="tebn", cache_dir=tmp_path / "c"
    )
    assert [_file_index(test2.data[k], c) for k, c in enumerate(test2.targets.tolist())] == [0] * 10
    assert sorted(
        _file_index(train2.data[k], 3) for k in np.flatnonzero(train2.targets.numpy() == 3)
    ) == list(range(1, 11))
    # number split, 2 frames of a file with i + 3 events: the polarity-1 pair is in the last frame.
    assert float(train.data[:, 1, 1].sum()) == 2 * 100 and float(train.data[:, 0, 1].sum()) == 0


def test_cache_hit_and_invalidation(tmp_path):
    _write_tree(tmp_path / "dvs", per_class=2)
    kw = dict(frames_number=3, split_by="time", size=32, cache_dir=tmp_path / "c")
    a_tr, a_te, a = load_cifar10_dvs(tmp_path / "dvs", **kw)
    b_tr, b_te, b = load_cifar10_dvs(tmp_path / "dvs", **kw)
    assert (a["cache"], b["cache"]) == ("miss", "hit")
    assert torch.equal(a_tr.data, b_tr.data) and torch.equal(a_te.targets, b_te.targets)
    _, _, other = load_cifar10_dvs(tmp_path / "dvs", **{**kw, "frames_number": 4})
    assert other["cache"] == "miss"  # framing options are part of the key
    f = tmp_path / "dvs" / "cat" / "cifar10_cat_1.aedat"
    write_aedat(f, [0], [0], [0], [0])
    os.utime(f, ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns + 10**9))
    _, _, c = load_cifar10_dvs(tmp_path / "dvs", **kw)
    assert c["cache"] == "miss"


def test_missing_dataset_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        get_dataset("cifar10_dvs", tmp_path / "none")
    msg = str(e.value)
    assert "figshare" in msg and "--download" in msg and str(tmp_path / "none") in msg


def test_get_dataset_dvs_augmentation(tmp_path):
    _write_tree(tmp_path / "dvs")
    ds = get_dataset("cifar10-dvs", tmp_path / "dvs", frames_number=2, size=48, cache_dir=tmp_path / "c")
    assert ds.input_shape == (2, 2, 48, 48) and ds.num_classes == 10
    assert len(ds.train) == 100 and len(ds.test) == 10
    assert ds.train_augment.padding == 3 and ds.train_augment.flip and ds.eval_augment.padding == 0
    x, y = next(iter(ds.loader("train", 16, seed=0)))
    assert x.shape == (16, 2, 2, 48, 48) and x.dtype == torch.float32
    # Translation and flip move events around but never create them; some samples do change.
    src = ds.train.data[:32].float()
    out = ds.train_augment(ds.train.data[:32], torch.Generator().manual_seed(1))
    assert bool((out.flatten(1).sum(1) <= src.flatten(1).sum(1) + 1e-3).all())
    assert not torch.equal(out, src)
    xt, _ = next(iter(ds.loader("test", 64)))
    assert torch.equal(xt, ds.test.data.float())
    with pytest.raises(ValueError, match="split_by must be"):
        get_dataset("cifar10_dvs", tmp_path / "dvs", split_by="count")


def test_damaged_file_in_tree_is_named(tmp_path):
    _write_tree(tmp_path / "dvs", per_class=2)
    bad = tmp_path / "dvs" / "frog" / "cifar10_frog_1.aedat"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"cifar10_frog_1\.aedat: event payload"):
        load_cifar10_dvs(tmp_path / "dvs", frames_number=2, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # nothing cached from a failed conversion
