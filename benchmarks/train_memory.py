"""Peak training memory per image: forward + backward of one batch of the small spiking VGG
(32-64-128-128, ternary STE weights, T = 4, 32×32 input), built with this library's layers or
from SpikingJelly layers. Each build runs in a fresh subprocess; the figure is the growth of the
process's peak RSS during the step (after the model, the batch and one warm-up step exist),
divided by the batch size.

    python benchmarks/train_memory.py [--batch 32] [--dynamic-mmap-threshold]

Both builds run with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``): freed
tensors leave the RSS, so the figure is the step's own peak (repeated runs agree within 0.01 MiB).
``--dynamic-mmap-threshold`` keeps glibc's default instead: tensors below the largest one freed so
far then come from the heap, whose freed holes stay resident; as the measured step's tensors are
twice the warm-up's they rarely fit those holes, and the figure swings between runs with the
address-space layout (this measures the allocator as much as the step).
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import gc, json, resource, sys, torch
sys.path.insert(0, ".")
from benchmarks.bench_train_step import spikingjelly_vgg
from tna_kernels.models import SpikingVGG
torch.manual_seed(0)
provider, batch = sys.argv[1], int(sys.argv[2])
net = SpikingVGG("small", T=4) if provider == "tna" else spikingjelly_vgg([32, "M", 64, "M", 128, 128, "M"])
x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
def step():
    net.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
step(); gc.collect()
# peak RSS only grows: measure the growth caused by a step with a larger batch than the warm-up
x, y = torch.randn(2 * batch, 3, 32, 32), torch.randint(0, 10, (2 * batch,))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
step()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"provider": provider, "kib_per_image": (after - before) / batch}))
"""


def measure(provider: str, batch: int, env: dict | None = None) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, provider, str(batch)], capture_output=True,
                         text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["kib_per_image"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dynamic-mmap-threshold", action="store_true",
                    help="keep glibc's dynamic mmap threshold (heap holes make the figure vary run to run)")
    args = ap.parse_args()
    env = None if args.dynamic_mmap_threshold else {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = {p: measure(p, args.batch, env) for p in ("tna", "spikingjelly")}
    for p, kib in rows.items():
        print(f"{p:<14} {kib / 1024:.2f} MiB per image (peak RSS growth of a training step)")
    print(f"tna / spikingjelly = {rows['tna'] / rows['spikingjelly']:.2f}")


if __name__ == "__main__":
    main()
