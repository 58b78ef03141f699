"""One-shot accuracy within one alphabet (Lake et al.'s 20-way protocol), calling the model
directly, with the inference-time variants that were tried to raise it.

    python -m benchmarks.within_alphabet --trials 60 --seed 0

Each trial takes 20 characters of one images_evaluation alphabet, teaches one drawing of each
and classifies another drawing of each. Variants: dense attention (the paper's), top-k
attention over the k nearest keys, four 1-pixel shifted copies of every support image added to
its label, and the mean prediction over the query and its four shifts.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from model.checkpoint import DEFAULT_CHECKPOINT
from model.inference import MetaNetPredictor
from training.data import load_archive

SHIFTS = [(0, 1), (0, -1), (1, 0), (-1, 0)]


def shifted(images: np.ndarray) -> list[np.ndarray]:
    """The images and their four 1-pixel shifts. images: [n, 28, 28]."""
    return [images] + [np.roll(images, shift, axis=(1, 2)) for shift in SHIFTS]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--way", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    characters = load_archive("images_evaluation")
    predictor = MetaNetPredictor.load(args.checkpoint)
    alphabets: dict[str, list[int]] = {}
    for index, name in enumerate(characters.names):
        alphabets.setdefault(name.split("/")[0], []).append(index)
    eligible = sorted(a for a, members in alphabets.items() if len(members) >= args.way)
    rng = np.random.default_rng(args.seed)
    truth = np.arange(args.way)
    hits: dict[str, list[float]] = {}

    def score(name: str, probabilities: torch.Tensor) -> None:
        hits.setdefault(name, []).append(float((probabilities.argmax(1).numpy() == truth).mean()))

    for _ in range(args.trials):
        chosen = rng.choice(alphabets[eligible[rng.integers(len(eligible))]], args.way, replace=False)
        taught, asked = rng.choice(20, 2, replace=False)
        support, query = characters.images[chosen, taught], characters.images[chosen, asked]
        labels = [str(c) for c in chosen]
        memory = predictor.build_memory(support, labels)
        score("dense attention", predictor.classify(memory, query))
        cosine = predictor.embed_queries(memory, query) @ memory.keys.T
        for k in (1, 3, 8):
            top = cosine.topk(k)
            score(f"top-{k} attention", predictor.classify(memory, query, (top.indices, top.values)))
        augmented = predictor.build_memory(np.concatenate(shifted(support)), labels * (1 + len(SHIFTS)))
        score("shifted support copies", predictor.classify(augmented, query))
        score("query shifts averaged", sum(predictor.classify(memory, q) for q in shifted(query)))

    results = {
        name: {
            "accuracy": 100 * float(np.mean(v)),
            "ci95": 196 * float(np.std(v, ddof=1)) / math.sqrt(len(v)),
        }
        for name, v in hits.items()
    }
    for name, r in results.items():
        print(f"{name:>24}: {r['accuracy']:.2f}% ± {r['ci95']:.2f}")
    print(json.dumps({"trials": args.trials, "way": args.way, "seed": args.seed} | results))


if __name__ == "__main__":
    main()
