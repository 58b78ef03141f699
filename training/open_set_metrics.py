"""How well a novelty score tells known from unknown queries: AUROC, and the rejection rates and
accuracies at a calibrated threshold."""

from __future__ import annotations

import numpy as np
import torch

from model.novelty import OpenSetCalibration
from training.episodes import UNKNOWN
from training.novelty_scores import OpenSetOutputs


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Probability that an unknown query scores higher (more novel) than a known one, ties half."""
    scores = np.concatenate([known, unknown])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    sorted_scores = scores[order]  # average the ranks of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first[counts > 1], counts[counts > 1], strict=True):
        ranks[order[start : start + count]] = ranks[order[start : start + count]].mean()
    unknown_ranks = ranks[len(known) :].sum()
    return float((unknown_ranks - len(unknown) * (len(unknown) + 1) / 2) / (len(known) * len(unknown)))


def summarize_open_set(
    outputs: OpenSetOutputs,
    calibration: OpenSetCalibration | None,
    candidate_thresholds: dict[str, float] | None = None,
) -> dict:
    """AUROC of every candidate (pooled over all queries, and the mean of per-task AUROCs), closed-set
    accuracy on the known queries, and rejection rates at the calibrated threshold, all in percent."""
    known = outputs.labels != UNKNOWN
    attention_hits = outputs.attention_predicted == outputs.labels
    hits = attention_hits if outputs.predicted is None else outputs.predicted == outputs.labels
    result: dict = {
        "closed_set_accuracy": None if outputs.predicted is None else 100 * float(hits[known].mean()),
        "attention_only_accuracy": 100 * float(attention_hits[known].mean()),
        "known_queries": int(known.sum()),
        "unknown_queries": int((~known).sum()),
        "auroc": {},
        "auroc_per_task_mean": {},
    }
    for name, score in outputs.scores.items():
        result["auroc"][name] = 100 * auroc(score[known], score[~known])
        per_task = [auroc(s[k], s[~k]) for s, k in zip(score, known, strict=True)]
        result["auroc_per_task_mean"][name] = 100 * float(np.mean(per_task))
    if calibration is not None:
        accepted = calibration.known(torch.from_numpy(outputs.scores[calibration.score])).numpy()
        result |= {
            "threshold": calibration.threshold,
            "false_rejection_target": 100 * calibration.false_rejection_target,
            "false_rejection_rate": 100 * float((~accepted[known]).mean()),
            # each alphabet's own rate (index: the pool's sorted alphabets): how much style moves it
            "false_rejection_by_alphabet": {
                int(a): 100 * float((~accepted[known & (outputs.alphabets == a)]).mean())
                for a in np.unique(outputs.alphabets[known])
            },
            "false_acceptance_rate": 100 * float(accepted[~known].mean()),
            # right label (of the full model, else of attention) and accepted, or unknown and rejected
            "open_set_accuracy": 100 * float(np.where(known, hits & accepted, ~accepted).mean()),
        }
    if candidate_thresholds:  # every candidate at its own validation threshold: does it transfer?
        result["candidates_at_validation_thresholds"] = {
            name: {
                "false_rejection_rate": 100 * float((score[known] > candidate_thresholds[name]).mean()),
                "false_acceptance_rate": 100 * float((score[~known] <= candidate_thresholds[name]).mean()),
            }
            for name, score in outputs.scores.items()
            if name in candidate_thresholds
        }
    return result
