r"""Open-set one-shot tasks: queries of the task's concepts mixed with queries of concepts it does
not hold, the novelty scores that tell them apart, and the calibration of the rejection threshold.

    python -m training.open_set --checkpoint checkpoints/omniglot-standard-8val.safetensors \
        --split standard --false-rejection 0.05 --test-tasks 1000   # calibrate, then test tasks
    python -m training.evaluate --checkpoint checkpoints/omniglot-standard-8val.safetensors \
        --split standard --way 20 --tasks 1000 --open-set --json     # AUROC, FRR / FAR on test tasks

An open-set task is the closed-set task ``EpisodeSampler`` draws under the same seed (so its
closed-set accuracy is the ordinary evaluation's), plus ``queries`` drawings of each of
``unknown`` other classes of the same pool (by default as many as the task has), drawn from a
second random stream. Calibration reads the threshold from the known queries of tasks drawn
from the split's validation classes only: for the standard split, the background alphabets the
checkpoint was trained without (its ``validation_alphabets``), never images_evaluation. By default it
targets the mean of the validation alphabets' false-rejection rates (``balanced_threshold``),
and reports how far a threshold read without one alphabet misses on it
(``leave_one_alphabet_out``).

Every candidate novelty score is measured on the same queries (higher = more novel; the last two
need the full model's logits, so ``--keys-only`` runs skip them):
``nearest_key_distance`` (the server's, model/novelty.py), ``attention`` (1 - the largest total
attention on one label), ``max_probability`` (1 - the largest softmax probability of the full
model), ``energy`` (-logsumexp of the logits), ``key_margin`` (minus the gap between the
nearest and the second nearest label's key) and ``task_normalized_distance`` (the nearest-key
distance divided by the task's mean distance between each support key and its nearest key of
another label).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.checkpoint import load_checkpoint, metadata_path, read_metadata
from model.metanet import MetaNet, label_matrix, shots_per_row
from model.novelty import SCORE, OpenSetCalibration, novelty
from model.preprocess import to_tensor
from training.data import DEFAULT_DATA
from training.episodes import UNKNOWN, ClassPool, Episode, EpisodeSampler, load_split, validation_alphabets

CANDIDATES = (
    "nearest_key_distance",
    "attention",
    "max_probability",
    "energy",
    "key_margin",
    "task_normalized_distance",
)
WEIGHTINGS = ("alphabet", "query")  # how calibration weighs the known queries (see calibrate)


class OpenSetSampler:
    """Closed-set N-way K-shot episodes of ``EpisodeSampler`` (same seed, same tasks) with
    ``queries`` drawings of each of ``unknown`` other classes as their unknown queries
    (``Episode.unknown``; ``Episode.open_set_queries`` gives all of them with their labels)."""

    def __init__(self, pool: ClassPool, way: int, shot: int, queries: int, unknown: int, seed: int) -> None:
        if way + unknown > len(pool):
            raise ValueError(
                f"{way} known and {unknown} unknown classes need more than the pool's {len(pool)}"
            )
        self.pool, self.queries, self.unknown = pool, queries, unknown
        self.known = EpisodeSampler(pool, way, shot, queries, seed)
        self.rng = np.random.default_rng([seed, 1])

    def sample(self) -> Episode:
        return self.sample_with_groups()[0]

    def sample_with_groups(self) -> tuple[Episode, np.ndarray]:
        """An episode and the alphabet of each query's class [q + u] (``UNKNOWN`` for the unknown queries)."""
        episode, chosen = self.known.sample_with_classes()
        others = np.setdiff1d(np.arange(len(self.pool)), chosen)
        classes = self.rng.choice(others, size=self.unknown, replace=False)
        drawings = np.stack([self.rng.choice(20, size=self.queries, replace=False) for _ in classes])
        images = np.stack(
            [
                np.rot90(self.pool.images[self.pool.classes[c][0], d], self.pool.classes[c][1], axes=(1, 2))
                for c, d in zip(classes, drawings, strict=True)
            ]
        ).reshape(-1, 28, 28)  # [U*L, 28, 28]
        pool_groups = self.pool.groups  # alphabet * 4 + rotation of each class
        alphabets = np.zeros(len(chosen), dtype=np.int64) if pool_groups is None else pool_groups[chosen] // 4
        groups = np.concatenate([alphabets[episode.query_labels.numpy()], np.full(len(images), UNKNOWN)])
        return replace(episode, unknown=to_tensor(images)), groups


@dataclass
class OpenSetOutputs:
    """Per query of every task: label [tasks, q] (-1 unknown), the alphabet of its class [tasks, q]
    (-1 unknown), predictions of attention alone and (with the base learner run) of the full model
    [tasks, q], and every candidate novelty score {name: [tasks, q]}."""

    labels: np.ndarray
    alphabets: np.ndarray
    attention_predicted: np.ndarray
    predicted: np.ndarray | None
    scores: dict[str, np.ndarray]


def candidate_scores(
    model: MetaNet, episode: Episode, full_model: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]:
    """One batch of episodes -> (logits [E, q, K] or None, label attention [E, q, K], {score: [E, q]}).

    Without ``full_model`` only u and d run (no m, no base learner): the key-based scores and
    attention-only predictions, several times faster."""
    support, labels, codes = episode.support, episode.support_labels, episode.label_codes
    if full_model:
        memory = model.build_memory(support, labels, codes)
        rep_task, keys = memory.rep_task_weights, memory.keys
    else:
        slots = codes.gather(-1, labels)
        t = model.config.max_task_examples
        rep_task = model.rep_task_weights(support[..., :t, :, :, :], slots[..., :t])[0]
        keys = model.embed(support, rep_task)
    queries = episode.open_set_queries()[0]
    query_keys = model.embed(queries, rep_task)  # [E, q + u, C]
    cosine = query_keys @ keys.transpose(-1, -2)  # [E, q, n]
    label_of = label_matrix(labels, codes.shape[-1], cosine.dtype)  # [E, n, K]
    attention = model.attention(cosine, shots_per_row(labels, codes.shape[-1], cosine.dtype).unsqueeze(-2))
    votes = attention @ label_of  # [E, q, K]
    per_label = cosine.unsqueeze(-1).masked_fill(label_of.unsqueeze(-3) == 0, -2.0).amax(-2)  # [E, q, K]
    top2 = per_label.topk(min(2, per_label.shape[-1]), dim=-1).values
    margin = top2[..., 0] - top2[..., 1] if top2.shape[-1] > 1 else top2[..., 0]
    distance = novelty(query_keys, keys)  # [E, q]
    support_cos = keys @ keys.transpose(-1, -2)  # [E, n, n]
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)
    spacing = 1 - support_cos.masked_fill(same, -2.0).amax(-1)  # [E, n] to the nearest other label
    scores = {
        "nearest_key_distance": distance,
        "attention": 1 - votes.amax(-1),
        "key_margin": -margin,
        "task_normalized_distance": distance / spacing.mean(-1, keepdim=True).clamp_min(1e-6),
    }
    logits = None
    if full_model:
        logits = model.query_logits(queries, memory, attention)
        scores["max_probability"] = 1 - torch.softmax(logits, -1).amax(-1)
        scores["energy"] = -torch.logsumexp(logits, -1)
    return logits, votes, scores


@torch.no_grad()
def open_set_outputs(
    model: MetaNet,
    episodes: Iterator[tuple[Episode, np.ndarray]],
    tasks: int,
    batch: int,
    device: torch.device | str,
    full_model: bool = True,
    progress: bool = False,
    desc: str = "",
) -> OpenSetOutputs:
    """Run ``tasks`` open-set episodes (each with its queries' alphabets) ``batch`` at a time."""
    model.eval()
    labels, alphabets, predicted, attention_predicted = [], [], [], []
    scores: dict[str, list[np.ndarray]] = {}
    with tqdm(total=tasks, desc=desc, unit="task", disable=not progress) as bar:
        for start in range(0, tasks, batch):
            size = min(batch, tasks - start)
            drawn = [next(episodes) for _ in range(size)]
            episode = Episode.stack([e for e, _ in drawn]).to(device)
            alphabets.append(np.stack([g for _, g in drawn]))
            logits, votes, batch_scores = candidate_scores(model, episode, full_model)
            labels.append(episode.open_set_queries()[1].cpu().numpy())
            attention_predicted.append(votes.argmax(-1).cpu().numpy())
            if logits is not None:
                predicted.append(logits.argmax(-1).cpu().numpy())
            for name, value in batch_scores.items():
                scores.setdefault(name, []).append(value.float().cpu().numpy())
            bar.update(size)
    return OpenSetOutputs(
        np.concatenate(labels),
        np.concatenate(alphabets),
        np.concatenate(attention_predicted),
        np.concatenate(predicted) if predicted else None,
        {name: np.concatenate(value) for name, value in scores.items()},
    )


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


def open_set_episodes(
    pool: ClassPool, way: int, shot: int, queries: int, unknown: int | None, seed: int
) -> Iterator[tuple[Episode, np.ndarray]]:
    """Open-set episodes, each with the alphabet of every query's class (-1: unknown)."""
    sampler = OpenSetSampler(pool, way, shot, queries, way if unknown is None else unknown, seed)
    return iter(sampler.sample_with_groups, None)


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


def test_result_key(split: str, way: int) -> str:
    """Where a split's open-set test result is kept in the checkpoint's ``open_set.test``."""
    return f"{split}/test {way}-way 1-shot open-set"


def open_set_report(
    model: MetaNet,
    pool: ClassPool,
    way: int,
    tasks: int,
    seed: int,
    device: torch.device | str,
    batch: int,
    metadata: dict,
    queries: int = 5,
    unknown: int | None = None,
    full_model: bool = False,
    scores_path: Path | None = None,
    progress: bool = False,
) -> dict:
    """The open-set summary of ``tasks`` one-shot tasks of ``pool`` at the calibration stored in
    ``metadata`` (the checkpoint's), with how they were drawn and how long they took."""
    started = time.perf_counter()
    outputs = open_set_outputs(
        model,
        open_set_episodes(pool, way, 1, queries, unknown, seed),
        tasks,
        batch,
        device,
        full_model=full_model,
        progress=progress,
        desc=f"{way}-way open set",
    )
    if scores_path is not None:  # every query's label, alphabet and scores, to re-read later
        np.savez_compressed(scores_path, labels=outputs.labels, alphabets=outputs.alphabets, **outputs.scores)
    thresholds = metadata.get("open_set", {}).get("candidate_thresholds")
    return summarize_open_set(outputs, OpenSetCalibration.from_metadata(metadata), thresholds) | {
        "way": way,
        "shot": 1,
        "tasks": tasks,
        "unknown_classes": way if unknown is None else unknown,
        "full_model": full_model,
        "queries_per_class": queries,
        "seed": seed,
        "device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu",
        "wall_time_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", choices=["vinyals", "standard"], required=True)
    parser.add_argument(
        "--false-rejection", type=float, default=0.05, help="share of known queries to reject (0..1)"
    )
    parser.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        default="alphabet",
        help="the rate to hit: the mean of the validation alphabets' rates, or the pooled queries' rate",
    )
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--tasks", type=int, default=500, help="validation tasks per way")
    parser.add_argument(
        "--test-tasks",
        type=int,
        default=0,
        help="then evaluate this many test tasks per way at the new threshold and store the results",
    )
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1, help="tasks per forward pass")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile d with torch.compile where its fused CPU kernel does not run (a GPU)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the threshold, do not store it")
    args = parser.parse_args(argv)
    if args.dry_run and args.test_tasks:
        parser.error("--test-tasks evaluates at the stored threshold: leave out --dry-run")

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    model, checkpoint_metadata = load_checkpoint(args.checkpoint, args.device)
    if args.compile:
        model.compile_meta_learners("d")
    pool = load_split(args.split, "val", args.data, held_out=validation_alphabets(checkpoint_metadata))
    thresholds, at_threshold = calibrate(
        model,
        pool,
        args.ways,
        args.tasks,
        args.queries,
        args.false_rejection,
        args.seed,
        args.device,
        args.batch,
        progress=True,
        weighting=args.weighting,
    )
    weighing = "the mean of the alphabets' rates" if args.weighting == "alphabet" else "pooled"
    calibration = OpenSetCalibration(
        threshold=thresholds[SCORE],
        false_rejection_target=args.false_rejection,
        calibrated_on=(
            f"{args.split}/val: known queries of {args.tasks} one-shot tasks at each of "
            f"{', '.join(f'{w}-way' for w in args.ways)}, {args.queries} queries per class, "
            f"seed {args.seed}; rate: {weighing}"
        ),
        command="python -m training.open_set " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    found = {"open_set": calibration.to_dict(), "candidate_thresholds": thresholds}
    found["validation"] = at_threshold
    found["calibration_wall_time_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(found, indent=2), flush=True)
    if args.dry_run:
        return
    metadata = read_metadata(args.checkpoint)
    metadata["open_set"] = calibration.to_dict() | {
        "validation": at_threshold,
        "candidate_thresholds": thresholds,  # each score's own, for the evaluation's comparison
    }
    metadata_path(args.checkpoint).write_text(json.dumps(metadata, indent=2) + "\n")
    if not args.test_tasks:
        return
    test = load_split(args.split, "test", args.data)
    for way in args.ways:
        result = open_set_report(
            model, test, way, args.test_tasks, args.seed, args.device, args.batch, metadata, args.queries
        )
        metadata["open_set"].setdefault("test", {})[test_result_key(args.split, way)] = result | {
            "command": calibration.command
        }
        metadata_path(args.checkpoint).write_text(json.dumps(metadata, indent=2) + "\n")
        print(json.dumps({test_result_key(args.split, way): result}), flush=True)
    print(json.dumps({"total_wall_time_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
