r"""What the base learner adds: the terms of MetaNet's output logits on real test tasks.

    python -m benchmarks.base_learner --checkpoint checkpoints/omniglot-vinyals.safetensors \
        --split vinyals --way 20 --tasks 100

For each task it scores, on the same queries:
- the full model (b with the attention-read fast weights W* = a^T M);
- attention only (the label with the largest total attention: the nearest memory key);
- b alone: the same network read with uniform attention (every example's fast weights
  averaged), so that the labels can only be told apart by b's own features;
and it reports how sharp the attention is (learned scale, mean largest weight) and the spread of
each logit term (slow codebook rows, fast rows of the attended examples, the zero-gradient rows).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.metanet import MetaNet
from training.data import DEFAULT_DATA
from training.episodes import Episode, EpisodeSampler, load_split, validation_alphabets


@torch.no_grad()
def logit_terms(model: MetaNet, episode: Episode) -> dict[str, float]:
    memory = model.build_memory(episode.support, episode.support_labels, episode.label_codes)
    keys = model.embed(episode.query, memory.rep_task_weights)
    shots = model.shots_per_row(memory).unsqueeze(-2)
    attention = model.attention(keys @ memory.keys.transpose(-1, -2), shots)  # [q, n]
    uniform = torch.full_like(attention, 1.0 / attention.shape[-1])
    labels = episode.query_labels

    def hits(logits: torch.Tensor) -> float:
        return (logits.argmax(-1) == labels).float().mean().item()

    h = model.base_features(episode.query, model.read_memory(memory, attention), memory.base_task_weights)
    label_of = model.label_matrix(memory, h.dtype)
    slow = h @ model.base_codes[memory.label_codes].T
    own = (attention * (h @ memory.fast_out.T)) @ label_of
    others = model._zero_gradient_fast_weight() * (1 - attention @ label_of) * h.sum(-1, keepdim=True)
    return {
        "full": hits(slow + own + others),
        "attention_only": hits(model.label_attention(memory, attention)),
        "base_learner_uniform_attention": hits(model.query_logits(episode.query, memory, uniform)),
        "max_attention": attention.max(-1).values.mean().item(),
        "std_slow_term": slow.std().item(),
        "std_fast_rows_term": own.std().item(),
        "std_zero_gradient_term": others.std().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", choices=["vinyals", "standard"], required=True)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--part", choices=["train", "val", "test"], default="test")
    parser.add_argument("--way", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, metadata = load_checkpoint(args.checkpoint)
    pool = load_split(args.split, args.part, args.data, held_out=validation_alphabets(metadata))
    sampler = EpisodeSampler(pool, args.way, 1, 5, args.seed)
    rows = [logit_terms(model, sampler.sample()) for _ in range(args.tasks)]
    summary = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    summary |= {"attention_scale": model.log_attention_scale.exp().item(), "tasks": args.tasks}
    print(json.dumps({k: round(v, 4) for k, v in summary.items()}))


if __name__ == "__main__":
    main()
