"""Paired A/B of two checkouts of tna_kernels (e.g. a git worktree of the previous commit and this
one), each workload timed in fresh processes that alternate A, B, A, B, ... so both see the same
machine state. Prints per-round medians and the B/A ratio's median and range.

    python scripts/ab_builds.py --a /work/baseline --b . [--rounds 3] [--only lif_fwd_bwd,...]

Workloads are what a user's code runs: a plain process, the default allocator, fresh inputs for every
call (made outside the timed region). Each process times `calls` calls after `warmup` warm-up calls
and prints the median (µs for the dispatch-bound small calls, ms for the rest)."""

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKLOADS = {
    # name: (setup, fresh inputs (untimed, every call), the timed call, warmup, calls, unit)
    "lif_fwd_bwd_T4": (
        "from tna_kernels import functional as F",
        "x = torch.randn(4, 1 << 22, requires_grad=True)",
        "F.lif(x).sum().backward()", 5, 15, "ms"),
    "spike_ternary_conv2d_vgg": (
        "from tna_kernels import functional as F\nw = F.quantize_pack(torch.randn(256, 128, 3, 3))",
        "s = F.pack_spikes((torch.rand(128, 16, 16, 128) < 0.2).float())",
        "F.spike_ternary_conv2d(s, w, padding=1)", 3, 10, "ms"),
    "twin_loss_B256_fwd_bwd": (
        "from tna_kernels import functional as F",
        "a, b = torch.randn(256, 10, requires_grad=True), torch.randn(256, 10, requires_grad=True)\n"
        "t = torch.randint(0, 10, (256,))",
        "F.twin_loss(a, b, t).backward()", 200, 2000, "us"),
    "twin_loss_B1024_fwd_bwd": (
        "from tna_kernels import functional as F",
        "a, b = torch.randn(1024, 10, requires_grad=True), torch.randn(1024, 10, requires_grad=True)\n"
        "t = torch.randint(0, 10, (1024,))",
        "F.twin_loss(a, b, t).backward()", 200, 2000, "us"),
    "spike_ternary_gemv_M4": (
        "from tna_kernels import functional as F\nw = F.quantize_pack(torch.randn(256, 512))",
        "x = F.pack_spikes((torch.rand(4, 512) < 0.2).float())",
        "F.spike_ternary_linear(x, w)", 200, 3000, "us"),
    "ternary_linear_M12": (
        "from tna_kernels import functional as F\nw = F.quantize_pack(torch.randn(256, 512))",
        "x = torch.randn(12, 512)",
        "F.ternary_linear(x, w)", 200, 3000, "us"),
    "tna_train_step_vgg": (
        "import sys; sys.path.insert(0, '.')\n"
        "from benchmarks.bench_train_step import SpikingVGG, make_twin, _step_fn, ARCH, T\n"
        "base = SpikingVGG(ARCH, T=T); twin = make_twin(base, 1); step = _step_fn(base, twin, True)",
        "pass",
        "step()", 3, 8, "ms"),
}

CHILD = r"""
import time, statistics, torch
torch.manual_seed(0)
{setup}
def fresh():
    global x, s, a, b, t
{fresh}
def call():
    {call}
for _ in range({warmup}):
    fresh(); call()
times = []
for _ in range({calls}):
    fresh()
    t0 = time.perf_counter(); call(); times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""


def run_one(root: str, name: str) -> float:
    setup, fresh, call, warmup, calls, _ = WORKLOADS[name]
    fresh = "\n".join("    " + line for line in fresh.splitlines())
    code = CHILD.format(setup=setup, fresh=fresh, call=call, warmup=warmup, calls=calls)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{name} in {root} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="checkout A (the reference, e.g. the previous build)")
    ap.add_argument("--b", required=True, help="checkout B (the candidate)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated workload names")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--doc", help="write the table into this markdown file, between "
                                  "<!-- ab:SECTION:begin --> and <!-- ab:SECTION:end -->")
    ap.add_argument("--section", default="native-core")
    ap.add_argument("--from-json", help="render --doc from a saved --json instead of measuring")
    args = ap.parse_args()
    names = [n for n in WORKLOADS if not args.only or n in args.only.split(",")]
    results = json.loads(open(args.from_json).read()) if args.from_json else {}
    for name in ([] if args.from_json else names):
        unit = WORKLOADS[name][5]
        scale = 1e6 if unit == "us" else 1e3
        a_times, b_times = [], []
        for r in range(args.rounds):
            first, second = (args.a, args.b) if r % 2 == 0 else (args.b, args.a)
            t1, t2 = run_one(first, name), run_one(second, name)
            (a_times, b_times)[first == args.b].append(t1)
            (a_times, b_times)[second == args.b].append(t2)
        ratios = [b / a for a, b in zip(a_times, b_times, strict=True)]
        results[name] = {"unit": unit, "a": a_times, "b": b_times, "ratios": ratios}
        print(f"{name:<36} A {' '.join(f'{t * scale:8.2f}' for t in a_times)} {unit} | "
              f"B {' '.join(f'{t * scale:8.2f}' for t in b_times)} {unit} | B/A median "
              f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.doc:
        write_doc(args.doc, args.section, results)


def table(results: dict) -> str:
    lines = ["| workload | A (median of rounds) | B (median of rounds) | B/A median | B/A range | rounds |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        scale = 1e6 if r["unit"] == "us" else 1e3
        lines.append(f"| {name} | {statistics.median(r['a']) * scale:.1f} {r['unit']} | "
                     f"{statistics.median(r['b']) * scale:.1f} {r['unit']} | {statistics.median(r['ratios']):.3f} | "
                     f"{min(r['ratios']):.2f}–{max(r['ratios']):.2f} | {len(r['ratios'])} |")
    return "\n".join(lines)


def write_doc(path: str, section: str, results: dict) -> None:
    import re

    begin, end = f"<!-- ab:{section}:begin -->", f"<!-- ab:{section}:end -->"
    doc = open(path).read()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path} has no {begin} ... {end} block")
    block = f"{begin}\n{table(results)}\n{end}"
    with open(path, "w") as f:
        f.write(pattern.sub(lambda _: block, doc))


if __name__ == "__main__":
    main()
