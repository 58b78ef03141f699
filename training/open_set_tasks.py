"""Open-set one-shot tasks: the closed-set task ``EpisodeSampler`` draws under the same seed (so its
closed-set accuracy is the ordinary evaluation's), plus ``queries`` drawings of each of ``unknown`` other
classes of the same pool (by default as many as the task has), drawn from a second random stream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from model.preprocess import to_tensor
from training.episodes import UNKNOWN, ClassPool, Episode, EpisodeSampler


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


def open_set_episodes(
    pool: ClassPool, way: int, shot: int, queries: int, unknown: int | None, seed: int
) -> Iterator[tuple[Episode, np.ndarray]]:
    """Open-set episodes, each with the alphabet of every query's class (-1: unknown)."""
    sampler = OpenSetSampler(pool, way, shot, queries, way if unknown is None else unknown, seed)
    return iter(sampler.sample_with_groups, None)
