"""What a training or evaluation command runs by default on each device, worked out here only.

The training stages, ``training.average``, ``training.evaluate`` and ``benchmarks.train_speed`` take
these when a flag is left out, so a recipe that names no ``--batch`` or ``--compile`` runs the same
engine in each of them.
"""

from __future__ import annotations

import torch


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_compile(device: torch.device | str) -> str:
    """``MetaNet.compile_meta_learners``'s choice: m and d on a GPU; d alone on a CPU, where
    compiled m measured slower."""
    return "all" if torch.device(device).type == "cuda" else "d"


def default_episodes_per_step(device: torch.device | str) -> int:
    """Training episodes per optimizer step and process: a meta-batch on a GPU, one on a CPU."""
    return 16 if torch.device(device).type == "cuda" else 1


def default_tasks_per_forward(device: torch.device | str) -> int:
    """Evaluation tasks per forward pass: many on a GPU; on a CPU one at a time measured fastest (cache)."""
    return 32 if torch.device(device).type == "cuda" else 1
