"""The candidate novelty scores of open-set queries (higher = more novel), all measured on the same
queries; the last two need the full model's logits, so ``--keys-only`` runs skip them:
``nearest_key_distance`` (the server's, model/novelty.py), ``attention`` (1 - the largest total
attention on one label), ``max_probability`` (1 - the largest softmax probability of the full
model), ``energy`` (-logsumexp of the logits), ``key_margin`` (minus the gap between the
nearest and the second nearest label's key) and ``task_normalized_distance`` (the nearest-key
distance divided by the task's mean distance between each support key and its nearest key of
another label).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from model.metanet import MetaNet, label_matrix, shots_per_row
from model.novelty import novelty
from training.episodes import Episode

CANDIDATES = (
    "nearest_key_distance",
    "attention",
    "max_probability",
    "energy",
    "key_margin",
    "task_normalized_distance",
)


@dataclass
class OpenSetOutputs:
    """Per query of every task: label [tasks, q] (-1 unknown), the alphabet of its class [tasks, q]
    (-1 unknown), predictions of attention alone and (with the base learner run) of the full model
    [tasks, q], and every candidate novelty score {name: [tasks, q]}."""

    labels: np.ndarray
    alphabets: np.ndarray
    attention_predicted: np.ndarray
    predicted: np.ndarray | None
    scores: dict[str, np.ndarray]


def candidate_scores(
    model: MetaNet, episode: Episode, full_model: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]:
    """One batch of episodes -> (logits [E, q, K] or None, label attention [E, q, K], {score: [E, q]}).

    Without ``full_model`` only u and d run (no m, no base learner): the key-based scores and
    attention-only predictions, several times faster."""
    support, labels, codes = episode.support, episode.support_labels, episode.label_codes
    if full_model:
        memory = model.build_memory(support, labels, codes)
        rep_task, keys = memory.rep_task_weights, memory.keys
    else:
        slots = codes.gather(-1, labels)
        t = model.config.max_task_examples
        rep_task = model.rep_task_weights(support[..., :t, :, :, :], slots[..., :t])[0]
        keys = model.embed(support, rep_task)
    queries = episode.open_set_queries()[0]
    query_keys = model.embed(queries, rep_task)  # [E, q + u, C]
    cosine = query_keys @ keys.transpose(-1, -2)  # [E, q, n]
    label_of = label_matrix(labels, codes.shape[-1], cosine.dtype)  # [E, n, K]
    attention = model.attention(cosine, shots_per_row(labels, codes.shape[-1], cosine.dtype).unsqueeze(-2))
    votes = attention @ label_of  # [E, q, K]
    per_label = cosine.unsqueeze(-1).masked_fill(label_of.unsqueeze(-3) == 0, -2.0).amax(-2)  # [E, q, K]
    top2 = per_label.topk(min(2, per_label.shape[-1]), dim=-1).values
    margin = top2[..., 0] - top2[..., 1] if top2.shape[-1] > 1 else top2[..., 0]
    distance = novelty(query_keys, keys)  # [E, q]
    support_cos = keys @ keys.transpose(-1, -2)  # [E, n, n]
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)
    spacing = 1 - support_cos.masked_fill(same, -2.0).amax(-1)  # [E, n] to the nearest other label
    scores = {
        "nearest_key_distance": distance,
        "attention": 1 - votes.amax(-1),
        "key_margin": -margin,
        "task_normalized_distance": distance / spacing.mean(-1, keepdim=True).clamp_min(1e-6),
    }
    logits = None
    if full_model:
        logits = model.query_logits(queries, memory, attention)
        scores["max_probability"] = 1 - torch.softmax(logits, -1).amax(-1)
        scores["energy"] = -torch.logsumexp(logits, -1)
    return logits, votes, scores


@torch.no_grad()
def open_set_outputs(
    model: MetaNet,
    episodes: Iterator[tuple[Episode, np.ndarray]],
    tasks: int,
    batch: int,
    device: torch.device | str,
    full_model: bool = True,
    progress: bool = False,
    desc: str = "",
) -> OpenSetOutputs:
    """Run ``tasks`` open-set episodes (each with its queries' alphabets) ``batch`` at a time."""
    model.eval()
    labels, alphabets, predicted, attention_predicted = [], [], [], []
    scores: dict[str, list[np.ndarray]] = {}
    with tqdm(total=tasks, desc=desc, unit="task", disable=not progress) as bar:
        for start in range(0, tasks, batch):
            size = min(batch, tasks - start)
            drawn = [next(episodes) for _ in range(size)]
            episode = Episode.stack([e for e, _ in drawn]).to(device)
            alphabets.append(np.stack([g for _, g in drawn]))
            logits, votes, batch_scores = candidate_scores(model, episode, full_model)
            labels.append(episode.open_set_queries()[1].cpu().numpy())
            attention_predicted.append(votes.argmax(-1).cpu().numpy())
            if logits is not None:
                predicted.append(logits.argmax(-1).cpu().numpy())
            for name, value in batch_scores.items():
                scores.setdefault(name, []).append(value.float().cpu().numpy())
            bar.update(size)
    return OpenSetOutputs(
        np.concatenate(labels),
        np.concatenate(alphabets),
        np.concatenate(attention_predicted),
        np.concatenate(predicted) if predicted else None,
        {name: np.concatenate(value) for name, value in scores.items()},
    )
