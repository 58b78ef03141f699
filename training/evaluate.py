"""Evaluate a checkpoint: mean accuracy and 95% confidence interval over N-way K-shot test tasks.

    python -m training.evaluate --checkpoint checkpoints/omniglot-vinyals.safetensors \
        --split vinyals --way 5 --shot 1 --tasks 1000 --seed 0 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import torch
from tqdm import tqdm

from model.checkpoint import load_checkpoint, metadata_path, read_metadata
from model.metanet import MetaNet
from training.episodes import ClassPool, EpisodeSampler, load_split


@torch.no_grad()
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
) -> np.ndarray:
    """Accuracy of every task, [tasks]. Tasks are drawn reproducibly from ``seed``."""
    model.eval()
    sampler = EpisodeSampler(pool, way, shot, queries, seed)
    accuracies = np.empty(tasks)
    for t in tqdm(range(tasks), desc=f"{way}-way {shot}-shot", unit="task", disable=not progress):
        episode = sampler.sample().to(device)
        # torch.func.grad computes the meta information even under no_grad.
        logits = model(episode.support, episode.support_labels, episode.query, episode.label_codes)
        accuracies[t] = (logits.argmax(-1) == episode.query_labels).float().mean().item()
    return accuracies


def summarize(accuracies: np.ndarray) -> dict[str, float]:
    """Mean accuracy and half-width of the 95% normal confidence interval, both in percent."""
    ci = 1.96 * accuracies.std(ddof=1) / math.sqrt(len(accuracies)) if len(accuracies) > 1 else float("nan")
    return {"accuracy": 100 * float(accuracies.mean()), "ci95": 100 * float(ci)}


def record_test_result(checkpoint: str, args: argparse.Namespace, result: dict[str, float]) -> None:
    """Add a measured test accuracy to the checkpoint's metadata JSON."""
    path = metadata_path(checkpoint)
    metadata = read_metadata(checkpoint)
    key = f"{args.split}/{args.part} {args.way}-way {args.shot}-shot"
    metadata.setdefault("test", {})[key] = result | {
        "tasks": args.tasks,
        "queries_per_class": args.queries,
        "seed": args.seed,
        "device": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else "cpu",
        "command": "python -m training.evaluate " + " ".join(sys.argv[1:]),
    }
    path.write_text(json.dumps(metadata, indent=2) + "\n")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", choices=["vinyals", "standard"], required=True)
    parser.add_argument("--part", choices=["train", "val", "test"], default="test")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--queries", type=int, default=5, help="query images per class in each task")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument(
        "--record", action="store_true", help="store the result in the checkpoint's JSON metadata"
    )
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model, _ = load_checkpoint(args.checkpoint, args.device)
    pool = load_split(args.split, args.part)
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
    )
    result = summarize(accuracies)
    if args.record:
        record_test_result(args.checkpoint, args, result)
    if args.json:
        print(
            json.dumps(
                result | {"way": args.way, "shot": args.shot, "tasks": args.tasks, "split": args.split}
            )
        )
    else:
        print(
            f"{args.split} {args.way}-way {args.shot}-shot over {args.tasks} tasks: "
            f"{result['accuracy']:.2f}% ± {result['ci95']:.2f}",
            file=sys.stdout,
        )


if __name__ == "__main__":
    main()
