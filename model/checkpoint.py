"""Checkpoints: weights in safetensors, metadata (model config, data, training run, measured
accuracy) in a JSON file beside them and in the safetensors header."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.config import MetaNetConfig
from model.metanet import MetaNet

DEFAULT_CHECKPOINT = Path("checkpoints/omniglot-standard-8val.safetensors")
"""The server's and the tools' default (relative to the repository root): standard split, its
"none of these" calibrated on eight held-out background alphabets."""


def metadata_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def weights(model: MetaNet) -> dict[str, torch.Tensor]:
    """The model's state as CPU tensors, ready for safetensors."""
    return {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}


def training_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint derived from another (continued, averaged) keeps of its metadata: not its
    config (the model's own is written) and not what was measured of it (``test``, ``open_set``)."""
    return {k: v for k, v in metadata.items() if k not in ("config", "test", "open_set")}


def save_checkpoint(model: MetaNet, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write ``path`` (safetensors) and ``path`` with a .json suffix, atomically each."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"config": model.config.to_dict()} | metadata
    tensors = weights(model)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"metanet": json.dumps(full)})
    tmp.replace(path)
    json_tmp = metadata_path(path).with_suffix(".json.tmp")
    json_tmp.write_text(json.dumps(full, indent=2) + "\n")
    json_tmp.replace(metadata_path(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of a checkpoint (from the JSON beside it, else the safetensors header)."""
    side = metadata_path(path)
    if side.exists():
        return json.loads(side.read_text())
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["metanet"])


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MetaNet, dict[str, Any]]:
    """Rebuild the model of a checkpoint; returns (model in eval mode, metadata)."""
    metadata = read_metadata(path)
    model = MetaNet(MetaNetConfig.from_dict(metadata["config"]))
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval(), metadata
