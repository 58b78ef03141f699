"""A training run's snapshots: its weights at every validation (``--snapshots``), kept in
``<run-dir>/snapshots/`` for ``training.average`` to average."""

from __future__ import annotations

import re
from pathlib import Path

from safetensors.torch import save_file

from model.checkpoint import weights
from model.metanet import MetaNet

SNAPSHOT = re.compile(r"episode-(\d+)\.safetensors$")


def snapshot_path(run_dir: Path, episodes: int) -> Path:
    """Where a run keeps its weights after ``episodes`` episodes."""
    return run_dir / "snapshots" / f"episode-{episodes:09d}.safetensors"


def snapshot_episodes(path: Path) -> int:
    """The episodes after which the snapshot at ``path`` was taken."""
    return int(SNAPSHOT.search(path.name).group(1))


def save_snapshot(model: MetaNet, run_dir: Path, episodes: int) -> None:
    path = snapshot_path(run_dir, episodes)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights(model), str(path))


def clear_snapshots(run_dir: Path) -> None:
    """Remove a run's snapshots (a fresh run in the same folder must not average an older run's)."""
    for path in run_snapshots(run_dir):
        path.unlink()


def run_snapshots(run_dir: Path) -> list[Path]:
    """A run's snapshots, oldest first."""
    return sorted((run_dir / "snapshots").glob("episode-*.safetensors"))
