"""The query side of the model on ONNX Runtime: the graphs ``model/onnx_graphs.py`` exports, fed a
task's memory tensors as inputs.

``OnnxQueryBackend`` is a ``model.metanet.QueryBackend``: it supplies the query embedding and the output
head that ``MetaNet`` itself supplies to ``MetaNet.classify_tasks``, and gives the same numbers
(tests/metanet/test_onnx.py). The scheduling, the attention and the memory read (W* = a^T M from compact
rows) run in the model, in torch; the query embedding, b with per-query fast weights and the output
layer run in the graphs. Execution provider: CUDA when the predictor's device is a GPU and the
installed ONNX Runtime has it (``onnxruntime-gpu``, the ``gpu`` extra), with inputs and outputs bound
in GPU memory (no copies through the host); the CPU provider otherwise.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model.checkpoint import load_checkpoint
from model.metanet import MetaNet, QueryRows, SparseAttention
from model.onnx_graphs import EXPORT_FORMAT, export_model, flat_rep_task, graph_paths

logger = logging.getLogger("metanet.onnx")


def default_onnx_path(checkpoint: str | Path, folder: str | Path) -> Path:
    """Where a checkpoint's export is kept: named by the checkpoint's contents and the graphs' format
    (``model.onnx_graphs.EXPORT_FORMAT``), so a changed checkpoint or exporter is exported again instead
    of serving stale graphs."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]
    return Path(folder) / f"{Path(checkpoint).stem}-{digest}-v{EXPORT_FORMAT}.onnx"


def ensure_export(checkpoint: str | Path, out: str | Path) -> None:
    """Export ``checkpoint`` to ``out`` unless that export is already there."""
    if not all(path.exists() for path in graph_paths(out).values()):
        _export_if_missing(load_checkpoint(checkpoint)[0], out)


def _export_if_missing(model: MetaNet, out: str | Path) -> None:
    """Export into a scratch folder, then move each graph into place (the query graph last), so that
    a concurrent reader never sees a partial export and concurrent exporters do not clash."""
    out = Path(out)
    if all(path.exists() for path in graph_paths(out).values()):
        return
    logger.info("exporting the model to ONNX at %s (once per checkpoint)", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        written = export_model(copy.deepcopy(model).cpu(), Path(scratch) / out.name)
        final = graph_paths(out)
        for name in sorted(written, key=lambda graph: graph == "query"):
            os.replace(written[name], final[name])


def providers_for(device: torch.device) -> list[str]:
    """ONNX Runtime execution providers for a torch device, best first."""
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class _Session:
    """One graph: torch tensors in, torch tensors out, on the session's device."""

    def __init__(self, path: Path, device: torch.device, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No CPU arena: it keeps the largest request's buffers (a 256-image batch's fast weights are
        # ~150 MB) for the life of the worker, which the memory budget does not count.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False  # nor pre-planned buffers sized by the largest request
        providers = providers_for(device)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.on_gpu = providers[0] == "CUDAExecutionProvider"
        self.device = device if self.on_gpu else torch.device("cpu")
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, torch.Tensor], output_shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Run on the inputs the graph declares (others are ignored); float32 outputs of the given shapes."""
        feeds = {name: feeds[name].to(self.device).contiguous() for name in self.inputs}
        if not self.on_gpu:
            results = self.session.run(self.outputs, {name: t.numpy() for name, t in feeds.items()})
            return [torch.from_numpy(r) for r in results]
        binding = self.session.io_binding()  # GPU tensors stay where they are
        index = self.device.index or 0
        for name, t in feeds.items():
            binding.bind_input(name, "cuda", index, _numpy_dtype(t), tuple(t.shape), t.data_ptr())
        outputs = [torch.empty(shape, dtype=torch.float32, device=self.device) for shape in output_shapes]
        for name, t in zip(self.outputs, outputs, strict=True):
            binding.bind_output(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        self.session.run_with_iobinding(binding)
        return outputs


def _numpy_dtype(t: torch.Tensor) -> type:
    return {torch.float32: np.float32, torch.int64: np.int64, torch.float16: np.float16}[t.dtype]


class OnnxQueryBackend:
    """The exported query graphs (dense attention, top-k attention, query embedding) on ONNX Runtime."""

    def __init__(
        self, model: MetaNet, out: str | Path, device: str | torch.device = "cpu", threads: int | None = None
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        threads = threads or torch.get_num_threads()
        paths = graph_paths(out)
        self.dense = _Session(paths["query"], self.device, threads)
        self.topk = _Session(paths["topk"], self.device, threads)
        self.embedder = _Session(paths["embed"], self.device, threads)
        self.providers = self.dense.session.get_providers()
        self.channels = self.embedder.session.get_outputs()[0].shape[1]  # static in the graph

    @classmethod
    def for_model(
        cls, model: MetaNet, out: str | Path, device: str | torch.device = "cpu"
    ) -> OnnxQueryBackend:
        """Sessions over ``model``'s export at ``out``, exporting it there first if it is missing."""
        _export_if_missing(model, out)
        path = cls(model, out, device)
        logger.info("ONNX Runtime %s, providers %s", ort.__version__, path.providers)
        return path

    def embed(self, x: torch.Tensor, rep_task_weights: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """[q, C] query keys: ``MetaNet.embed`` for one task."""
        feeds = {"images": x, "rep_task": flat_rep_task(rep_task_weights, x)}
        return self.embedder.run(feeds, [(x.shape[0], self.channels)])[0].to(x.device)

    def output_head(self, parts: list[QueryRows]) -> list[torch.Tensor]:
        """``MetaNet.output_head``: one graph run per part (the graphs take one task's memory)."""
        logits = []
        for part in parts:
            memory, dense = part.memory, not isinstance(part.attention, SparseAttention)
            feeds = {
                "images": part.images,
                "fast_weights": part.fast_weights,
                "labels": memory.labels,
                "label_codes": memory.label_codes,
                "fast_out": memory.fast_out,
            }
            if dense:
                feeds["attention"] = part.attention
            else:
                feeds |= {"ids": part.attention.ids, "weights": part.attention.weights}
            shape = (len(part.images), memory.label_codes.shape[0])
            session = self.dense if dense else self.topk
            logits.append(session.run(feeds, [shape])[0].to(part.images.device))
        return logits
