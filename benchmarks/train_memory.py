"""Peak training memory per image: forward + backward of one batch of the small spiking VGG
(32-64-128-128, ternary STE weights, T = 4, 32×32 input), built with this library's layers or
from SpikingJelly layers. Each build runs in a fresh subprocess; the figure is the growth of the
process's peak RSS during the step (after the model, the batch and one warm-up step exist),
divided by the batch size.

    python benchmarks/train_memory.py [--batch 32]
"""

import argparse
import json
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


def measure(provider: str, batch: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, provider, str(batch)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["kib_per_image"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    rows = {p: measure(p, args.batch) for p in ("tna", "spikingjelly")}
    for p, kib in rows.items():
        print(f"{p:<14} {kib / 1024:.2f} MiB per image (peak RSS growth of a training step)")
    print(f"tna / spikingjelly = {rows['tna'] / rows['spikingjelly']:.2f}")


if __name__ == "__main__":
    main()
