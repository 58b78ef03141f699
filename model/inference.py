"""Inference API for the server: build a task's memory from labeled support images, grow it,
and classify query images against it.

Images are preprocessed uint8 arrays [n, 28, 28] (see model/preprocess.py). Labels are strings;
label k (in order of first appearance) uses codebook row k. An example's fast weights depend
on that example alone, so adding examples never recomputes the others' fast weights. The
task-level fast weights Q* read the first T examples (config.max_task_examples); while a task
has fewer, adding an example refreshes Q* and with it every memory key (one cheap u pass).

The model computes (``MetaNet.build_memory`` / ``extend_memory`` / ``classify_tasks``: the very
passes training runs); this module keeps labels and images beside each memory. Memories are built
in the model's inference format (``MetaNet.memory_format``): chunks of ``chunk_size`` examples (bounded
peak memory, no per-example Python loop), m evaluated as its exact piecewise-linear table
(model/meta_table.py), the example-level fast weights M kept as compact rows of a storage chosen
by the task's size (``model.compact.StoragePolicy``: int8 for every task by default). The query
side runs on a backend: the model itself ("torch") or its ONNX export on ONNX Runtime
("onnxruntime", ``model/onnx_backend.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.compact import FastWeightRows, RowLayout, Storage, StoragePolicy
from model.metanet import Memory, MemoryFormat, MetaNet, QueryBackend
from model.novelty import novelty_from_similarity
from model.preprocess import to_tensor

Backend = Literal["torch", "onnxruntime"]
DEFAULT_STORAGE: Storage = "int8"  # docs/SERVER.md, "Compact memories": accuracy vs bytes per example
DEFAULT_CHUNK = 32  # support examples per vectorized pass (benchmarks/big_task.py measures the rate)
Neighbors = tuple[torch.Tensor, torch.Tensor]  # (ids [q, k] int64, cosines [q, k]) of a query's nearest keys


@dataclass(frozen=True)
class Classified:
    """The answer for one task's query images: both from one pass of the query side."""

    probabilities: torch.Tensor  # [q, K] float32 over the task's labels
    novelty: torch.Tensor  # [q] float32 on the CPU (model/novelty.py)


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
    """A trained MetaNet on a device, answering the server's questions.

    storage, chunk_size: how memories are kept and built (see the module docstring); ``storage`` is one
    storage for every task or a ``StoragePolicy`` by task size. backend:
    "torch" runs the query side in the model; "onnxruntime" runs its ONNX export (``onnx_path``,
    exported there first if missing) on ONNX Runtime. The support side (fast weights from
    gradients) always runs in torch.
    """

    def __init__(
        self,
        model: MetaNet,
        device: str | torch.device = "cpu",
        storage: Storage | StoragePolicy = DEFAULT_STORAGE,
        chunk_size: int = DEFAULT_CHUNK,
        backend: Backend = "torch",
        onnx_path: str | Path | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.policy = storage if isinstance(storage, StoragePolicy) else StoragePolicy.uniform(storage)
        self.form = self.model.memory_format(self.policy.large, chunk_size, self.device)
        self.backend = backend
        if backend == "torch":
            self.queries: QueryBackend = self.model
        elif backend == "onnxruntime":
            from model.onnx_backend import OnnxQueryBackend

            if onnx_path is None:
                raise ValueError("the onnxruntime backend needs onnx_path")
            self.queries = OnnxQueryBackend.for_model(self.model, onnx_path, self.device)
        else:
            raise ValueError(f"unknown backend {backend!r}")

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        storage: Storage | StoragePolicy = DEFAULT_STORAGE,
        chunk_size: int = DEFAULT_CHUNK,
        backend: Backend = "torch",
        onnx_path: str | Path | None = None,
    ) -> MetaNetPredictor:
        model, _ = load_checkpoint(checkpoint, device)
        return cls(model, device, storage, chunk_size, backend, onnx_path)

    @property
    def storage(self) -> Storage:
        """The storage of large tasks (``storage_for`` gives any task's)."""
        return self.policy.large

    def storage_for(self, examples: int) -> Storage:
        """How the rows of a task of ``examples`` examples are stored."""
        return self.policy.for_examples(examples)

    def _form(self, examples: int) -> MemoryFormat:
        return dataclasses.replace(self.form, storage=self.storage_for(examples))

    @property
    def layout(self) -> RowLayout:
        return self.form.layout

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
        all_labels, ids, codes = self._labels(images, labels, [])
        memory = self.model.build_memory(self._inputs(images), ids, codes, self._form(len(labels)))
        return TaskMemory(all_labels, self._stored(images), memory)

    @torch.no_grad()
    def extend_memory(
        self, task: TaskMemory, images: np.ndarray | torch.Tensor, labels: list[str]
    ) -> TaskMemory:
        """A new memory with examples appended; ``task`` is left untouched.

        Only the new examples' fast weights are computed. Q* and all keys are refreshed only
        while the task had fewer than T examples. A task that grows into another storage tier has
        its rows re-stored first.
        """
        all_labels, new_ids, codes = self._labels(images, labels, task.labels)
        refresh = task.num_examples < self.model.config.max_task_examples
        support = self._inputs(task.images) if refresh else None
        form, memory = self._form(task.num_examples + len(labels)), task.memory
        if memory.fast_weights.storage != form.storage:
            memory = dataclasses.replace(memory, fast_weights=memory.fast_weights.restored(form.storage))
        memory = self.model.extend_memory(memory, self._inputs(images), new_ids, codes, support, form)
        return TaskMemory(all_labels, torch.cat([task.images, self._stored(images)]), memory)

    @torch.no_grad()
    def embed_queries(self, task: TaskMemory, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[q, C] L2-normalized query keys in the task's space (use against ``task.keys``)."""
        return self.queries.embed(self._inputs(images), task.memory.rep_task_weights)

    def _neighbors(self, ids: torch.Tensor | np.ndarray, cosines: torch.Tensor | np.ndarray) -> Neighbors:
        return torch.as_tensor(ids).to(self.device).long(), torch.as_tensor(cosines).to(self.device).float()

    @torch.no_grad()
    def classify(
        self, task: TaskMemory, images: np.ndarray | torch.Tensor, neighbors: Neighbors | None = None
    ) -> torch.Tensor:
        """Probabilities [q, K] over ``task.labels`` for query images [q, 28, 28].

        neighbors: optional (ids [q, k], cosine similarities [q, k]) of each query's nearest
        memory keys (e.g. from FAISS): attention then reads only those rows.
        """
        return self.classify_batch([(task, images)], [neighbors])[0].probabilities

    @torch.no_grad()
    def classify_batch(
        self,
        items: list[tuple[TaskMemory, np.ndarray | torch.Tensor]],
        neighbors: list[Neighbors | None] | None = None,
    ) -> list[Classified]:
        """Classify queries of several tasks in one base-learner pass: probabilities [q_i, K_i] and
        novelty [q_i] per item (novelty from the same query keys, or neighbours, as the attention)."""
        near = [None if n is None else self._neighbors(*n) for n in (neighbors or [None] * len(items))]
        answers = self.model.classify_tasks(
            [task.memory for task, _ in items],
            [self._inputs(images) for _, images in items],
            near,
            backend=self.queries,
        )
        return [
            Classified(
                torch.softmax(a.logits, dim=-1).float(), novelty_from_similarity(a.nearest).float().cpu()
            )
            for a in answers
        ]
