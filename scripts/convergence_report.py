"""The convergence study's table and figures from its run folders (scripts/convergence_study.sh).

    python scripts/convergence_report.py runs/converge --figures docs/figures     # markdown table + PNGs
    python scripts/convergence_report.py runs/converge --best-lambda              # prints the sweep's best λ

Per method (run name without ``_s<seed>``): final and best validation accuracy (mean ± std over
seeds, n), the twin's own final accuracy (TNA), the train–validation gap at the end (accuracy on
5,000 un-augmented training images minus validation accuracy), training cost per run (sum of epoch
times, evaluation excluded) and images/s. Unfinished runs are listed with their epoch and left out
of the statistics. A difference between two methods is read against the seeds' spread: Welch's
t statistic and the difference of means are printed for TNA against the baseline."""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

PREFIX = "cifar10_vgg_converge_"
LABELS = {
    "baseline": "ternary baseline",
    "tna": "ternary + TNA (λ = 0.005)",
    "baseline_fp": "fp32 SNN (KD teacher)",
    "kd": "ternary + KD (fp32 SNN teacher)",
    "subset250_baseline": "ternary baseline, 2,500-image subset",
    "subset250_tna": "ternary + TNA (λ = 0.005), 2,500-image subset",
}
BASE_LAMBDA = 0.005  # configs/cifar10_vgg_converge_tna.yaml


def label(method: str) -> str:
    if method.startswith("tna_lam"):
        return f"ternary + TNA (λ = {method[len('tna_lam'):]})"
    return LABELS.get(method, method)


def load_runs(root: Path) -> tuple[dict, list[str]]:
    """{method: [run, ...]} of finished runs, and a line per unfinished one."""
    runs, unfinished = defaultdict(list), []
    for run in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)):
        metrics = run / "metrics.csv"
        if not metrics.is_file():
            continue
        with open(metrics, newline="") as f:
            rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
        if not (run / "base.json").is_file():
            unfinished.append(f"{run.name}: epoch {len(rows)}")
            continue
        method, seed = run.name[len(PREFIX):].rsplit("_s", 1)
        runs[method].append({"dir": run, "seed": int(seed), "rows": rows})
    return runs, unfinished


def _ms(values) -> str:
    """Mean ± sample std in percent; a single run has no spread, so its value alone."""
    v = np.asarray(values, dtype=float) * 100
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def table(runs: dict) -> str:
    lines = ["| method | n | final val acc (%) | best val acc (%) | twin final val acc (%) "
             "| train acc, no aug. (%) | train − val gap (points) | train time / run | images/s |",
             "|---|---:|---|---|---|---|---|---:|---:|"]
    order = [m for m in LABELS if m in runs] + sorted(m for m in runs if m not in LABELS)
    for m in order:
        rs = runs[m]
        last = [r["rows"][-1] for r in rs]
        twin = _ms([x["twin_val_acc"] for x in last]) if all("twin_val_acc" in x for x in last) else "–"
        has_train = all("train_eval_acc" in x for x in last)
        train = _ms([x["train_eval_acc"] for x in last]) if has_train else "–"
        gap = _ms([x["train_eval_acc"] - x["val_acc"] for x in last]) if has_train else "–"
        minutes = np.median([sum(x["epoch_seconds"] for x in r["rows"]) for r in rs]) / 60
        ips = np.median([x["images_per_s"] for r in rs for x in r["rows"]])
        lines.append(f"| {label(m)} | {len(rs)} | {_ms([x['val_acc'] for x in last])} "
                     f"| {_ms([max(x['val_acc'] for x in r['rows']) for r in rs])} | {twin} | {train} | {gap} "
                     f"| {minutes:.0f} min | {ips:.0f} |")
    return "\n".join(lines)


def welch(a, b) -> str:
    """Difference of means (b − a, points) and Welch's t; needs two seeds on each side."""
    a, b = np.asarray(a) * 100, np.asarray(b) * 100
    diff = b.mean() - a.mean()
    if len(a) < 2 or len(b) < 2:
        return f"{diff:+.2f} points (n = {len(a)}, {len(b)}: too few seeds for a spread)"
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    t = diff / se if se > 0 else float("inf")
    return f"{diff:+.2f} points, Welch t = {t:.2f} (n = {len(a)}, {len(b)})"


def reference_of(method: str) -> str:
    """The baseline a method is compared with: the one trained on the same data (``subset250_*``
    runs against ``subset250_baseline``, the rest against ``baseline``)."""
    prefix = method.split("_", 1)[0] + "_" if method.startswith("subset") else ""
    return prefix + "baseline"


def comparisons(runs: dict) -> list[str]:
    out = []
    for m in runs:
        ref = reference_of(m)
        if m == ref or m == "baseline_fp" or ref not in runs:
            continue
        base = [r["rows"][-1]["val_acc"] for r in runs[ref]]
        out.append(f"- {label(m)} − {label(ref)}, final val acc: "
                   f"{welch(base, [r['rows'][-1]['val_acc'] for r in runs[m]])}")
    return out


def best_lambda(runs: dict, known: dict[float, float] | None = None) -> str:
    """The λ with the highest final validation accuracy on seed 0 (stage 1's run counts for 0.005).
    ``known`` maps λ to a seed-0 final accuracy (fraction) measured by a run whose folder is gone;
    a finished run's own record takes precedence over it."""
    scores = {BASE_LAMBDA: [r for r in runs.get("tna", []) if r["seed"] == 0]}
    for m, rs in runs.items():
        if m.startswith("tna_lam"):
            scores[float(m[len("tna_lam"):])] = [r for r in rs if r["seed"] == 0]
    scores = {lam: rs[0]["rows"][-1]["val_acc"] for lam, rs in scores.items() if rs}
    for lam, acc in (known or {}).items():
        scores.setdefault(lam, acc)
    if not scores:
        raise SystemExit("no finished TNA run on seed 0")
    return f"{max(scores, key=scores.get):g}"


TITLE = "CIFAR-10, spiking VGG 16-32-64, T = 4, 40 epochs on 45k images (CPU)"


def figures(runs: dict, out: Path, name: str = "cifar10_convergence.png", title: str = TITLE) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, (ax_val, ax_gap) = plt.subplots(1, 2, figsize=(12, 4.5))
    for m, rs in runs.items():
        n = min(len(r["rows"]) for r in rs)
        epochs = np.arange(1, n + 1)
        acc = np.array([[x["val_acc"] for x in r["rows"][:n]] for r in rs]) * 100
        (line,) = ax_val.plot(epochs, acc.mean(0), label=f"{label(m)} (n={len(rs)})")
        if len(rs) > 1:
            ax_val.fill_between(epochs, acc.min(0), acc.max(0), alpha=0.15, color=line.get_color())
        if all("train_eval_acc" in x for r in rs for x in r["rows"][:n]):
            gap = np.array([[x["train_eval_acc"] - x["val_acc"] for x in r["rows"][:n]] for r in rs]) * 100
            ax_gap.plot(epochs, gap.mean(0), color=line.get_color(), label=label(m))
    ax_val.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy (band: min–max over seeds)")
    ax_gap.set(xlabel="epoch", ylabel="points", title="train (no augmentation) − validation accuracy")
    for ax in (ax_val, ax_gap):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def _known_pair(text: str) -> tuple[float, float]:
    try:
        lam, acc = (float(x) for x in text.split("="))
    except ValueError:
        raise SystemExit(f"--known: expected LAMBDA=ACC (e.g. 0.005=0.7364), got {text!r}") from None
    if not 0.0 <= acc <= 1.0:
        raise SystemExit(f"--known: ACC is a fraction in [0, 1], got {acc:g} in {text!r}")
    return lam, acc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the study's output folder (runs/converge)")
    ap.add_argument("--figures", type=Path, default=None, help="write the PNG figures here")
    ap.add_argument("--figure-name", default="cifar10_convergence.png",
                    help="file name of the curves figure (a study whose early runs have no record "
                         "draws the recorded ones under another name, keeping the older figure)")
    ap.add_argument("--title", default=TITLE, help="the figure's title")
    ap.add_argument("--methods", default=None, metavar="REGEX",
                    help="only the methods (run names without prefix and seed) this regex matches")
    ap.add_argument("--best-lambda", action="store_true", help="print only the best λ of the seed-0 sweep")
    ap.add_argument("--known", action="append", default=[], metavar="LAMBDA=ACC",
                    help="with --best-lambda: a seed-0 final val accuracy (fraction) for a λ whose "
                         "run has no record (e.g. 0.005=0.7364); repeatable")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        ap.error(f"{args.root} is not a folder")
    runs, unfinished = load_runs(args.root)
    if args.methods:
        try:
            pattern = re.compile(args.methods)
        except re.error as exc:
            ap.error(f"--methods is not a valid regular expression: {exc}")
        runs = {m: rs for m, rs in runs.items() if pattern.search(m)}
    if args.best_lambda:
        print(best_lambda(runs, {lam: acc for lam, acc in map(_known_pair, args.known)}))
        return
    print(table(runs))
    print()
    print("\n".join(comparisons(runs)))
    if unfinished:
        print("\nunfinished: " + "; ".join(unfinished))
    if args.figures and runs:
        if not args.figure_name.endswith(".png") or "/" in args.figure_name:
            ap.error(f"--figure-name must be a file name ending in .png, got {args.figure_name!r}")
        for p in figures(runs, args.figures, args.figure_name, args.title):
            print(f"wrote {p}", file=sys.stderr)


if __name__ == "__main__":
    main()
