"""Per-epoch metrics: a CSV file (always), TensorBoard (when the tensorboard package is present)
and matplotlib plots (learning curves of base and twin; comparison bar charts)."""

from __future__ import annotations

import csv
from pathlib import Path


class MetricsLog:
    def __init__(self, out_dir: Path, tensorboard: bool = True):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out / "metrics.csv"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def write(self, row: dict) -> None:
        """Appends one epoch's row (rewrites the header if the columns changed)."""
        rows = []
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.csv_path)
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, row["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    @staticmethod
    def plot(history: list[dict], path: Path, title: str | None = None) -> Path | None:
        """Accuracy and loss curves of base (and twin) per epoch, saved as PNG."""
        if not history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in history]
        fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
        ax_acc.plot(epochs, [r["val_acc"] for r in history], label="base (val)")
        ax_acc.plot(epochs, [r["train_acc"] for r in history], "--", label="base (train)")
        if "twin_val_acc" in history[0]:
            ax_acc.plot(epochs, [r["twin_val_acc"] for r in history], label="twin (val)")
        ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train loss (total)")
        ax_loss.plot(epochs, [r["val_loss"] for r in history], label="base val loss")
        for ax, name in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


def bar_chart(results: dict[str, list[float]], path: Path, ylabel: str = "validation accuracy") -> Path:
    """Mean ± std bars, one per method (``{method: [per-seed values]}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    means = [float(np.mean(results[n])) for n in names]
    stds = [float(np.std(results[n])) for n in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4))
    ax.bar(names, means, yerr=stds, capsize=4, color="#4C72B0")
    lo = min(m - s for m, s in zip(means, stds, strict=True))
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(m + s for m, s in zip(means, stds, strict=True)) + 0.03))
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
