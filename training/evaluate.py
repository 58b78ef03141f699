r"""Evaluate a checkpoint: mean accuracy and 95% confidence interval over one-shot test tasks.

    python -m training.evaluate --checkpoint checkpoints/omniglot-vinyals.safetensors \
        --split vinyals --way 5 --shot 1 --tasks 1000 --seed 0 --json
    python -m training.evaluate --checkpoint checkpoints/omniglot-standard-8val.safetensors \
        --split standard --way 20 --protocol within-alphabet --tasks 400 --json

Protocols:
- ``random``: N classes drawn at random from the test pool, K support and ``--queries`` query
  drawings per class (the paper's Tables 1 and 3).
- ``within-alphabet`` (Lake et al. 2015): N classes of one alphabet (at one rotation), the support
  drawings by one drawer and one query per class by another; ``--tasks`` trials.

``--way all`` is the server's scale: one task holds every class of the pool (659 characters of the
standard split's evaluation alphabets), one drawing each, and ``--queries`` other drawers' drawings
of each are classified against all of them (``--tasks`` such tasks, other drawers each time); it
reports top-1 and top-5 accuracy of the full model and of attention only.

``--open-set`` (random protocol, one-shot) adds ``--unknown`` other classes of the test pool
(default: as many as ``--way``), ``--queries`` drawings each, to every task's queries and reports
AUROC known-vs-unknown of every candidate novelty score, closed-set accuracy on the known queries
(the same tasks as without ``--open-set``) and false-rejection / false-acceptance rates at the
threshold calibrated in the checkpoint (training/open_set.py).

Both the full model and attention-only (the label of the largest total attention on the memory
keys, i.e. the nearest support example on u's embedding, no base learner) are scored on the same
tasks. Tasks are drawn in the same order whatever ``--batch`` is, and run ``--batch`` at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.checkpoint import load_checkpoint, metadata_path, read_metadata
from model.metanet import MetaNet
from model.novelty import OpenSetCalibration
from training.data import DEFAULT_DATA
from training.devices import default_device, default_tasks_per_forward
from training.episodes import (
    ClassPool,
    Episode,
    EpisodeSampler,
    all_classes_episode,
    load_split,
    validation_alphabets,
    within_alphabet_episodes,
)
from training.open_set import open_set_report, test_result_key

PROTOCOLS = ("random", "within-alphabet")


@dataclass
class TaskAccuracies:
    """Per-task accuracy of the full model and of attention alone, each [tasks] in 0..1."""

    full: np.ndarray
    attention: np.ndarray


@torch.no_grad()
def episode_accuracies(
    model: MetaNet,
    episodes: Iterator[Episode],
    tasks: int,
    batch: int,
    device: torch.device | str,
    progress: bool = False,
    desc: str = "",
) -> TaskAccuracies:
    """Accuracies of ``tasks`` same-shaped episodes, run ``batch`` at a time."""
    model.eval()
    full, attention = np.empty(tasks), np.empty(tasks)
    with tqdm(total=tasks, desc=desc, unit="task", disable=not progress) as bar:
        for start in range(0, tasks, batch):
            size = min(batch, tasks - start)
            episode = Episode.stack([next(episodes) for _ in range(size)]).to(device)
            # torch.func.grad computes the meta information even under no_grad.
            logits, votes = model.forward_with_attention(
                episode.support, episode.support_labels, episode.query, episode.label_codes
            )
            hits = logits.argmax(-1) == episode.query_labels  # [size, q]
            attention_hits = votes.argmax(-1) == episode.query_labels
            full[start : start + size] = hits.float().mean(-1).cpu().numpy()
            attention[start : start + size] = attention_hits.float().mean(-1).cpu().numpy()
            bar.update(size)
    return TaskAccuracies(full, attention)


def task_accuracies(
    model: MetaNet,
    pool: ClassPool,
    way: int,
    shot: int,
    queries: int,
    tasks: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    batch: int | None = None,
    protocol: str = "random",
) -> TaskAccuracies:
    """Accuracy of every task. Tasks are drawn reproducibly from ``seed``."""
    if protocol == "random":
        sampler = EpisodeSampler(pool, way, shot, queries, seed)
        episodes = iter(sampler.sample, None)
    elif protocol == "within-alphabet":
        if shot != 1:
            raise ValueError("the within-alphabet protocol is one-shot")
        episodes = iter(within_alphabet_episodes(pool, way, tasks, seed))
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    return episode_accuracies(
        model,
        episodes,
        tasks,
        batch or default_tasks_per_forward(device),
        device,
        progress,
        f"{way}-way {protocol}",
    )


@torch.no_grad()
def all_classes_accuracies(
    model: MetaNet,
    pool: ClassPool,
    queries: int,
    tasks: int,
    seed: int,
    device: torch.device | str,
    k: int = 5,
) -> dict[str, float]:
    """Top-1 and top-``k`` accuracy (mean and 95% half-width over ``tasks``) of the full model and of
    attention only, in tasks that hold every class of ``pool`` (``all_classes_episode``)."""
    model.eval()
    rng = np.random.default_rng(seed)
    hits: dict[str, list[float]] = {"top1": [], f"top{k}": [], "attention_top1": [], f"attention_top{k}": []}
    for _ in tqdm(range(tasks), desc=f"all {len(pool)} classes", unit="task"):
        episode = all_classes_episode(pool, queries, rng).to(device)
        memory = model.build_memory(episode.support, episode.support_labels, episode.label_codes)
        keys = model.embed(episode.query, memory.rep_task_weights)
        votes = model.label_attention(memory, model.read_attention(memory, keys))  # [q, K]
        (answer,) = model.classify_tasks([memory], [episode.query], [None])
        truth = episode.query_labels.unsqueeze(-1)
        for prefix, scores in (("", answer.logits), ("attention_", votes)):
            ranked = scores.topk(k, dim=-1).indices  # [q, k]
            hits[f"{prefix}top1"].append((ranked[:, 0] == truth[:, 0]).float().mean().item())
            hits[f"{prefix}top{k}"].append((ranked == truth).any(-1).float().mean().item())
    result: dict[str, float] = {"classes": len(pool), "queries": queries * len(pool)}
    for name, values in hits.items():
        summary = summarize(np.array(values))
        result[name], result[f"{name}_ci95"] = summary["accuracy"], summary["ci95"]
    return result


def summarize(accuracies: np.ndarray) -> dict[str, float]:
    """Mean accuracy and half-width of the 95% normal confidence interval, both in percent."""
    ci = 1.96 * accuracies.std(ddof=1) / math.sqrt(len(accuracies)) if len(accuracies) > 1 else float("nan")
    return {"accuracy": 100 * float(accuracies.mean()), "ci95": 100 * float(ci)}


def summarize_both(result: TaskAccuracies) -> dict[str, float]:
    """Full model and attention-only, with the paired 95% interval of their difference."""
    full, attention = summarize(result.full), summarize(result.attention)
    gain = summarize(result.full - result.attention)
    return full | {
        "attention_only_accuracy": attention["accuracy"],
        "attention_only_ci95": attention["ci95"],
        "gain_over_attention": gain["accuracy"],
        "gain_ci95": gain["ci95"],
    }


def result_key(split: str, part: str, way: int, shot: int, protocol: str) -> str:
    suffix = "" if protocol == "random" else f" {protocol}"
    return f"{split}/{part} {way}-way {shot}-shot{suffix}"


def record_test_result(checkpoint: str, args: argparse.Namespace, result: dict[str, float]) -> None:
    """Add a measured test accuracy to the checkpoint's metadata JSON."""
    path = metadata_path(checkpoint)
    metadata = read_metadata(checkpoint)
    key = result_key(args.split, args.part, args.way, args.shot, args.protocol)
    metadata.setdefault("test", {})[key] = result | {
        "tasks": args.tasks,
        "queries_per_class": args.queries if args.protocol == "random" else 1,
        "seed": args.seed,
        "device": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else "cpu",
        "command": "python -m training.evaluate " + " ".join(sys.argv[1:]),
    }
    path.write_text(json.dumps(metadata, indent=2) + "\n")


def evaluate_open_set(args: argparse.Namespace, model: MetaNet, pool: ClassPool) -> None:
    """``--open-set``: print (and with ``--record`` store) the open-set summary of the tasks."""
    if args.protocol != "random" or args.shot != 1:
        raise SystemExit("--open-set runs one-shot tasks of the random protocol")
    metadata = read_metadata(args.checkpoint)
    calibration = OpenSetCalibration.from_metadata(metadata)
    result = open_set_report(
        model,
        pool,
        args.way,
        args.tasks,
        args.seed,
        args.device,
        args.batch or default_tasks_per_forward(args.device),
        metadata,
        args.queries,
        args.unknown,
        full_model=not args.keys_only,
        scores_path=args.scores,
        progress=not args.json,
    ) | {
        "split": args.split,
        "part": args.part,
        "command": "python -m training.evaluate " + " ".join(sys.argv[1:]),
    }
    if args.record:
        if "open_set" not in metadata:
            raise SystemExit("--record needs a calibrated checkpoint (python -m training.open_set)")
        if args.part != "test":
            raise SystemExit("--record stores test results; this run is on " + args.part)
        metadata = read_metadata(args.checkpoint)  # again: another run may have recorded meanwhile
        metadata["open_set"].setdefault("test", {})[test_result_key(args.split, args.way)] = result
        metadata_path(args.checkpoint).write_text(json.dumps(metadata, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.split} {args.way}-way 1-shot open set over {args.tasks} tasks:")
    if result["closed_set_accuracy"] is not None:
        print(f"  closed-set accuracy {result['closed_set_accuracy']:.2f}% (rejection off)")
    print(f"  attention-only accuracy {result['attention_only_accuracy']:.2f}%")
    for name, value in result["auroc"].items():
        print(f"  AUROC {name}: {value:.2f}")
    if calibration is not None:
        print(
            f"  at threshold {calibration.threshold:.4f} (calibrated for "
            f"{result['false_rejection_target']:.1f}% false rejection): "
            f"FRR {result['false_rejection_rate']:.2f}%, FAR {result['false_acceptance_rate']:.2f}%"
        )


def evaluate_all_classes(args: argparse.Namespace, model: MetaNet, pool: ClassPool) -> None:
    """``--way all``: print (and with ``--record`` store) top-1 / top-5 in tasks of every class."""
    if args.protocol != "random" or args.shot != 1 or args.open_set:
        raise SystemExit("--way all runs one-shot tasks of the random protocol, closed set")
    args.queries = args.queries or 2
    result = all_classes_accuracies(model, pool, args.queries, args.tasks, args.seed, args.device) | {
        "way": "all",
        "tasks": args.tasks,
        "split": args.split,
        "part": args.part,
        "seed": args.seed,
        "command": "python -m training.evaluate " + " ".join(sys.argv[1:]),
    }
    if args.record:
        metadata = read_metadata(args.checkpoint)
        metadata.setdefault("test", {})[f"{args.split}/{args.part} all-way 1-shot"] = result
        metadata_path(args.checkpoint).write_text(json.dumps(metadata, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.split} all {result['classes']} classes at once, {args.tasks} tasks: "
        f"top-1 {result['top1']:.2f}% ± {result['top1_ci95']:.2f}, top-5 {result['top5']:.2f}%; "
        f"attention only: top-1 {result['attention_top1']:.2f}%, top-5 {result['attention_top5']:.2f}%"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder with the Omniglot zips and splits/"
    )
    parser.add_argument("--split", choices=["vinyals", "standard"], required=True)
    parser.add_argument("--part", choices=["train", "val", "test"], default="test")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="random")
    parser.add_argument(
        "--way", type=lambda v: v if v == "all" else int(v), default=5, help="classes per task, or all"
    )
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument(
        "--queries", type=int, default=None, help="query images per class (random protocol: 5, --way all: 2)"
    )
    parser.add_argument("--tasks", type=int, default=1000, help="tasks (trials, within-alphabet)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--batch", type=int, default=None, help="tasks per forward pass (default: by device)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile m, and d where its fused CPU kernel does not run, with torch.compile",
    )
    parser.add_argument(
        "--open-set", action="store_true", help="mix queries of classes the task does not hold in"
    )
    parser.add_argument("--unknown", type=int, default=None, help="unknown classes per open-set task")
    parser.add_argument(
        "--keys-only",
        action="store_true",
        help="open set: run u and d only (key-based scores, attention-only accuracy), several times faster",
    )
    parser.add_argument(
        "--scores", type=Path, default=None, help="open set: save every query's label and scores (.npz)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument(
        "--record", action="store_true", help="store the result in the checkpoint's JSON metadata"
    )
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model, metadata = load_checkpoint(args.checkpoint, args.device)
    if args.compile:
        model.compile_meta_learners()
    pool = load_split(args.split, args.part, args.data, held_out=validation_alphabets(metadata))
    if args.way == "all":
        evaluate_all_classes(args, model, pool)
        return
    args.queries = args.queries or 5
    if args.open_set:
        evaluate_open_set(args, model, pool)
        return
    accuracies = task_accuracies(
        model,
        pool,
        args.way,
        args.shot,
        args.queries,
        args.tasks,
        args.seed,
        args.device,
        progress=not args.json,
        batch=args.batch,
        protocol=args.protocol,
    )
    result = summarize_both(accuracies)
    if args.record:
        record_test_result(args.checkpoint, args, result)
    if args.json:
        print(
            json.dumps(
                result
                | {
                    "way": args.way,
                    "shot": args.shot,
                    "tasks": args.tasks,
                    "split": args.split,
                    "protocol": args.protocol,
                }
            )
        )
    else:
        print(
            f"{args.split} {args.way}-way {args.shot}-shot ({args.protocol}) over {args.tasks} tasks: "
            f"{result['accuracy']:.2f}% ± {result['ci95']:.2f}; attention only "
            f"{result['attention_only_accuracy']:.2f}% ± {result['attention_only_ci95']:.2f}"
        )


if __name__ == "__main__":
    main()
