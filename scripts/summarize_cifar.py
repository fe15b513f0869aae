"""Summarises the issue 8 runs (scripts/cifar_experiments.sh) into a markdown table and figures.

    python scripts/summarize_cifar.py runs/cifar --figures docs/figures

Per method (config name without the seed): final validation accuracy mean ± std over seeds, best
epoch accuracy, final training loss (for TNA/DML: the whole objective, both networks' terms),
training wall-clock per run (sum of epoch times, evaluation excluded) and training images/s of the
fastest seed, and the size of the exported base model (packed ternary or float32)."""

import argparse
import csv
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

LABELS = {
    "cifar10_vgg_baseline": "ternary baseline",
    "cifar10_vgg_tna": "ternary + TNA",
    "cifar10_vgg_kd": "ternary + KD (fp32 SNN teacher)",
    "cifar10_vgg_baseline_fp": "fp32 baseline",
    "cifar10_vgg_dml": "ternary + DML",
    "cifar10_vgg_tna_fptwin": "ternary + TNA, fp32 twin",
    "cifar10_vgg_tna_fp": "fp32 + TNA",
    # scripts/train_path_recipe.sh (issue 18)
    "cifar10_vgg_tna_dense": "ternary + TNA, dense QAT (train_path=dense)",
    "cifar10_vgg_tna_auto": "ternary + TNA, spike arithmetic where faster (train_path=auto)",
}


def load_runs(root: Path) -> dict:
    runs = defaultdict(list)
    for run in sorted(root.iterdir()):
        metrics = run / "metrics.csv"
        if not (run / "base.json").is_file() or not metrics.is_file():
            continue  # unfinished
        method = run.name.rsplit("_s", 1)[0]
        with open(metrics, newline="") as f:
            rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
        runs[method].append({"dir": run, "rows": rows})
    return runs


def model_bytes(run_dir: Path) -> tuple[int, bool]:
    from tna_kernels.train.export import export_packed
    from tna_kernels.train.trainer import load_model

    model = load_model(run_dir / "base.json")
    with tempfile.TemporaryDirectory() as tmp:
        info = export_packed(model, Path(tmp) / "m.safetensors")
    return info["file_bytes"], bool(model.config["ternary"])


def table(runs: dict) -> str:
    lines = ["| method | seeds | final val acc (mean ± std) | best epoch val acc | final train loss "
             "| train wall-clock / run (fastest seed) | train images/s (fastest seed) | exported model |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for method in [m for m in LABELS if m in runs] + [m for m in runs if m not in LABELS]:
        rs = runs[method]
        final = np.array([r["rows"][-1]["val_acc"] for r in rs]) * 100
        best = np.array([max(x["val_acc"] for x in r["rows"]) for r in rs]) * 100
        loss = np.mean([r["rows"][-1]["train_loss"] for r in rs])
        # the machine was shared during some runs: the fastest seed is the cost of the method itself
        wall = min(sum(x["epoch_seconds"] for x in r["rows"]) for r in rs)
        ips = max(np.median([x["images_per_s"] for x in r["rows"]]) for r in rs)
        nbytes, ternary = model_bytes(rs[0]["dir"])
        lines.append(f"| {LABELS.get(method, method)} | {len(rs)} | {final.mean():.2f} ± {final.std():.2f} % "
                     f"| {best.mean():.2f} ± {best.std():.2f} % | {loss:.3f} | {wall / 60:.1f} min | {ips:.0f} "
                     f"| {nbytes / 1024:.1f} KiB {'packed' if ternary else 'float32'} |")
    return "\n".join(lines)


def figures(runs: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tna_kernels.train.metrics import bar_chart

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, rs in runs.items():
        n = min(len(r["rows"]) for r in rs)
        acc = np.array([[x["val_acc"] for x in r["rows"][:n]] for r in rs]) * 100
        epochs = np.arange(1, n + 1)
        ax.plot(epochs, acc.mean(0), marker="o", label=f"{LABELS.get(method, method)} (n={len(rs)})")
        if len(rs) > 1:
            ax.fill_between(epochs, acc.min(0), acc.max(0), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("CIFAR-10 (JPEG copy), spiking VGG 16-32-64, T=4, CPU budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    curves = out / "cifar10_curves.png"
    fig.savefig(curves, dpi=120)
    plt.close(fig)
    bars = bar_chart({LABELS.get(m, m): [r["rows"][-1]["val_acc"] for r in rs] for m, rs in runs.items()},
                     out / "cifar10_accuracy.png", "final validation accuracy")
    return [curves, bars]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--figures", type=Path, default=None)
    args = ap.parse_args()
    runs = load_runs(args.root)
    print(table(runs))
    if args.figures:
        for p in figures(runs, args.figures):
            print(f"wrote {p}")


if __name__ == "__main__":
    main()
