"""Learning-curve plots from a training run's metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_learning_curve(metrics_csv: Path, png: Path, title: str = "") -> None:
    """Training loss and validation accuracy against episodes."""
    rows = list(csv.DictReader(metrics_csv.open()))
    if not rows:
        return
    episodes = [int(r["episode"]) for r in rows]
    fig, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_axis.plot(episodes, [float(r["train_loss"]) for r in rows], marker=".")
    loss_axis.set(xlabel="episode", ylabel="training loss", yscale="log", title="training loss")
    acc_axis.plot(episodes, [float(r["train_accuracy"]) for r in rows], marker=".", label="train (queries)")
    acc_axis.plot(episodes, [float(r["val_accuracy"]) for r in rows], marker=".", label="validation")
    acc_axis.set(xlabel="episode", ylabel="accuracy (%)", title="accuracy")
    acc_axis.legend()
    acc_axis.grid(alpha=0.3)
    loss_axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
