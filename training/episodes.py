"""Splits of Omniglot into class pools, and the N-way K-shot episode sampler.

A class is one character at one rotation (k * 90 degrees). Splits:
- ``vinyals``: the Matching Networks split files (``Alphabet/characterNN/rotDDD`` lines; the
  characters come from both archives). Train on train.txt, validate on val.txt, test on test.txt.
- ``standard``: train on images_background (random 90-degree rotation of every class in every
  episode as augmentation), validate on held-out background alphabets, test on images_evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.preprocess import to_tensor
from training.data import DEFAULT_DATA, Characters, load_archive

SPLIT_DIR = DEFAULT_DATA / "splits" / "vinyals"
# Background alphabets held out of training to select checkpoints on the standard split.
STANDARD_VALIDATION_ALPHABETS = ("Tifinagh", "Tagalog", "Ojibwe_(Canadian_Aboriginal_Syllabics)")


@dataclass
class ClassPool:
    """Classes to draw episodes from: ``images`` [chars, 20, 28, 28]; ``classes`` [(char, quarter_turns)]."""

    images: np.ndarray
    classes: list[tuple[int, int]]
    random_rotation: bool = False

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class Episode:
    support: torch.Tensor  # [N*K, 1, 28, 28] float in [0, 1]
    support_labels: torch.Tensor  # [N*K] in 0..N-1
    query: torch.Tensor  # [N*L, 1, 28, 28]
    query_labels: torch.Tensor  # [N*L]
    label_codes: torch.Tensor  # [N] codebook row of each label

    def to(self, device: torch.device | str) -> Episode:
        return Episode(*(t.to(device, non_blocking=True) for t in vars(self).values()))


class EpisodeSampler:
    """Draws N-way K-shot episodes with L queries per class from a pool, reproducibly under a seed.

    Training episodes give each label a random codebook row (``code_rows`` > 0) so that every
    output row is trained; evaluation uses rows 0..N-1 as the server does.
    """

    def __init__(self, pool: ClassPool, way: int, shot: int, queries: int, seed: int, code_rows: int = 0):
        if way > len(pool):
            raise ValueError(f"{way}-way episodes need {way} classes; the pool has {len(pool)}")
        self.pool, self.way, self.shot, self.queries, self.code_rows = pool, way, shot, queries, code_rows
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Episode:
        n, k, q = self.way, self.shot, self.queries
        chosen = self.rng.choice(len(self.pool), size=n, replace=False)
        drawings = np.stack([self.rng.choice(20, size=k + q, replace=False) for _ in range(n)])  # [N, K+L]
        chars = np.array([self.pool.classes[c][0] for c in chosen])
        turns = np.array([self.pool.classes[c][1] for c in chosen])
        if self.pool.random_rotation:
            turns = (turns + self.rng.integers(0, 4, size=n)) % 4
        images = self.pool.images[chars[:, None], drawings]  # [N, K+L, 28, 28]
        images = np.stack([np.rot90(images[i], turns[i], axes=(1, 2)) for i in range(n)])
        labels = np.arange(n)
        codes = self.rng.choice(self.code_rows, size=n, replace=False) if self.code_rows else labels
        return Episode(
            support=to_tensor(images[:, :k].reshape(n * k, 28, 28)),
            support_labels=torch.as_tensor(np.repeat(labels, k)),
            query=to_tensor(images[:, k:].reshape(n * q, 28, 28)),
            query_labels=torch.as_tensor(np.repeat(labels, q)),
            label_codes=torch.as_tensor(codes, dtype=torch.int64),
        )


def _vinyals_pool(split: str, lookup: dict[str, int], images: np.ndarray, split_dir: Path) -> ClassPool:
    classes = []
    for line in (split_dir / f"{split}.txt").read_text().split():
        alphabet, character, rotation = line.strip().split("/")
        classes.append((lookup[f"{alphabet}/{character}"], int(rotation.removeprefix("rot")) // 90))
    return ClassPool(images, classes)


def load_split(name: str, part: str, data: Path = DEFAULT_DATA) -> ClassPool:
    """Class pool of a split ("vinyals" or "standard") and part ("train", "val" or "test")."""
    if part not in ("train", "val", "test"):
        raise ValueError(f"unknown part {part!r}")
    if name == "vinyals":
        background, evaluation = (
            load_archive("images_background", data),
            load_archive("images_evaluation", data),
        )
        merged = Characters(
            np.concatenate([background.images, evaluation.images]), background.names + evaluation.names
        )
        lookup = {character: i for i, character in enumerate(merged.names)}
        return _vinyals_pool(part, lookup, merged.images, data / "splits" / "vinyals")
    if name == "standard":
        if part == "test":
            evaluation = load_archive("images_evaluation", data)
            return ClassPool(evaluation.images, [(i, 0) for i in range(len(evaluation.names))])
        background = load_archive("images_background", data)
        held_out = [
            background.alphabet(i) in STANDARD_VALIDATION_ALPHABETS for i in range(len(background.names))
        ]
        keep = [i for i, out in enumerate(held_out) if out == (part == "val")]
        return ClassPool(background.images, [(i, 0) for i in keep], random_rotation=part == "train")
    raise ValueError(f"unknown split {name!r}")
