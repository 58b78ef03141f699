"""The model's ONNX graphs: the query path, and the parts of the support path that export faithfully.
``export_model`` writes five graphs, each a thin ``nn.Module`` around the very ``MetaNet`` methods that
training and the torch server run (no second implementation to drift); the server exports a checkpoint
on first use (``model/onnx_backend.py``), ``python -m training.export`` on request.

- ``<out>``: images, per-query fast weights, attention, memory -> logits. The query path after the
  memory read: b with per-query fast weights (``base_features``) and the augmented output layer
  (``output_logits``), dense attention [q, n].
- ``<stem>.topk.onnx``: the same with attention over each query's top-k rows (ids and weights).
- ``<stem>.embed.onnx``: images, Q* -> keys. u(Q, Q*, x): query keys to search a memory with.
- ``<stem>.m.onnx``: gradients -> fast weights. m's MLP: example-level fast weights.
- ``<stem>.d.onnx``: gradient, LSTM state -> state, fast weights. One step of d (``MetaNet._d``).

The memory tensors are graph inputs, so one graph serves every task: ``labels`` [n] (label slot of
each row), ``label_codes`` [K] (codebook row of each slot), ``fast_out`` [n, C], and for the query
embedding Q* flattened as ``rep_task`` [Pu] (``flat_rep_task``). The numbers of queries q, examples n,
labels K and neighbours k are dynamic. The attention (a softmax over q x n cosines) and the memory
read W* = a^T M run in torch before the graph (``MetaNet.classify_tasks``): M is kept as compact rows
(int8 with per-row scales by default, ``model/compact.py``), and the read dequantizes only the rows it
reads, so the graph takes W* [q, P] (``fast_weights``) and serves every storage alike.
What does not export: the per-example loss gradients that m and d read (``torch.func.grad`` has no
ONNX form), so building a memory stays in torch (with m as its exact table, ``model/meta_table.py``;
the m graph is the MLP itself, which the table equals up to float32 rounding).

Exporter: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter (PyTorch's default;
the TorchScript-based one is legacy); it captures the functional ATen graph, so
``torch.onnx.is_in_onnx_export`` switches b's per-query convolution from a grouped conv (group count =
queries, which ONNX Conv fixes in the graph) to the same sum as a batched matmul over 3x3 patches.
Opset 18: the exporter's ONNX Script library is written against opset 18, so no version conversion
runs, and it has everything the graphs need (``ScatterElements`` with ``reduction="add"``, ``MaxPool``
with ``ceil_mode``).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.export import Dim

from model.fast_weights import flatten, unflatten
from model.meta_info import preprocess_gradient
from model.metanet import Memory, MetaNet, SparseAttention

OPSET = 18
EXPORT_FORMAT = 2  # the graphs' inputs; 2: the query graphs take W* read from compact rows
GRAPHS = ("query", "topk", "embed", "m", "d")


def graph_paths(out: str | Path) -> dict[str, Path]:
    """Where each graph of an export to ``out`` lives (the query graph at ``out`` itself)."""
    out = Path(out)
    stem = out.name.removesuffix(".onnx")
    return {name: out if name == "query" else out.with_name(f"{stem}.{name}.onnx") for name in GRAPHS}


def flat_rep_task(rep_task_weights: dict[str, torch.Tensor] | None, like: torch.Tensor) -> torch.Tensor:
    """Q* as the graphs take it: u's task-level fast weights flattened in layer order, [Pu]
    ([0] for MetaNet-, on ``like``'s device)."""
    if rep_task_weights is None:
        return like.new_zeros(0)
    return flatten(rep_task_weights, batch_dims=0)


class _Graph(nn.Module):
    def __init__(self, model: MetaNet) -> None:
        super().__init__()
        if model.config.variant == "plus":
            raise NotImplementedError("MetaNet+ (task-level fast weights of b) has no ONNX export yet")
        self.model = model

    def rep_task(self, flat: torch.Tensor) -> dict[str, torch.Tensor] | None:
        return unflatten(flat, dict(self.model.rep)) if flat.numel() else None


def _output_memory(labels, label_codes, fast_out) -> Memory:
    """What the output layer reads of a memory (the rest is read before the graph)."""
    none = fast_out.new_empty(0, 0)
    return Memory(none, fast_out, labels, label_codes, none, None, None)


class QueryGraph(_Graph):
    """Dense attention: logits [q, K] of images [q, 1, H, W], their fast weights W* [q, P] and their
    attention [q, n] over one task's memory rows."""

    def forward(self, images, fast_weights, attention, labels, label_codes, fast_out):
        h = self.model.base_features(images, fast_weights, None)
        return self.model.output_logits(h, _output_memory(labels, label_codes, fast_out), attention)


class TopKGraph(_Graph):
    """Attention over each query's top-k memory rows: ids [q, k] int64 and weights [q, k]."""

    def forward(self, images, fast_weights, ids, weights, labels, label_codes, fast_out):
        h = self.model.base_features(images, fast_weights, None)
        memory = _output_memory(labels, label_codes, fast_out)
        return self.model.output_logits(h, memory, SparseAttention(ids, weights))


class EmbedGraph(_Graph):
    """Query keys [q, C] in a task's space (Q* as inputs)."""

    def forward(self, images, rep_task):
        return self.model.embed(images, self.rep_task(rep_task))


class MGraph(_Graph):
    """m: fast weights of the conv layers and of the fc / output layers from their loss gradients."""

    def forward(self, conv_gradients, fc_gradients):
        return self._m(self.model.m_conv, conv_gradients), self._m(self.model.m_fc, fc_gradients)

    def _m(self, mlp: nn.Module, gradients: torch.Tensor) -> torch.Tensor:
        """m's MLP on preprocessed gradients (``MetaNet._m`` evaluates the same function by table)."""
        k = self.model.config.grad_clip_k
        fast = mlp(preprocess_gradient(gradients, k))
        if self.model.config.relative_fast_weights:
            fast = fast - mlp(preprocess_gradient(gradients.new_zeros(1), k))
        return fast


class DGraph(_Graph):
    """One step of d over the flattened coordinates of u: gradient [P], state ([P, H], [P, H])."""

    def forward(self, gradient, hidden, cell):
        d = self.model.d_rep
        hidden, cell = d.step(preprocess_gradient(gradient, self.model.config.grad_clip_k), (hidden, cell))
        return hidden, cell, d.readout((hidden, cell))


def _example_memory(model: MetaNet, n: int = 5, labels: int = 4) -> Memory:
    """A real memory (random images) whose tensors give the graphs their example inputs."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, model.config.image_size, model.config.image_size, generator=generator)
    return model.build_memory(images, torch.arange(n) % labels, torch.arange(labels))


def _export(module: nn.Module, args: tuple, names: list[str], outputs: list[str], dims: dict, path: Path):
    """torch.onnx.export with named inputs / outputs and the given dynamic dims per input."""
    shapes = tuple(dims.get(name) for name in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter about its own internals
        program = torch.onnx.export(
            module,
            args,
            input_names=names,
            output_names=outputs,
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter's libraries log every pass at INFO; a server's log needs none of it."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


@torch.no_grad()
@_quiet_exporter()
def export_model(model: MetaNet, out: str | Path) -> dict[str, Path]:
    """Export every graph of ``model`` (see the module docstring); returns their paths."""
    model = model.cpu().eval()
    paths = graph_paths(out)
    paths["query"].parent.mkdir(parents=True, exist_ok=True)
    memory = _example_memory(model)
    size = model.config.image_size
    images = torch.rand(3, 1, size, size)
    rep = flat_rep_task(memory.rep_task_weights, images)
    attention = model.read_attention(memory, model.embed(images, memory.rep_task_weights))  # [3, n]
    q, n, k, labels = Dim("queries"), Dim("examples"), Dim("neighbors"), Dim("labels")
    memory_dims = {
        "images": {0: q},
        "fast_weights": {0: q},
        "labels": {0: n},
        "label_codes": {0: labels},
        "fast_out": {0: n},
    }
    memory_args = (memory.labels, memory.label_codes, memory.fast_out)
    memory_names = ["labels", "label_codes", "fast_out"]
    logits = ["logits"]
    _export(
        QueryGraph(model),
        (images, model.read_memory(memory, attention), attention, *memory_args),
        ["images", "fast_weights", "attention", *memory_names],
        logits,
        memory_dims | {"attention": {0: q, 1: n}},
        paths["query"],
    )
    top = (memory.keys[:2] @ memory.keys.T).topk(3)  # example neighbours of 2 queries (a dynamic dim >= 2)
    sparse = model.read_attention(memory, None, (top.indices, top.values))
    _export(
        TopKGraph(model),
        (images[:2], model.read_memory(memory, sparse), sparse.ids, sparse.weights, *memory_args),
        ["images", "fast_weights", "ids", "weights", *memory_names],
        logits,
        memory_dims | {"ids": {0: q, 1: k}, "weights": {0: q, 1: k}},
        paths["topk"],
    )
    _export(
        EmbedGraph(model), (images, rep), ["images", "rep_task"], ["keys"], {"images": {0: q}}, paths["embed"]
    )
    coords, fc_coords = Dim("conv_coordinates"), Dim("fc_coordinates")
    _export(
        MGraph(model),
        (torch.randn(3, 7) * 1e-3, torch.randn(3, 5) * 1e-3),
        ["conv_gradients", "fc_gradients"],
        ["conv_fast_weights", "fc_fast_weights"],
        {
            "conv_gradients": {0: Dim("conv_examples"), 1: coords},
            "fc_gradients": {0: Dim("fc_examples"), 1: fc_coords},
        },
        paths["m"],
    )
    if model.d_rep is not None:
        p, hidden = Dim("coordinates"), model.config.meta_hidden
        _export(
            DGraph(model),
            (torch.randn(7) * 1e-3, torch.zeros(7, hidden), torch.zeros(7, hidden)),
            ["gradient", "hidden", "cell"],
            ["next_hidden", "next_cell", "fast_weights"],
            {"gradient": {0: p}, "hidden": {0: p}, "cell": {0: p}},
            paths["d"],
        )
    else:
        paths.pop("d")
    return paths
