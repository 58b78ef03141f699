"""Novelty of a query against a task's memory: how unlike every stored example it is.

The score is ``1 - max_i cos(r, R_i)``: one minus the cosine similarity of the query's key r
(u's embedding in the task's space, ``MetaNet.embed``) to its nearest memory key. It lies in
[0, 2]; a query drawn from one of the task's concepts sits close to that concept's examples
(low novelty), a query of a concept the task does not hold is far from all of them.

Measured against the other candidates on validation classes (``python -m training.evaluate
--part val --open-set``, docs/RESULTS-HISTORY.md "Open-set answers"): the attention-based and
softmax-based scores are relative (they compare labels with each other, so they are confident
whenever one stored label is less unlike the query than the rest), and the energy of the logits
follows attention (the logits are a scaled copy of the attention vote). The nearest-key
distance is absolute, needs no base-learner pass, is exact under the server's FAISS top-k
attention (the nearest neighbour is the first hit), and separated known from unknown best.

A query is *known* when its novelty is at most the threshold calibrated for the checkpoint
(``OpenSetCalibration``, stored in the checkpoint's JSON metadata under ``open_set``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

SCORE = "nearest_key_distance"


def nearest_key_similarity(query_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each query key to its nearest memory key.

    query_keys: [..., q, C] and keys: [..., n, C], both L2-normalized -> [..., q]."""
    return (query_keys @ keys.transpose(-1, -2)).amax(-1)


def novelty_from_similarity(nearest: torch.Tensor) -> torch.Tensor:
    """Novelty in [0, 2] from the cosine similarity to the nearest memory key."""
    return (1.0 - nearest).clamp_min(0.0)


def novelty(query_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[..., q] novelty in [0, 2]: one minus the cosine similarity to the nearest memory key."""
    return novelty_from_similarity(nearest_key_similarity(query_keys, keys))


@dataclass(frozen=True)
class OpenSetCalibration:
    """The rejection threshold of a checkpoint and how it was chosen."""

    threshold: float  # a query is known when novelty <= threshold
    false_rejection_target: float  # share of known queries the threshold rejects on the calibration data
    score: str = SCORE
    calibrated_on: str = ""  # the classes and tasks the threshold was read from
    command: str = ""

    def known(self, novelty: torch.Tensor) -> torch.Tensor:
        """Bool mask: which novelty scores belong to one of the task's concepts."""
        return novelty <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> OpenSetCalibration | None:
        """The calibration stored in a checkpoint's metadata, or None if it has none."""
        stored = metadata.get("open_set")
        if not stored:
            return None
        if stored.get("score", SCORE) != SCORE:
            raise ValueError(
                f"checkpoint calibrated for score {stored['score']!r}; this code computes {SCORE!r}"
            )
        fields = {k: stored[k] for k in cls.__dataclass_fields__ if k in stored}
        return cls(**fields)
