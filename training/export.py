"""Export a checkpoint to ONNX (the graphs of ``model/onnx_graphs.py``) and check it against torch.

    python -m training.export --checkpoint checkpoints/omniglot-standard-8val.safetensors \\
        --out exports/omniglot-standard.onnx --verify 1000

writes the query, top-k, embedding, m and d graphs (the query graph at ``--out``, the others beside it)
and, with ``--verify N``, classifies N Omniglot test queries with each backend and prints how far apart
they are.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from model.inference import MetaNetPredictor
from model.metanet import MetaNet
from model.onnx_graphs import export_model
from training.data import DEFAULT_DATA, Characters, load_archive


def verify(
    model: MetaNet, out: str | Path, characters: Characters, queries: int = 1000, way: int = 20, seed: int = 0
) -> dict[str, float | int]:
    """ONNX Runtime against torch on real one-shot tasks: ``queries`` queries in ``way``-way tasks of
    random characters (one drawing each taught, another drawer's drawing of each classified), through
    the server's predictor with each backend. Returns the largest probability difference and how many
    predictions agree."""
    reference = MetaNetPredictor(model)
    onnx_runtime = MetaNetPredictor(model, backend="onnxruntime", onnx_path=out)
    rng = np.random.default_rng(seed)
    worst, agree, correct, done = 0.0, 0, 0, 0
    while done < queries:
        chars = rng.choice(len(characters.names), way, replace=False)
        drawers = rng.permuted(np.tile(np.arange(20), (way, 1)), axis=1)[:, :2]  # two drawers per character
        support = characters.images[chars, drawers[:, 0]]
        query = characters.images[chars, drawers[:, 1]][: queries - done]
        task = reference.build_memory(support, [str(c) for c in chars])
        expected, got = reference.classify(task, query), onnx_runtime.classify(task, query)
        worst = max(worst, float((expected - got).abs().max()))
        agree += int((expected.argmax(-1) == got.argmax(-1)).sum())
        correct += int((expected.argmax(-1) == torch.arange(len(query))).sum())
        done += len(query)
    return {
        "queries": done,
        "way": way,
        "max_abs_probability_difference": worst,
        "same_predictions": agree,
        "torch_accuracy": correct / done,
        "providers": ",".join(onnx_runtime.queries.providers),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--out", type=Path, required=True, help="the query graph; the others go beside it")
    parser.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="N",
        help="then compare with torch on N Omniglot test queries",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the Omniglot zips")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    model, _ = load_checkpoint(args.checkpoint)
    paths = export_model(model, args.out)
    print(json.dumps({name: str(path) for name, path in paths.items()}, indent=2))
    if args.verify:
        model, _ = load_checkpoint(args.checkpoint)
        report = verify(model, args.out, load_archive("images_evaluation", args.data), args.verify)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
