"""The ``tna`` command: train, eval, export, report, compare, info.

    tna train --config configs/digits_tna.yaml [key=value ...] [--resume auto|PATH]
    tna eval runs/digits_tna/base.json [--split val|test]
    tna export runs/digits_tna/base.json --format packed|nir [--out FILE]
    tna report runs/digits_tna/base.json
    tna compare runs/digits_baseline runs/digits_tna --out compare.png
    tna info
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def _launch_torchrun(args) -> int:
    """Re-runs this training command under torchrun with ``--nproc`` processes on this machine."""
    import subprocess

    argv = [a for a in sys.argv[1:]]
    i = argv.index("--nproc")
    del argv[i:i + 2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "--max-restarts", str(args.max_restarts), "-m", "tna_kernels.cli", *argv]
    if "--resume" not in argv:
        cmd += ["--resume", "auto"]  # a restarted worker group continues from the last checkpoint
    return subprocess.call(cmd)


def _train(args) -> int:
    from .train import Trainer, load_config
    from .train.distributed import teardown

    if args.nproc and args.nproc > 1:
        return _launch_torchrun(args)
    overrides = list(args.overrides)
    if args.limit is not None:
        overrides += [f"train.limit_batches={args.limit}", f"train.limit_eval_batches={args.limit}"]
    if args.out is not None:
        overrides.append(f"out_dir={args.out}")
    if args.download:
        overrides.append("data.download=true")
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg)
    try:
        last = trainer.fit(resume=args.resume)
    finally:
        teardown(trainer.dist)
    if not trainer.dist.main:
        return 0
    if last.get("preempted"):
        print(f"{cfg['name']}: stopped by signal in epoch {last['epoch'] + 1} after batch {last['batch']}; "
              f"checkpoint written, continue with --resume auto")
        return 0
    print(f"{cfg['name']}: epoch {last.get('epoch')} val_acc {last.get('val_acc', float('nan')):.4f}"
          + (f" twin_val_acc {last['twin_val_acc']:.4f}" if "twin_val_acc" in last else "")
          + f"; best {trainer.best_acc:.4f}; outputs in {trainer.out}")
    return 0


def _eval(args) -> int:
    from .train.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, split=args.split, root=args.data_root, limit=args.limit)
    print(f"{args.checkpoint}: {result['split']} accuracy {result['acc']:.4f} loss {result['loss']:.4f} "
          f"({result['n']} samples)")
    return 0


def _export(args) -> int:
    from .train.export import export_packed
    from .train.trainer import load_model

    model = load_model(args.checkpoint)
    if args.format == "nir":
        from .train.nir_export import export_nir

        out = export_nir(model, Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".nir"))
        print(f"wrote {out} (NIR graph; read it with nir.read)")
        return 0
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".packed.safetensors")
    info = export_packed(model, out)
    print(f"wrote {out} ({info['file_bytes']:,} bytes; float32 weights would be {info['fp32_bytes']:,} bytes, "
          f"{info['fp32_bytes'] / info['file_bytes']:.1f}x larger)")
    return 0


def _report(args) -> int:
    import torch

    from .report import format_report, report
    from .train.evaluate import sample_batch
    from .train.trainer import load_model

    model = load_model(args.checkpoint)
    x = sample_batch(args.checkpoint, args.batch, args.data_root) if not args.random else None
    if x is None:
        cfg = model.config
        x = torch.rand(args.batch, cfg["in_channels"], cfg["input_size"], cfg["input_size"])
    print(format_report(report(model, x)))
    return 0


def _compare(args) -> int:
    from .train.metrics import bar_chart

    results = {}
    for run in args.runs:
        path = Path(run) / "metrics.csv"
        if not path.is_file():
            print(f"error: {path} not found (is {run} a run directory?)", file=sys.stderr)
            return 2
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        results[Path(run).name] = [max(float(r["val_acc"]) for r in rows)]
        print(f"{Path(run).name:<30} best val_acc {results[Path(run).name][0]:.4f} ({len(rows)} epochs)")
    if args.out:
        bar_chart(results, Path(args.out), "best validation accuracy")
        print(f"wrote {args.out}")
    return 0


def _info(_args) -> int:
    from . import info

    info.main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tna", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("--config", required=True)
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.05 train.epochs=3")
    t.add_argument("--resume", default=None, help="'auto' (this run's last checkpoint) or a checkpoint path")
    t.add_argument("--limit", type=int, default=None, help="cap on batches per epoch (smoke runs)")
    t.add_argument("--out", default=None, help="output root (default: the config's out_dir)")
    t.add_argument("--download", action="store_true", help="fetch the dataset if it is missing")
    t.add_argument("--nproc", type=int, default=None, help="processes on this machine (runs torchrun)")
    t.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts of a failed worker group")
    t.set_defaults(fn=_train)

    e = sub.add_parser("eval", help="accuracy of a checkpoint's base model")
    e.add_argument("checkpoint")
    e.add_argument("--split", default=None, choices=["train", "val", "test"])
    e.add_argument("--data-root", default=None)
    e.add_argument("--limit", type=int, default=None)
    e.set_defaults(fn=_eval)

    x = sub.add_parser("export", help="export the base model")
    x.add_argument("checkpoint")
    x.add_argument("--format", default="packed", choices=["packed", "nir"],
                   help="packed: 2-bit packed safetensors; nir: NIR graph of a spiking VGG or ResNet (needs nir)")
    x.add_argument("--out", default=None)
    x.set_defaults(fn=_export)

    r = sub.add_parser("report", help="per-layer spike rates, SynOps/MACs, energy, storage")
    r.add_argument("checkpoint")
    r.add_argument("--batch", type=int, default=32)
    r.add_argument("--data-root", default=None)
    r.add_argument("--random", action="store_true", help="use random inputs instead of the run's data")
    r.set_defaults(fn=_report)

    c = sub.add_parser("compare", help="compare runs (best validation accuracy, bar chart)")
    c.add_argument("runs", nargs="+")
    c.add_argument("--out", default=None)
    c.set_defaults(fn=_compare)

    i = sub.add_parser("info", help="backends, versions, CPU ISA, GPU")
    i.set_defaults(fn=_info)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also follow the options: tna train --config X --out Y a.b=1
        if args.command != "train" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    from .data import CorruptFileError, DatasetNotFoundError
    from .train import CheckpointError, ConfigError, TrainingError

    try:
        return args.fn(args)
    except (ConfigError, CheckpointError, TrainingError, DatasetNotFoundError, CorruptFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
