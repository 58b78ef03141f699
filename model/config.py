"""Model configuration: one dataclass, stored in every checkpoint's metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal


@dataclass(frozen=True)
class MetaNetConfig:
    """Shape and variant of a MetaNet.

    variant: "metanet" (paper's MetaNet), "minus" (MetaNet-, no task-level fast weights Q*),
        "plus" (MetaNet+, task-level fast weights for the base learner too).
    embedding_loss: loss whose gradients d reads. "cross_entropy" for one-shot tasks,
        "contrastive" for several shots per class (paper eq. 6-7).
    signed_keys: the paper's u ends in a ReLU, so its embeddings are non-negative and every
        cosine is >= 0; True keys the memory by the fc output before that ReLU (cosines in [-1, 1]).
    relative_fast_weights: fast weights m(g) - m(0). Without it, m's constant output for a zero
        gradient gives every label a logit term linear in its total attention, a shortcut that
        makes the base learner copy the attention vote (docs/RESULTS-HISTORY.md).
    """

    variant: Literal["metanet", "minus", "plus"] = "metanet"
    channels: int = 64
    num_blocks: int = 5
    image_size: int = 28
    meta_hidden: int = 20  # width of m (MLP 2 -> 20 -> 20 -> 1) and d (LSTM(2, 20) -> 1)
    grad_clip_k: float = 7.0  # gradient preprocessing constant (Andrychowicz et al. 2016)
    max_labels: int = 10_000  # size of the fixed output codebook: labels a task may hold
    max_task_examples: int = 20  # T: support examples (or pairs) that d reads for Q*
    embedding_loss: Literal["cross_entropy", "contrastive"] = "cross_entropy"
    contrastive_margin: float = 1.0
    attention_scale_init: float = 10.0  # learned inverse temperature of the cosine attention
    signed_keys: bool = False  # memory keys from u's fc output before its ReLU (see model/metanet.py)
    relative_fast_weights: bool = False  # m(g) - m(0): a zero gradient gives a zero fast weight

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MetaNetConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
