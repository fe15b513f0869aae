"""Paired-round LIF forward+backward ratios: each round times every provider once, back to back, in
a rotating order, and the ratio (peer time / ours) is taken within the round.

pytest-benchmark times one provider's rounds, then the next provider's, minutes apart; on this
shared machine memory bandwidth drifts by ±30 % over minutes (a 64 MiB copy: 2.3–5.1 ms in runs
minutes apart), so ratios of separately timed medians inherit that drift. Rounds taken within a
second of each other see the same machine state; the median of the per-round ratios is the figure
to quote, the quartiles show its spread.

    python benchmarks/lif_paired.py [--T 4] [--rounds 15] [--json build/lif_paired.json]

Providers and bytes are those of benchmarks/bench_lif.py (the same closures); missing peers are
left out.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402  (bench_lif skips absent peers through pytest.importorskip)
import torch  # noqa: E402

from benchmarks import conftest  # noqa: E402,F401  (glibc thresholds, as in the pytest run)
from benchmarks.bench_lif import PROVIDERS, SHAPES, _make  # noqa: E402


def quartiles(values):
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return q[0], statistics.median(values), q[2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=4, choices=sorted(SHAPES))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--providers", nargs="+", default=[p for p in PROVIDERS if p != "reference"])
    ap.add_argument("--json", type=Path, help="also write every round's times here")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    if "tna" not in args.providers:
        ap.error("--providers must include 'tna' (the ratios are against it)")

    torch.manual_seed(0)
    fns, nbytes = {}, {}
    for p in args.providers:
        try:
            fns[p], nbytes[p] = _make(p, SHAPES[args.T], "cpu")
        except pytest.skip.Exception as e:
            print(f"{p}: left out ({e})")
    for fn in fns.values():  # warm-up: lazy imports, and first-touch allocations until freed
        for _ in range(5):     # gradients and outputs are reused (the first 2-4 calls fault pages)
            fn()

    names = list(fns)
    times = {p: [] for p in names}
    for r in range(args.rounds):
        for p in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[p]()
            times[p].append(time.perf_counter() - start)

    ours = times["tna"]
    print(f"LIF fwd+bwd, cpu, T={args.T} {list(SHAPES[args.T])} fp32, {args.rounds} paired rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"{'provider':14s} {'median ms':>9s}  {'ratio to ours: q1 / median / q3':>32s}")
    for p in names:
        t_med = statistics.median(times[p]) * 1e3
        if p in ("tna", "copy"):  # copy is the bandwidth reference, not a competitor
            print(f"{p:14s} {t_med:9.2f}")
            continue
        q1, med, q3 = quartiles([a / b for a, b in zip(times[p], ours, strict=False)])
        print(f"{p:14s} {t_med:9.2f}  {q1:8.2f}× / {med:6.2f}× / {q3:6.2f}×  slower than ours")
    if "copy" in times:
        # roofline share per round: the time our bytes take at that round's copy bandwidth / ours
        shares = [nbytes["tna"] / (nbytes["copy"] / c) / o for c, o in zip(times["copy"], ours, strict=False)]
        q1, med, q3 = quartiles(shares)
        print(f"our bytes at the same round's copy bandwidth / our time: {q1:.0%} / {med:.0%} / {q3:.0%} "
              f"(q1 / median / q3; {nbytes['tna'] / 1e6:.0f} MB per forward + backward)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"T": args.T, "shape": list(SHAPES[args.T]),
                                         "threads": torch.get_num_threads(),
                                         "seconds": times, "bytes": nbytes}, indent=1))


if __name__ == "__main__":
    main()
