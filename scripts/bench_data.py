"""Data-loading timings: decode + cache an ImageFolder CIFAR-10 copy, reload it from the cache, and
the batched loader's throughput with training augmentation.

    python scripts/bench_data.py ../shared/data/cifar10-jpeg [--cache-dir DIR] [--workers N] [--threads N]
    python scripts/bench_data.py --dvs-events 200000     # CIFAR10-DVS framing cost of one synthetic file

Uses a fresh temporary cache directory unless --cache-dir is given, so the first load is a real decode.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from tna_kernels.data import get_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?")
    ap.add_argument(
        "--dvs-events", type=int, default=0, help="time parsing + framing of one synthetic DVS file"
    )
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=200, help="batches timed for the loader throughput")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dvs_events:
        return bench_dvs(args.dvs_events)
    if not args.root:
        ap.error("give the CIFAR-10 folder, or --dvs-events N")
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        t0 = time.perf_counter()
        ds = get_dataset(
            "cifar10", args.root, val_per_class=500, val_mode="last", cache_dir=cache, workers=args.workers
        )
        t1 = time.perf_counter()
        ds2 = get_dataset("cifar10", args.root, val_per_class=500, val_mode="last", cache_dir=cache)
        t2 = time.perf_counter()
        assert torch.equal(ds.train.data, ds2.train.data)
        print(
            f"cpus={os.cpu_count()} torch_threads={torch.get_num_threads()} "
            f"workers={args.workers or os.cpu_count()}"
        )
        print(f"first load ({ds.info['cache']}): {t1 - t0:.1f} s for {len(ds.train) + len(ds.val)} images")
        print(f"second load ({ds2.info['cache']}): {t2 - t1:.2f} s")
        loader = ds.loader("train", args.batch_size, seed=0, max_batches=args.batches)
        n = 0
        t3 = time.perf_counter()
        for x, _ in loader:
            n += x.shape[0]
        t4 = time.perf_counter()
        print(
            f"loader: {n / (t4 - t3):.0f} images/s "
            f"(batch {args.batch_size}, crop 4 + flip + normalise, float32)"
        )
        ev = ds.loader("val", args.batch_size)
        t5 = time.perf_counter()
        m = sum(x.shape[0] for x, _ in ev)
        t6 = time.perf_counter()
        print(f"eval loader: {m / (t6 - t5):.0f} images/s (no augmentation, normalise only)")


def bench_dvs(n: int) -> None:
    """Parse + frame (T=10, by number and by time, 128 and 48 px) one file of ``n`` random events."""
    import numpy as np

    from tna_kernels.data.dvs import events_to_frames, read_aedat_events

    rng = np.random.default_rng(0)
    addr = (rng.integers(0, 128, n) << 8) | (rng.integers(0, 128, n) << 1) | rng.integers(0, 2, n)
    words = np.empty(2 * n, dtype=">u4")
    words[0::2] = addr
    words[1::2] = np.sort(rng.integers(0, 1_300_000, n))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.aedat")
        with open(path, "wb") as f:
            f.write(b"#!AER-DAT2.0\r\n# synthetic\r\n" + words.tobytes())
        for split_by, size in (("number", 128), ("time", 128), ("number", 48)):
            reps = 10
            t0 = time.perf_counter()
            for _ in range(reps):
                events_to_frames(read_aedat_events(path), 10, split_by, size)
            dt = (time.perf_counter() - t0) / reps
            print(f"dvs: {n} events -> [10, 2, {size}, {size}] by {split_by}: {dt * 1e3:.1f} ms per file")


if __name__ == "__main__":
    main()
