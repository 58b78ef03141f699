"""Inference API for the server: build a task's memory from labeled support images, grow it,
and classify query images against it.

Images are preprocessed uint8 arrays [n, 28, 28] (see model/preprocess.py). Labels are strings;
label k (in order of first appearance) uses codebook row k. An example's fast weights depend
on that example alone, so adding examples never recomputes the others' fast weights. The
task-level fast weights Q* read the first T examples (config.max_task_examples); while a task
has fewer, adding an example refreshes Q* and with it every memory key (one cheap u pass).

The support path runs in chunks of ``chunk_size`` examples (bounded peak memory, no per-example
Python loop), with m evaluated as its exact piecewise-linear table (model/meta_table.py), and
keeps the example-level fast weights M in ``storage`` (model/compact.py: int8 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.compact import FastWeightRows, RowLayout, Storage
from model.meta_info import example_gradients
from model.meta_table import PiecewiseLinearM
from model.metanet import Memory, MetaNet, SparseAttention
from model.novelty import novelty
from model.preprocess import to_tensor

DEFAULT_STORAGE: Storage = "int8"  # docs/SERVER.md, "Compact memories": accuracy vs bytes per example
DEFAULT_CHUNK = 32  # support examples per vectorized pass (benchmarks/big_task.py measures the rate)


@dataclass
class TaskMemory:
    """Derived state of one task: fast weights M, keys R, labels. Immutable once built."""

    labels: list[str]  # label strings, index k = label slot k
    images: torch.Tensor  # [n, 28, 28] uint8 support images, kept to refresh keys
    memory: Memory

    @property
    def num_examples(self) -> int:
        return int(self.images.shape[0])

    @property
    def keys(self) -> torch.Tensor:
        """[n, C] L2-normalized memory index (inner product = cosine)."""
        return self.memory.keys

    def nbytes(self) -> int:
        """Bytes held by this memory: its tensors and the fast-weight buffer (spare capacity included)."""
        tensors = [self.images, *(v for v in vars(self.memory).values() if isinstance(v, torch.Tensor))]
        for task_weights in (self.memory.rep_task_weights, self.memory.base_task_weights):
            tensors += list((task_weights or {}).values())
        for state in (self.memory.rep_state, self.memory.base_state):
            tensors += list(state or ())
        rows = self.memory.fast_weights
        compact = rows.nbytes if isinstance(rows, FastWeightRows) else 0
        return compact + sum(t.numel() * t.element_size() for t in tensors)


class MetaNetPredictor:
    """A trained MetaNet on a device, answering the server's questions."""

    def __init__(
        self,
        model: MetaNet,
        device: str | torch.device = "cpu",
        storage: Storage = DEFAULT_STORAGE,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.storage, self.chunk_size = storage, chunk_size
        config = model.config
        self.m_conv, self.m_fc = (
            PiecewiseLinearM(m, config.grad_clip_k, config.relative_fast_weights).to(self.device)
            for m in (model.m_conv, model.m_fc)
        )
        self.layout = RowLayout.of(dict(model.base))

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        storage: Storage = DEFAULT_STORAGE,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> MetaNetPredictor:
        model, _ = load_checkpoint(checkpoint, device)
        return cls(model, device, storage, chunk_size)

    @property
    def task_examples(self) -> int:
        """T: the examples d reads for the task-level weights; later examples leave them unchanged."""
        return self.model.config.max_task_examples

    def warm_up(self) -> None:
        """Run the support and query paths once (the first vectorized gradient pass pays a one-time
        set-up of about a second), so the first real request does not."""
        images = np.zeros((2, 28, 28), dtype=np.uint8)
        images[:, 10:18, 10:18] = 255
        self.classify(self.build_memory(images, ["a", "b"]), images)

    def example_fast_weights(self, x: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """m(grad_W loss_task(b(W, x_i), y_i)) per example, m by table. x: [c, 1, H, W]; slots: [c].

        Returns the conv+fc fast weights [c, P] and the own-output-row fast weights [c, C]."""
        model = self.model
        grads = example_gradients(dict(model.base), model.base_codes[slots], x)
        out = self.m_fc(grads.pop("out"))
        rows = [(self.m_conv if name.startswith("conv") else self.m_fc)(g) for name, g in grads.items()]
        return torch.cat([r.flatten(1) for r in rows], dim=1), out

    def _support_rows(
        self, x: torch.Tensor, slots: torch.Tensor, rows: FastWeightRows | None
    ) -> tuple[FastWeightRows, torch.Tensor]:
        """Append the fast weights of support examples x [n, 1, H, W] to ``rows`` (None: new rows),
        ``chunk_size`` examples per pass. Returns (rows, own-output-row fast weights [n, C])."""
        if rows is None:
            rows = FastWeightRows.empty(self.layout, self.storage, len(x), self.device)
        outs = []
        for chunk, chunk_slots in zip(x.split(self.chunk_size), slots.split(self.chunk_size), strict=True):
            fast, out = self.example_fast_weights(chunk, chunk_slots)
            rows = rows.appended(fast)
            outs.append(out)
        return rows, torch.cat(outs)

    def _keys(self, x: torch.Tensor, rep_task: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Memory keys [n, C] of support images x [n, 1, H, W], in chunks."""
        return torch.cat([self.model.embed(chunk, rep_task) for chunk in x.split(self.chunk_size)])

    def _inputs(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return to_tensor(images).to(self.device)

    def _labels(
        self, images: np.ndarray | torch.Tensor, labels: list[str], known: list[str]
    ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Check one label per image; extend ``known`` with new labels in order of appearance.

        Returns (all labels, label indices of ``labels`` [n], codebook rows of all labels [K]).
        """
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError("need one label per image and at least one image")
        all_labels = list(known)
        index = {label: i for i, label in enumerate(all_labels)}
        for label in labels:
            if label not in index:
                index[label] = len(all_labels)
                all_labels.append(label)
        ids = torch.tensor([index[label] for label in labels], dtype=torch.int64, device=self.device)
        return all_labels, ids, torch.arange(len(all_labels), device=self.device)

    def _stored(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Support images as kept in a TaskMemory: uint8 [n, 28, 28] on the device."""
        return torch.as_tensor(np.asarray(images), dtype=torch.uint8).to(self.device)

    @torch.no_grad()
    def build_memory(self, images: np.ndarray | torch.Tensor, labels: list[str]) -> TaskMemory:
        """Memory of a task from its support images [n, 28, 28] and their labels (n >= 1)."""
        model = self.model
        all_labels, ids, codes = self._labels(images, labels, [])
        x, slots, t = self._inputs(images), codes[ids], model.config.max_task_examples
        rep_task, rep_state = model.rep_task_weights(x[:t], slots[:t])
        base_task, base_state = model.base_task_weights(x[:t], slots[:t])
        rows, fast_out = self._support_rows(x, slots, None)
        if len(labels) >= t:  # Q* is final: d's state is no longer needed
            rep_state = base_state = None
        memory = Memory(
            fast_weights=rows,
            fast_out=fast_out,
            labels=ids,
            label_codes=codes,
            keys=self._keys(x, rep_task),
            rep_task_weights=rep_task,
            base_task_weights=base_task,
            rep_state=rep_state,
            base_state=base_state,
        )
        return TaskMemory(all_labels, self._stored(images), memory)

    @torch.no_grad()
    def extend_memory(
        self, task: TaskMemory, images: np.ndarray | torch.Tensor, labels: list[str]
    ) -> TaskMemory:
        """A new memory with examples appended; ``task`` is left untouched.

        Only the new examples' fast weights are computed. Q* and all keys are refreshed only
        while the task had fewer than T examples.
        """
        model, old = self.model, task.memory
        all_labels, new_ids, codes = self._labels(images, labels, task.labels)
        new_x = self._inputs(images)
        rows, fast_out = self._support_rows(new_x, codes[new_ids], old.fast_weights)
        stored = torch.cat([task.images, self._stored(images)])
        label_ids = torch.cat([old.labels, new_ids])
        t, n_old = model.config.max_task_examples, task.num_examples
        rep_task, base_task = old.rep_task_weights, old.base_task_weights
        rep_state, base_state = old.rep_state, old.base_state
        if n_old < t:  # the new examples change Q*: d reads them, then every key is refreshed
            first = slice(0, t - n_old)
            all_x = self._inputs(stored)
            if model.config.embedding_loss == "cross_entropy":
                rep_task, rep_state = model.rep_task_weights(new_x[first], codes[new_ids][first], rep_state)
            else:  # pairs are drawn among all of the first T examples
                rep_task, rep_state = model.rep_task_weights(all_x[:t], codes[label_ids[:t]])
            base_task, base_state = model.base_task_weights(new_x[first], codes[new_ids][first], base_state)
            keys = self._keys(all_x, rep_task)
        else:
            keys = torch.cat([old.keys, self._keys(new_x, rep_task)])
        if len(stored) >= t:  # Q* is final: d's state is no longer needed
            rep_state = base_state = None
        memory = Memory(
            fast_weights=rows,
            fast_out=torch.cat([old.fast_out, fast_out]),
            labels=label_ids,
            label_codes=codes,
            keys=keys,
            rep_task_weights=rep_task,
            base_task_weights=base_task,
            rep_state=rep_state,
            base_state=base_state,
        )
        return TaskMemory(all_labels, stored, memory)

    @torch.no_grad()
    def embed_queries(self, task: TaskMemory, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[q, C] L2-normalized query keys in the task's space (use against ``task.keys``)."""
        return self.model.embed(self._inputs(images), task.memory.rep_task_weights)

    @torch.no_grad()
    def novelty(self, task: TaskMemory, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[q] novelty of query images against the task's memory (model/novelty.py), on the CPU."""
        return novelty(self.embed_queries(task, images), task.keys).float().cpu()

    def _attention(
        self, task: TaskMemory, query_keys: torch.Tensor, neighbors: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor | SparseAttention:
        shots = self.model.shots_per_row(task.memory)
        if neighbors is None:
            return self.model.attention(query_keys @ task.keys.T, shots)
        ids, sims = (torch.as_tensor(t, device=self.device) for t in neighbors)
        return SparseAttention(ids.long(), self.model.attention(sims.float(), shots[ids.long()]))

    @torch.no_grad()
    def classify(
        self,
        task: TaskMemory,
        images: np.ndarray | torch.Tensor,
        neighbors: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Probabilities [q, K] over ``task.labels`` for query images [q, 28, 28].

        neighbors: optional (ids [q, k], cosine similarities [q, k]) of each query's nearest
        memory keys (e.g. from FAISS): attention then reads only those rows.
        """
        return self.classify_batch([(task, images)], [neighbors])[0]

    @torch.no_grad()
    def classify_batch(
        self,
        items: list[tuple[TaskMemory, np.ndarray | torch.Tensor]],
        neighbors: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
    ) -> list[torch.Tensor]:
        """Classify queries of several tasks in one base-learner pass. Returns [q_i, K_i] per item."""
        neighbors = neighbors or [None] * len(items)
        model = self.model
        xs, fasts, attentions = [], [], []
        for (task, images), near in zip(items, neighbors, strict=True):
            x = self._inputs(images)
            attention = self._attention(task, model.embed(x, task.memory.rep_task_weights), near)
            xs.append(x)
            attentions.append(attention)
            fasts.append(model.read_memory(task.memory, attention))
        if model.config.variant == "plus":  # task-level base weights differ per task
            features = [
                model.base_features(x, fast, task.memory.base_task_weights)
                for x, fast, (task, _) in zip(xs, fasts, items, strict=True)
            ]
        else:
            features = model.base_features(torch.cat(xs), torch.cat(fasts), None).split([len(x) for x in xs])
        return [
            torch.softmax(model.output_logits(h, task.memory, attention), dim=-1).float()
            for h, (task, _), attention in zip(features, items, attentions, strict=True)
        ]
