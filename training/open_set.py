r"""Open-set one-shot evaluation: calibrate the rejection threshold of a checkpoint, then test it.

    python -m training.open_set --checkpoint checkpoints/omniglot-standard-8val.safetensors \
        --split standard --false-rejection 0.05 --test-tasks 1000   # calibrate, then test tasks
    python -m training.evaluate --checkpoint checkpoints/omniglot-standard-8val.safetensors \
        --split standard --way 20 --tasks 1000 --open-set --json     # AUROC, FRR / FAR on test tasks

The pieces: open-set tasks (``training/open_set_tasks.py``: the closed-set tasks plus queries of classes
they do not hold), the candidate novelty scores (``training/novelty_scores.py``), AUROC and the rates
at a threshold (``training/open_set_metrics.py``) and the calibration of the threshold on validation
classes (``training/threshold_calibration.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint, metadata_path, read_metadata
from model.metanet import MetaNet
from model.novelty import SCORE, OpenSetCalibration
from training.data import DEFAULT_DATA
from training.devices import default_device
from training.episodes import ClassPool, load_split, validation_alphabets
from training.novelty_scores import open_set_outputs
from training.open_set_metrics import summarize_open_set
from training.open_set_tasks import open_set_episodes
from training.threshold_calibration import WEIGHTINGS, calibrate


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
    parser.add_argument("--device", default=default_device())
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
