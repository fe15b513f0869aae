"""`make demo` / `tna demo`: train a ternary spiking CNN on the embedded 8×8 digits with and
without TNA, plus the full-precision reference, over a few seeds, and print what TNA did.

Everything runs offline on the CPU in a few minutes; the plots land in the output folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .config import load_config
from .export import export_packed
from .metrics import bar_chart
from .trainer import Trainer

METHODS = {  # label: config overrides
    "ternary baseline": ["mode=baseline"],
    "ternary + TNA": ["mode=tna"],
    "fp32 baseline": ["mode=baseline", "model.ternary=false"],
}


def run(seeds: list[int], epochs: int, out: Path) -> dict:
    results: dict = {}
    for label, overrides in METHODS.items():
        for seed in seeds:
            name = f"{label.replace(' + ', '_').replace(' ', '_')}_s{seed}"
            cfg = load_config(None,
                              ["data.name=digits", "data.batch_size=64", "model.arch=digits", "model.T=4",
                               "schedule.warmup_epochs=1", f"train.epochs={epochs}",
                               "train.progress=false", f"seed={seed}", f"name={name}", f"out_dir={out}",
                               *overrides])
            start = time.perf_counter()
            trainer = Trainer(cfg)
            last = trainer.fit()
            wall = time.perf_counter() - start
            packed = export_packed(trainer.base, out / name / "base.packed.safetensors")
            r = results.setdefault(label, {"acc": [], "wall": [], "img_s": []})
            r["acc"].append(last["val_acc"])
            r["wall"].append(wall)
            r["img_s"].append(np.median([h["images_per_s"] for h in trainer.history]))
            r["file_bytes"], r["fp32_bytes"] = packed["file_bytes"], packed["fp32_bytes"]
            r["ternary"] = cfg["model"]["ternary"]
            print(f"  {label:<18} seed {seed}: test accuracy {last['val_acc']:.4f} ({wall:.0f} s)", flush=True)
    return results


def table(results: dict) -> str:
    lines = ["| method | test accuracy (mean ± std) | train images/s (median epoch) | wall s/run "
             "| exported model file |", "|---|---|---:|---:|---:|"]
    for label, r in results.items():
        acc = np.array(r["acc"]) * 100
        size = (f"{r['file_bytes']:,} B packed ({r['fp32_bytes'] / r['file_bytes']:.1f}× smaller than float32)"
                if r["ternary"] else f"{r['file_bytes']:,} B float32")
        lines.append(f"| {label} | {acc.mean():.2f} ± {acc.std():.2f} % (n={len(acc)}) | {np.mean(r['img_s']):.0f} "
                     f"| {np.mean(r['wall']):.0f} | {size} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="runs/demo")
    args = p.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"Digits (8×8, 1,438 train / 359 test images), spiking CNN T=4, {args.epochs} epochs, "
          f"seeds {args.seeds}")
    start = time.perf_counter()
    results = run(args.seeds, args.epochs, out)
    print()
    print(table(results))
    chart = bar_chart({k: v["acc"] for k, v in results.items()}, out / "demo_accuracy.png", "test accuracy")
    print(f"\nplots: {chart} and <run>/curves.png under {out}/; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
