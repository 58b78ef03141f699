"""The validation a training run selects its checkpoint by, and ``training.average`` its average by."""

from __future__ import annotations

import torch

from model.metanet import MetaNet
from model.novelty import SCORE
from training.episodes import UNKNOWN
from training.evaluate import summarize_both, task_accuracies
from training.novelty_scores import open_set_outputs
from training.open_set_metrics import auroc
from training.open_set_tasks import open_set_episodes


def validate(
    model: MetaNet, pool, way: int, shot: int, tasks: int, device: torch.device, open_set: bool = False
) -> dict[str, float]:
    """Accuracy on validation tasks (always the same tasks: fixed seed, 5 queries per class), and with
    ``open_set`` the AUROC of the served novelty score on the same tasks with as many unknown classes
    mixed in (``training.open_set``; u and d only)."""
    result = summarize_both(task_accuracies(model, pool, way, shot, 5, tasks, seed=1234, device=device))
    if open_set:
        episodes = open_set_episodes(pool, way, shot, 5, None, seed=1234)
        outputs = open_set_outputs(model, episodes, tasks, 1, device, full_model=False)
        score, known = outputs.scores[SCORE], outputs.labels != UNKNOWN
        result["auroc"] = 100 * auroc(score[known], score[~known])
    return result
