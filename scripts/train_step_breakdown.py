"""Where the time of one TNA training step goes (benchmarks/bench_train_step.py's spiking VGG
64-128-256-256, T = 4, batch 32, base + twin; ``--arch``/``--batch`` for another), by part: conv
forward, conv grad_input, conv grad_weight (the spike-input ternary convs, from the profiler ranges
tna_kernels/ops/spike_train.py opens), the first conv (float image input), quantise & pack, batch
norm, LIF, batch norm + LIF fused, pooling, loss, optimiser, other. One table per training path
(``dense``: dense QAT; ``spike``: the popcount forward and the event-driven weight gradient;
``auto``: measured per layer). torch profiler self times, summed over ``--steps`` steps after
warm-up, per step.

    python scripts/train_step_breakdown.py --threads 1 [--write docs/BENCHMARKS.md]
    python scripts/train_step_breakdown.py --threads 1 --arch tiny --batch 64 --paths auto  # the CPU recipes' step
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_train_step import ARCH, B, T, _step_fn  # noqa: E402
from tna_kernels.models import SpikingVGG, make_twin  # noqa: E402
from tna_kernels.nn import set_train_path, train_paths  # noqa: E402
from tna_kernels.ops import spike_train  # noqa: E402

PARTS = ["conv forward", "conv grad_input", "conv grad_weight", "first conv (image input)", "quantise & pack",
         "batch norm", "LIF", "batch norm + LIF (fused)", "pooling", "loss", "optimiser", "other"]
LABELS = {spike_train.FORWARD_LABEL: "conv forward", spike_train.GRAD_INPUT_LABEL: "conv grad_input",
          spike_train.GRAD_WEIGHT_LABEL: "conv grad_weight"}
BEGIN, END = "<!-- train-breakdown:begin -->", "<!-- train-breakdown:end -->"


def part_of(event) -> str:
    """The part an op event's self time belongs to: op names first (these kernels are one part
    wherever they run), then the enclosing training-conv range, then the optimiser's ranges."""
    name = event.name
    if "ternarize" in name or "pack_spikes" in name:
        return "quantise & pack"
    if "batch_norm_lif" in name:
        return "batch norm + LIF (fused)"
    if "batch_norm" in name:
        return "batch norm"
    if "tna::lif" in name:
        return "LIF"
    if "max_pool" in name:
        return "pooling"
    if "twin_loss" in name:
        return "loss"
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in LABELS:
            return LABELS[parent.name]
        if parent.name.startswith("Optimizer."):
            return "optimiser"
        parent = parent.cpu_parent
    if "convolution" in name:
        return "first conv (image input)"
    return "other"


def breakdown(path: str, steps: int, arch: str = ARCH, batch: int = B) -> tuple[dict[str, float], float, dict]:
    torch.manual_seed(0)
    base = SpikingVGG(arch, T=T)
    twin = make_twin(base, 1)
    for net in (base, twin):
        set_train_path(net, path)
    step = _step_fn(base, twin, fused_loss=True, batch=batch)
    for _ in range(3):
        step()
    with torch.profiler.profile() as prof:
        for _ in range(steps):
            step()
    parts: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CPU and not ev.name.startswith(
                ("tna.conv_", "Optimizer.", "autograd::", "ProfilerStep")):
            parts[part_of(ev)] += ev.self_cpu_time_total / 1e3 / steps
    return dict(parts), sum(parts.values()), train_paths(base)


def table(results: dict[str, tuple[dict[str, float], float, dict]]) -> str:
    paths = list(results)
    lines = ["| part | " + " | ".join(f"{p} ms" for p in paths) + " |", "|---|" + "---:|" * len(paths)]
    for part in PARTS:
        lines.append(f"| {part} | " + " | ".join(f"{results[p][0].get(part, 0.0):.1f}" for p in paths) + " |")
    lines.append("| **total** | " + " | ".join(f"**{results[p][1]:.1f}**" for p in paths) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--paths", nargs="+", default=["dense", "spike", "auto"], choices=spike_train.TRAIN_PATHS)
    ap.add_argument("--arch", default=ARCH, help="SpikingVGG arch (tiny: the CPU recipes' network)")
    ap.add_argument("--batch", type=int, default=B)
    ap.add_argument("--write", type=Path, help="replace the table between the train-breakdown markers of this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {p: breakdown(p, args.steps, args.arch, args.batch) for p in args.paths}
    from tna_kernels.ops.ternary import _ternary_cpu_isa

    head = (f"Spiking VGG {args.arch}, batch {args.batch}, T = {T}. "
            f"Machine: {platform.processor() or platform.machine()}, {args.threads} thread(s); popcount kernels: "
            f"{_ternary_cpu_isa()}; torch {torch.__version__}; profiler self times per step "
            f"(mean of {args.steps} steps; the profiler adds its own overhead). Paths chosen by auto: "
            f"{results['auto'][2] if 'auto' in results else 'n/a'}")
    text = head + "\n\n" + table(results)
    print(text)
    if args.write:
        doc = args.write.read_text()
        if BEGIN not in doc or END not in doc:
            sys.exit(f"{args.write} has no {BEGIN} ... {END} block")
        pre, rest = doc.split(BEGIN, 1)
        post = rest.split(END, 1)[1]
        args.write.write_text(pre + BEGIN + "\n" + text + "\n" + END + post)


if __name__ == "__main__":
    main()
