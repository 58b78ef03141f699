"""Accuracy against bytes per example of each fast-weight storage (model/compact.py), through the
server's predictor path.

    python -m benchmarks.memory_storage --tasks 1000 --seed 0     # random and within-alphabet 20-way

Each task takes 20 characters of images_evaluation (random ones, or 20 of one alphabet: Lake et al.'s
within-alphabet protocol), teaches one drawing of each and classifies another drawing of each. The
task's memory is built once in float32 and stored in every format (same keys, same Q*); the
accuracy of each format is paired with float32's on the same queries, so the reported loss has a
tight interval. Prints a table and writes benchmarks/results/memory_storage.json (each protocol's
rows as it finishes; a run of one protocol keeps the other's rows already in the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.checkpoint import DEFAULT_CHECKPOINT
from model.compact import STORAGES, FastWeightRows
from model.inference import MetaNetPredictor, TaskMemory
from training.data import load_archive

RESULTS = Path(__file__).resolve().parent / "results" / "memory_storage.json"
GIB = 1024**3


def tasks(characters, protocol: str, count: int, way: int, seed: int) -> list[tuple[np.ndarray, int, int]]:
    """(chosen characters [way], taught drawer, asked drawer) per task."""
    rng = np.random.default_rng(seed)
    alphabets: dict[str, list[int]] = {}
    for index, name in enumerate(characters.names):
        alphabets.setdefault(name.split("/")[0], []).append(index)
    eligible = sorted(a for a, members in alphabets.items() if len(members) >= way)
    drawn = []
    for _ in range(count):
        if protocol == "random":
            chosen = rng.choice(len(characters.names), way, replace=False)
        else:
            chosen = rng.choice(alphabets[eligible[rng.integers(len(eligible))]], way, replace=False)
        taught, asked = rng.choice(20, 2, replace=False)
        drawn.append((chosen, int(taught), int(asked)))
    return drawn


def stored_as(predictor: MetaNetPredictor, task: TaskMemory, storage: str) -> TaskMemory:
    rows = FastWeightRows.from_dense(task.memory.fast_weights.dense(), predictor.layout, storage)
    return dataclasses.replace(task, memory=dataclasses.replace(task.memory, fast_weights=rows))


def bytes_per_example(predictor: MetaNetPredictor, task: TaskMemory, storage: str) -> float:
    """Derived memory per example of a large task (Q* and d's state amortized away)."""
    memory = stored_as(predictor, task, storage)
    m = memory.memory
    per_row = m.fast_weights.bytes_per_row()
    other = sum(t[0].numel() * t.element_size() for t in (m.fast_out, m.keys, m.labels, memory.images))
    return per_row + other


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--way", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocols", nargs="+", default=["random", "within-alphabet"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    characters = load_archive("images_evaluation")
    predictor = MetaNetPredictor.load(args.checkpoint, storage="float32")
    truth = np.arange(args.way)
    results: dict = {
        "checkpoint": args.checkpoint,
        "tasks": args.tasks,
        "way": args.way,
        "seed": args.seed,
        "host": platform.node(),
        "torch": torch.__version__,
    }
    for protocol in args.protocols:
        started = time.perf_counter()
        hits = {storage: [] for storage in STORAGES}
        task = None
        for chosen, taught, asked in tqdm(
            tasks(characters, protocol, args.tasks, args.way, args.seed), protocol
        ):
            support, query = characters.images[chosen, taught], characters.images[chosen, asked]
            task = predictor.build_memory(support, [str(c) for c in chosen])
            for storage in STORAGES:
                probabilities = predictor.classify(stored_as(predictor, task, storage), query)
                hits[storage].append(float((probabilities.argmax(1).numpy() == truth).mean()))
        reference = np.array(hits["float32"])
        rows = {}
        for storage in STORAGES:
            accuracy = np.array(hits[storage])
            loss = reference - accuracy
            per_example = bytes_per_example(predictor, task, storage)
            rows[storage] = {
                "accuracy": 100 * accuracy.mean(),
                "ci95": 196 * accuracy.std(ddof=1) / math.sqrt(len(accuracy)),
                "loss_points": 100 * loss.mean(),
                "loss_ci95": 196 * loss.std(ddof=1) / math.sqrt(len(loss)),
                "bytes_per_example": per_example,
                "examples_per_gib": GIB / per_example,
            }
            print(
                f"{protocol:>16} {storage:>9}: {rows[storage]['accuracy']:.2f}% ± {rows[storage]['ci95']:.2f}"
                f"  loss {rows[storage]['loss_points']:+.3f} ± {rows[storage]['loss_ci95']:.3f} points"
                f"  {per_example / 1024:.1f} KiB/example  {GIB / per_example:,.0f} examples/GiB"
            )
        results[protocol] = rows | {"seconds": time.perf_counter() - started}
        save(args.out, results, protocol)


def save(out: Path, results: dict, protocol: str) -> None:
    """Write ``results`` with this protocol's rows, keeping other protocols already in ``out`` (runs of
    one protocol each add up to one file)."""
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged = {k: v for k, v in merged.items() if k in ("random", "within-alphabet")} | results
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {protocol} to {out}")


if __name__ == "__main__":
    main()
