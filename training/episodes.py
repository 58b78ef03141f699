"""Splits of Omniglot into class pools, and the episode samplers.

A class is one character at one rotation (k * 90 degrees). Splits:
- ``vinyals``: the Matching Networks split files (``Alphabet/characterNN/rotDDD`` lines; the
  characters come from both archives). Train on train.txt, validate on val.txt, test on test.txt.
- ``standard``: train on images_background with each of the four rotations of a character as a
  class of its own (the practice of the paper's code and of the Vinyals split), validate on
  held-out background alphabets (``STANDARD_VALIDATION_ALPHABETS``, or a checkpoint's own, see
  ``validation_alphabets``), test on images_evaluation.

Samplers:
- ``EpisodeSampler``: one N-way K-shot episode at a time, in NumPy, reproducible under a seed
  (evaluation draws its tasks with it).
- ``DeviceEpisodeSampler``: meta-batches of episodes drawn and rotated on the training device
  from the resident image set, with a share of episodes drawn within one alphabet.
- ``within_alphabet_episodes``: Lake et al.'s protocol: the classes of a trial come from one
  alphabet, the support images from one drawer and the queries from another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.preprocess import to_tensor
from training.data import DEFAULT_DATA, DRAWINGS_PER_CHARACTER, Characters, load_archive

SPLIT_DIR = DEFAULT_DATA / "splits" / "vinyals"
UNKNOWN = -1  # label of a query of a class the episode does not hold (open-set episodes)
# Background alphabets held out of training to select checkpoints and calibrate "none of these"
# on the standard split (229 characters). Eight, because one alphabet is a noisy sample of drawing
# styles: with three, the calibrated false-rejection rate missed its target on the test alphabets
# by 6-9 points; with these eight, by 0.1-1.7 (docs/RESULTS-HISTORY.md, "Open-set answers").
STANDARD_VALIDATION_ALPHABETS = (
    "Tifinagh",
    "Tagalog",
    "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Alphabet_of_the_Magi",
    "Balinese",
    "Braille",
    "Cyrillic",
    "Korean",
)
# What checkpoints whose metadata predates the ``validation_alphabets`` field held out.
FIRST_VALIDATION_ALPHABETS = STANDARD_VALIDATION_ALPHABETS[:3]


def validation_alphabets(metadata: dict[str, Any]) -> tuple[str, ...]:
    """The background alphabets a standard-split checkpoint was trained without (its metadata's
    ``validation_alphabets``; checkpoints that predate the field held out the first three)."""
    return tuple(metadata.get("validation_alphabets", FIRST_VALIDATION_ALPHABETS))


def held_out_alphabets(
    split: str, chosen: Sequence[str] | None, init_metadata: dict[str, Any] | None
) -> tuple[str, ...]:
    """A training run's validation alphabets: ``chosen`` (``--validation-alphabets``, standard split
    only), else those its starting checkpoint was trained without, else
    ``STANDARD_VALIDATION_ALPHABETS``. Chosen ones must be among the starting checkpoint's: it
    cannot be validated on alphabets it was trained on."""
    start = STANDARD_VALIDATION_ALPHABETS if init_metadata is None else validation_alphabets(init_metadata)
    if not chosen:
        return start
    if split != "standard":
        raise SystemExit("--validation-alphabets applies to the standard split only")
    if init_metadata is not None and not set(chosen) <= set(start):
        trained = sorted(set(chosen) - set(start))
        raise SystemExit(f"the starting checkpoint was trained on {trained}: they cannot validate it")
    return tuple(chosen)


@dataclass
class ClassPool:
    """Classes to draw episodes from: ``images`` [chars, 20, 28, 28] (drawing j of every character
    is by drawer j + 1); ``classes`` [(char, quarter_turns)]; ``groups`` [classes] the alphabet
    and rotation of each class (classes of one group look alike)."""

    images: np.ndarray
    classes: list[tuple[int, int]]
    random_rotation: bool = False
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class Episode:
    support: torch.Tensor  # [N*K, 1, 28, 28] float in [0, 1]
    support_labels: torch.Tensor  # [N*K] in 0..N-1
    query: torch.Tensor  # [N*L, 1, 28, 28]
    query_labels: torch.Tensor  # [N*L]
    label_codes: torch.Tensor  # [N] codebook row of each label
    # [U*L, 1, 28, 28] drawings of U classes the episode does not hold (open-set training), or None
    unknown: torch.Tensor | None = None

    def open_set_queries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every query, the known ones then the unknown ones ([..., q + u, 1, 28, 28]), and their
        labels [..., q + u] (``UNKNOWN`` for the unknown ones)."""
        if self.unknown is None:
            return self.query, self.query_labels
        labels = self.query_labels
        unknown = labels.new_full((*labels.shape[:-1], self.unknown.shape[-4]), UNKNOWN)
        return torch.cat([self.query, self.unknown], dim=-4), torch.cat([labels, unknown], dim=-1)

    def to(self, device: torch.device | str) -> Episode:
        return Episode(*(None if t is None else t.to(device, non_blocking=True) for t in vars(self).values()))

    @staticmethod
    def stack(episodes: list[Episode]) -> Episode:
        """A batch of same-shaped episodes: every field gains a leading episode dimension."""
        return Episode(
            *(
                None if fields[0] is None else torch.stack(fields)
                for fields in zip(*(vars(e).values() for e in episodes), strict=True)
            )
        )


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
        return self.sample_with_classes()[0]

    def sample_with_classes(self) -> tuple[Episode, np.ndarray]:
        """An episode and the pool indices [N] of its classes, in label order."""
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
        episode = Episode(
            support=to_tensor(images[:, :k].reshape(n * k, 28, 28)),
            support_labels=torch.as_tensor(np.repeat(labels, k)),
            query=to_tensor(images[:, k:].reshape(n * q, 28, 28)),
            query_labels=torch.as_tensor(np.repeat(labels, q)),
            label_codes=torch.as_tensor(codes, dtype=torch.int64),
        )
        return episode, chosen


class DeviceEpisodeSampler:
    """Meta-batches of ``batch`` N-way K-shot episodes, drawn on ``device`` without host round trips.

    The pool's images live on the device in all four rotations ([chars, 4, 20, 28, 28] uint8).
    A share ``within_alphabet`` of the episodes takes its N classes from one group (alphabet and
    rotation) with at least N classes, the hardest kind of task. Every label gets a random
    codebook row (``code_rows``), so that every output row is trained. With ``unknown`` U > 0, each
    episode also holds L drawings of each of U more classes of the same draw (so of the same alphabet
    in a within-alphabet episode), the unknown queries of open-set training.
    """

    def __init__(
        self,
        pool: ClassPool,
        way: int,
        shot: int,
        queries: int,
        batch: int,
        device: torch.device | str,
        seed: int,
        code_rows: int,
        within_alphabet: float = 0.0,
        unknown: int = 0,
    ):
        if way + unknown > len(pool):
            raise ValueError(
                f"{way}-way episodes with {unknown} unknown classes need {way + unknown} classes; "
                f"the pool has {len(pool)}"
            )
        self.way, self.shot, self.queries, self.batch, self.unknown = way, shot, queries, batch, unknown
        self.code_rows, self.within_alphabet = code_rows, within_alphabet
        self.device = torch.device(device)
        self.random_rotation = pool.random_rotation
        rotated = np.stack([np.rot90(pool.images, t, axes=(2, 3)) for t in range(4)], axis=1)
        self.images = torch.as_tensor(rotated).to(self.device)  # [chars, 4, 20, 28, 28] uint8
        chars, turns = zip(*pool.classes, strict=True)
        self.chars = torch.as_tensor(chars, device=self.device)
        self.turns = torch.as_tensor(turns, device=self.device)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.group_table = self.group_sizes = None
        if within_alphabet > 0:
            self.group_table, self.group_sizes = _group_table(pool.groups, way + unknown, self.device)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=self.device, generator=self.generator)

    def _classes(self) -> torch.Tensor:
        """[E, N + U] class indices, distinct within each episode."""
        e, n = self.batch, self.way + self.unknown
        chosen = self._rand(e, len(self.chars)).topk(n, dim=-1).indices
        if self.group_table is None:
            return chosen
        groups = torch.multinomial(self.group_sizes.float(), e, replacement=True, generator=self.generator)
        members = self.group_table[groups]  # [E, max group size], -1 padded
        scores = self._rand(*members.shape).masked_fill(members < 0, -1.0)
        within = members.gather(1, scores.topk(n, dim=-1).indices)
        use_within = self._rand(e, 1) < self.within_alphabet
        return torch.where(use_within, within, chosen)

    def sample(self) -> Episode:
        """One meta-batch: support [E, N*K, 1, 28, 28], query [E, N*L, 1, 28, 28], labels, codes [E, N],
        unknown [E, U*L, 1, 28, 28] (None without unknown classes)."""
        e, n, k, q, u = self.batch, self.way, self.shot, self.queries, self.unknown
        classes = self._classes()  # [E, N + U]
        turns = self.turns[classes]
        if self.random_rotation:
            turns = (
                turns + torch.randint(0, 4, turns.shape, device=self.device, generator=self.generator)
            ) % 4
        drawings = self._rand(e, n + u, DRAWINGS_PER_CHARACTER).argsort(dim=-1)[..., : k + q]  # [E, N+U, K+L]
        chars = self.chars[classes]
        images = self.images[chars[..., None], turns[..., None], drawings]  # [E, N+U, K+L, 28, 28]
        images = images.float().div_(255.0).unsqueeze(-3)
        images, unknown = images[:, :n], images[:, n:, k:]
        labels = torch.arange(n, device=self.device).expand(e, n)
        codes = self._rand(e, self.code_rows).topk(n, dim=-1).indices
        return Episode(
            support=images[:, :, :k].reshape(e, n * k, 1, 28, 28),
            support_labels=labels.repeat_interleave(k, dim=1),
            query=images[:, :, k:].reshape(e, n * q, 1, 28, 28),
            query_labels=labels.repeat_interleave(q, dim=1),
            label_codes=codes,
            unknown=unknown.reshape(e, u * q, 1, 28, 28) if u else None,
        )


def _groups_of_at_least(groups: np.ndarray | None, way: int) -> list[np.ndarray]:
    """Class indices of every group (alphabet and rotation) that has at least ``way`` classes."""
    if groups is None:
        raise ValueError("within-alphabet episodes need the pool's groups")
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    members = [m for m in members if len(m) >= way]
    if not members:
        raise ValueError(f"no alphabet of this pool has {way} classes")
    return members


def _group_table(groups: np.ndarray, way: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes of every group with at least ``way`` classes: table [G, max size] (-1 padded), sizes [G]."""
    members = _groups_of_at_least(groups, way)
    table = np.full((len(members), max(len(m) for m in members)), -1, dtype=np.int64)
    for row, m in enumerate(members):
        table[row, : len(m)] = m
    return torch.as_tensor(table, device=device), torch.as_tensor([len(m) for m in members], device=device)


def within_alphabet_episodes(pool: ClassPool, way: int, trials: int, seed: int) -> list[Episode]:
    """Lake et al.'s one-shot protocol: each trial takes ``way`` classes of one group (alphabet and
    rotation), one support image per class from one drawer and one query per class from another
    drawer. Reproducible under ``seed``."""
    members = _groups_of_at_least(pool.groups, way)
    rng = np.random.default_rng(seed)
    episodes = []
    labels = torch.arange(way)
    for _ in range(trials):
        group = members[rng.integers(len(members))]
        chosen = rng.choice(group, size=way, replace=False)
        support_drawer, query_drawer = rng.choice(DRAWINGS_PER_CHARACTER, size=2, replace=False)
        images = np.stack(
            [
                np.rot90(
                    pool.images[pool.classes[c][0], [support_drawer, query_drawer]],
                    pool.classes[c][1],
                    axes=(1, 2),
                )
                for c in chosen
            ]
        )  # [N, 2, 28, 28]
        episodes.append(
            Episode(
                support=to_tensor(images[:, 0]),
                support_labels=labels,
                query=to_tensor(images[:, 1]),
                query_labels=labels,
                label_codes=labels,
            )
        )
    return episodes


def all_classes_episode(pool: ClassPool, queries: int, rng: np.random.Generator) -> Episode:
    """One task holding every class of the pool, the way a user's task grows on the server: one
    support drawing of each class by a random drawer, and ``queries`` drawings of each by other
    drawers. Labels are pool indices; label slot k uses codebook row k, as the server's does."""
    n = len(pool)
    drawings = rng.random((n, DRAWINGS_PER_CHARACTER)).argsort(axis=1)[:, : 1 + queries]  # [N, 1+L]
    images = np.stack(
        [
            np.rot90(pool.images[char, drawings[i]], turns, axes=(1, 2))
            for i, (char, turns) in enumerate(pool.classes)
        ]
    )  # [N, 1+L, 28, 28]
    labels = torch.arange(n)
    return Episode(
        support=to_tensor(images[:, 0]),
        support_labels=labels,
        query=to_tensor(images[:, 1:].reshape(n * queries, 28, 28)),
        query_labels=labels.repeat_interleave(queries),
        label_codes=labels,
    )


def _vinyals_pool(split: str, merged: Characters, split_dir: Path) -> ClassPool:
    lookup = {character: i for i, character in enumerate(merged.names)}
    classes = []
    for line in (split_dir / f"{split}.txt").read_text().split():
        alphabet, character, rotation = line.strip().split("/")
        classes.append((lookup[f"{alphabet}/{character}"], int(rotation.removeprefix("rot")) // 90))
    return ClassPool(merged.images, classes, groups=_groups(merged, classes))


def _groups(characters: Characters, classes: list[tuple[int, int]]) -> np.ndarray:
    """Group id of every class: its alphabet and rotation."""
    alphabets = sorted({characters.alphabet(c) for c, _ in classes})
    index = {a: i for i, a in enumerate(alphabets)}
    return np.array([4 * index[characters.alphabet(c)] + turns for c, turns in classes])


def load_split(
    name: str,
    part: str,
    data: Path = DEFAULT_DATA,
    rotation_classes: bool = True,
    held_out: Sequence[str] = STANDARD_VALIDATION_ALPHABETS,
) -> ClassPool:
    """Class pool of a split ("vinyals" or "standard") and part ("train", "val" or "test").

    rotation_classes: for the standard split's training part, each rotation of a character is
    a class of its own (else one class per character, rotated at random in every episode).
    held_out: the standard split's validation alphabets (background alphabets left out of "train").
    """
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
        return _vinyals_pool(part, merged, data / "splits" / "vinyals")
    if name == "standard":
        if part == "test":
            evaluation = load_archive("images_evaluation", data)
            classes = [(i, 0) for i in range(len(evaluation.names))]
            return ClassPool(evaluation.images, classes, groups=_groups(evaluation, classes))
        background = load_archive("images_background", data)
        alphabets = {background.alphabet(i) for i in range(len(background.names))}
        if unknown := sorted(set(held_out) - alphabets):
            raise ValueError(f"not background alphabets: {unknown}; they are {sorted(alphabets)}")
        if not held_out or set(held_out) == alphabets:
            raise ValueError("hold out at least one background alphabet, and train on at least one")
        out = [background.alphabet(i) in held_out for i in range(len(background.names))]
        keep = [i for i, held in enumerate(out) if held == (part == "val")]
        if part == "train" and rotation_classes:
            classes = [(i, t) for i in keep for t in range(4)]
            return ClassPool(background.images, classes, groups=_groups(background, classes))
        classes = [(i, 0) for i in keep]
        return ClassPool(
            background.images, classes, random_rotation=part == "train", groups=_groups(background, classes)
        )
    raise ValueError(f"unknown split {name!r}")
