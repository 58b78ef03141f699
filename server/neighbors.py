"""Nearest memory keys for top-k attention: a FAISS inner-product index, on the GPU when the installed FAISS
has GPU support, else a ``torch.topk`` over the keys on the model's device (a GPU without FAISS-GPU: the
keys are already there, and a copy to the host per query would cost more than the search)."""

from __future__ import annotations

import faiss
import numpy as np
import torch


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissKeyIndex:
    """Exact inner-product search (L2-normalized keys: inner product = cosine) with FAISS."""

    _gpu_resources = None  # one per process, shared by every index

    def __init__(self, keys: torch.Tensor) -> None:
        vectors = keys.detach().to("cpu", torch.float32).contiguous().numpy()
        self.ntotal, self.d = vectors.shape
        index = faiss.IndexFlatIP(self.d)
        if keys.is_cuda and faiss_has_gpu():
            if FaissKeyIndex._gpu_resources is None:
                FaissKeyIndex._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(FaissKeyIndex._gpu_resources, keys.device.index or 0, index)
        index.add(vectors)
        self.index = index

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [q, k] int64, cosines [q, k]) of each query's k nearest keys, on the queries' device."""
        vectors = np.ascontiguousarray(queries.detach().to("cpu", torch.float32).numpy())
        sims, ids = self.index.search(vectors, min(k, self.ntotal))
        return torch.from_numpy(ids).to(queries.device), torch.from_numpy(sims).to(queries.device)


class TorchKeyIndex:
    """The same search as ``torch.topk`` over the keys, where they live."""

    def __init__(self, keys: torch.Tensor) -> None:
        self.keys = keys.detach().float()
        self.ntotal, self.d = self.keys.shape

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        top = (queries.float() @ self.keys.T).topk(min(k, self.ntotal), dim=-1)
        return top.indices, top.values


KeyIndex = FaissKeyIndex | TorchKeyIndex


def key_index(keys: torch.Tensor) -> KeyIndex:
    """FAISS on the CPU, FAISS on a GPU where it has GPU support, else torch top-k on the GPU."""
    if keys.is_cuda and not faiss_has_gpu():
        return TorchKeyIndex(keys)
    return FaissKeyIndex(keys)
