"""Peak training memory per image: forward + backward of one batch of the small spiking VGG
(32-64-128-128, ternary STE weights, T = 4, 32×32 input), built with this library's layers or
from SpikingJelly layers. Each (build, batch size) runs in a fresh subprocess: a warm-up step on 2
images (libraries loaded, lazy state built), then one step on B images, then the process's peak
RSS. The figure is the slope between B and 2B images, (peak(2B) - peak(B)) / B: what one more
image costs at the step's peak, whatever the fixed overhead.

    python benchmarks/train_memory.py [--batch 64] [--dynamic-mmap-threshold]

(Until 2026-11-29 the figure was the peak growth from a B-image warm-up step to a 2B-image step in
one process. That mixes two peaks: at B = 32 ours was set in a backward, at 64 in the forward, so a
change that lowered the backward's peak raised the figure from 1.04 to 1.20 MiB per image while
both peaks fell or held.)

Both builds run with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``): freed
tensors leave the RSS, so the peak is the step's own (repeated runs agree within 0.01 MiB).
``--dynamic-mmap-threshold`` keeps glibc's default instead: tensors then come from the heap, whose
freed holes stay resident, and the figure swings between runs with the address-space layout (this
measures the allocator as much as the step).
"""

import argparse
import os
import subprocess
import sys

CHILD = r"""
import gc, resource, sys, torch
sys.path.insert(0, ".")
from benchmarks.bench_train_step import spikingjelly_vgg
from tna_kernels.models import SpikingVGG
torch.manual_seed(0)
provider, batch = sys.argv[1], int(sys.argv[2])
net = SpikingVGG("small", T=4) if provider == "tna" else spikingjelly_vgg([32, "M", 64, "M", 128, 128, "M"])
def step(b):
    x, y = torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,))
    net.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
step(2); gc.collect()
step(batch)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def peak_kib(provider: str, batch: int, env: dict | None = None) -> float:
    """Peak RSS of a fresh process after a warm-up step and one step on `batch` images."""
    out = subprocess.run([sys.executable, "-c", CHILD, provider, str(batch)], capture_output=True,
                         text=True, check=True, env=env).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dynamic-mmap-threshold", action="store_true",
                    help="keep glibc's dynamic mmap threshold (heap holes make the figure vary run to run)")
    args = ap.parse_args()
    env = None if args.dynamic_mmap_threshold else {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = {}
    for p in ("tna", "spikingjelly"):
        one, two = peak_kib(p, args.batch, env), peak_kib(p, 2 * args.batch, env)
        rows[p] = (two - one) / args.batch
        print(f"{p:<14} {rows[p] / 1024:.2f} MiB per image (peak RSS {one / 1024:.0f} MiB at "
              f"{args.batch} images, {two / 1024:.0f} MiB at {2 * args.batch})")
    print(f"tna / spikingjelly = {rows['tna'] / rows['spikingjelly']:.2f}")


if __name__ == "__main__":
    main()
