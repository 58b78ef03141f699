"""Calibration of the rejection threshold: read from the known queries of tasks drawn from the split's
validation classes only (for the standard split, the background alphabets the checkpoint was trained
without, never images_evaluation). By default it targets the mean of the validation alphabets'
false-rejection rates (``balanced_threshold``), and reports how far a threshold read without one
alphabet misses on it (``leave_one_alphabet_out``)."""

from __future__ import annotations

import numpy as np
import torch

from model.metanet import MetaNet
from model.novelty import SCORE, OpenSetCalibration
from training.episodes import UNKNOWN, ClassPool
from training.novelty_scores import open_set_outputs
from training.open_set_metrics import summarize_open_set
from training.open_set_tasks import open_set_episodes

WEIGHTINGS = ("alphabet", "query")  # how calibration weighs the known queries (see calibrate)


def balanced_threshold(scores: np.ndarray, alphabets: np.ndarray, false_rejection: float) -> float:
    """The lowest threshold at which the mean over alphabets of the share of known-query scores
    above it is at most ``false_rejection`` (scores, alphabets: [n] of known queries).

    Every alphabet weighs the same whatever its number of characters: a new set of alphabets is a
    new draw of drawing styles, and one validation alphabet is one sample of them."""
    groups = [np.sort(scores[alphabets == a]) for a in np.unique(alphabets)]
    candidates = np.sort(scores)
    rejected = np.mean([1 - np.searchsorted(g, candidates, side="right") / len(g) for g in groups], axis=0)
    return float(candidates[np.argmax(rejected <= false_rejection)])  # rejected falls as t grows


def leave_one_alphabet_out(scores: np.ndarray, alphabets: np.ndarray, false_rejection: float) -> list[dict]:
    """For each alphabet: the balanced threshold of the other alphabets and the share of this
    alphabet's known queries it rejects (percent), i.e. how far a calibration misses on a style it
    has not seen. Empty for a single alphabet."""
    held_out = []
    for a in np.unique(alphabets) if len(np.unique(alphabets)) > 1 else []:
        threshold = balanced_threshold(scores[alphabets != a], alphabets[alphabets != a], false_rejection)
        rate = 100 * float((scores[alphabets == a] > threshold).mean())
        held_out.append({"alphabet": int(a), "threshold": threshold, "false_rejection_rate": rate})
    return held_out


def calibrate(
    model: MetaNet,
    pool: ClassPool,
    ways: list[int],
    tasks: int,
    queries: int,
    false_rejection: float,
    seed: int,
    device: torch.device | str,
    batch: int,
    progress: bool = False,
    weighting: str = "alphabet",
) -> tuple[dict[str, float], dict]:
    """Thresholds that reject a share ``false_rejection`` of the known queries of ``tasks`` one-shot
    tasks at each way in ``ways``, one per key-based candidate score: with ``weighting`` "alphabet"
    the mean of the alphabets' rates (``balanced_threshold``), with "query" the pooled rate.
    Returns (thresholds, the open-set summary of each way at them, with the served score's
    leave-one-alphabet-out rates under "leave_one_alphabet_out")."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}")
    outputs = {
        way: open_set_outputs(
            model,
            open_set_episodes(pool, way, 1, queries, None, seed),
            tasks,
            batch,
            device,
            full_model=False,
            progress=progress,
            desc=f"calibrate {way}-way",
        )
        for way in ways
    }
    alphabets = np.concatenate([o.alphabets[o.labels != UNKNOWN] for o in outputs.values()])
    groups = np.zeros_like(alphabets) if weighting == "query" else alphabets  # whose rates are averaged
    known = {
        name: np.concatenate([o.scores[name][o.labels != UNKNOWN] for o in outputs.values()])
        for name in next(iter(outputs.values())).scores
    }
    thresholds = {name: balanced_threshold(k, groups, false_rejection) for name, k in known.items()}
    at = OpenSetCalibration(thresholds[SCORE], false_rejection)
    summary = {f"{way}-way": summarize_open_set(o, at) for way, o in outputs.items()}
    summary["leave_one_alphabet_out"] = leave_one_alphabet_out(known[SCORE], alphabets, false_rejection)
    return thresholds, summary
