"""Learning-curve plots from a training run's metrics.csv."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402


def read_runs(metrics_csvs: list[Path]) -> tuple[list[dict], list[int]]:
    """Rows of consecutive runs (a run continued from another's checkpoint), episodes made
    cumulative; also the episode at which each continuation starts."""
    rows, starts, offset = [], [], 0
    for path in metrics_csvs:
        run = list(csv.DictReader(path.open()))
        if rows:
            starts.append(offset)
        rows += [r | {"episode": int(r["episode"]) + offset} for r in run]
        offset = rows[-1]["episode"] if rows else 0
    return rows, starts


def plot_learning_curve(metrics_csv: Path | list[Path], png: Path, title: str = "") -> None:
    """Training loss and validation accuracy (and open-set AUROC, where logged) against episodes (of
    one run or consecutive runs)."""
    rows, starts = read_runs(metrics_csv if isinstance(metrics_csv, list) else [metrics_csv])
    if not rows:
        return
    episodes = [int(r["episode"]) for r in rows]
    fig, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_axis.plot(episodes, [float(r["train_loss"]) for r in rows], marker=".")
    loss_axis.set(xlabel="episode", ylabel="training loss", yscale="log", title="training loss")
    acc_axis.plot(episodes, [float(r["train_accuracy"]) for r in rows], marker=".", label="train (queries)")
    acc_axis.plot(episodes, [float(r["val_accuracy"]) for r in rows], marker=".", label="validation")
    if all(r.get("val_attention_accuracy") for r in rows):
        attention = [float(r["val_attention_accuracy"]) for r in rows]
        acc_axis.plot(episodes, attention, linestyle="--", label="validation, attention only")
    auroc = [(int(r["episode"]), float(r["val_auroc"])) for r in rows if r.get("val_auroc")]
    if auroc:  # runs with the open-set loss also validate "none of these"
        acc_axis.plot(*zip(*auroc, strict=True), marker="x", label="validation AUROC, known vs unknown")
    acc_axis.set(xlabel="episode", ylabel="accuracy (%)", title="accuracy")
    for i, start in enumerate(starts):
        for axis in (loss_axis, acc_axis):
            axis.axvline(start, color="gray", linestyle=":", label=None if i else "continued (--init-from)")
    acc_axis.legend()
    for axis in (loss_axis, acc_axis):
        axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    acc_axis.grid(alpha=0.3)
    loss_axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description="Plot learning curves from metrics.csv files.")
    parser.add_argument("metrics", type=Path, nargs="+", help="metrics.csv of a run and of its continuations")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    plot_learning_curve(args.metrics, args.out, args.title)


if __name__ == "__main__":
    main()
