"""What one HTTP process spends on a 256-image classify request besides the model, piece by piece,
on real Omniglot drawings (the pieces that bound a GPU server's images/s per HTTP process):

    python -m benchmarks.http_process          # prints a table, writes benchmarks/results/http_process.json

- decoding: base64 + PNG + preprocessing of each drawing (``server.images.ImageDecoder``);
- the answer: a worker's ``ClassifyResult`` (256 predictions, top 5) into the ``ClassifyResponse``
  schema (``ClassifyResponse.of``, beside the ``dataclasses.asdict`` route it replaced), then to JSON;
- gzip of that JSON at the server's level (``gzip_level``) and at zlib's 9 (LitServe's default).

Each figure is the median over ``--repeats`` runs of one thread in this process.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from model.config import MetaNetConfig
from server.config import ServerSettings
from server.images import ImageDecoder
from server.protocol import ClassifyResult, LabelScore, Prediction
from server.schemas import ClassifyResponse
from testkit import b64
from testkit.omniglot import omniglot

IMAGES = 256


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def answer(rng: np.random.Generator, labels: int = 20, top_k: int = 5) -> ClassifyResult:
    """A worker's result for 256 images against a 20-label task, with realistic (varied) floats."""
    predictions = []
    for _ in range(IMAGES):
        order = rng.permutation(labels)[:top_k]
        scores = np.sort(rng.dirichlet(np.ones(labels)))[::-1][:top_k]
        ranked = tuple(LabelScore(f"char{j:02d}", float(s)) for j, s in zip(order, scores, strict=True))
        novelty = float(rng.uniform(0, 0.6))
        predictions.append(Prediction(ranked[0].label, ranked[0].score, novelty <= 0.27, novelty, ranked))
    return ClassifyResult(7, 0.27, tuple(predictions))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/http_process.json"))
    args = parser.parse_args(argv)

    settings = ServerSettings()
    drawings = [b64(d) for character in omniglot("Tibetan", 16, 16) for d in character]  # 256 PNGs
    decoder = ImageDecoder(settings.max_image_side, MetaNetConfig().image_size)
    result = answer(np.random.default_rng(0))
    response = ClassifyResponse.of("task", result)
    body = response.model_dump_json().encode()
    figures = {
        "decode 256 images (base64, PNG, preprocess)": median_ms(
            lambda: [decoder.decode(d, "image") for d in drawings], args.repeats
        ),
        "answer schema: ClassifyResponse.of": median_ms(
            lambda: ClassifyResponse.of("task", result), args.repeats
        ),
        "answer schema: via dataclasses.asdict": median_ms(
            lambda: ClassifyResponse(task_id="task", **asdict(result)), args.repeats
        ),
        "answer to JSON": median_ms(response.model_dump_json, args.repeats),
        f"gzip, level {settings.gzip_level} (the server's)": median_ms(
            lambda: gzip.compress(body, settings.gzip_level), args.repeats
        ),
        "gzip, level 9 (LitServe's default)": median_ms(lambda: gzip.compress(body, 9), args.repeats),
    }
    sizes = {
        "answer bytes": len(body),
        f"gzip level {settings.gzip_level} bytes": len(gzip.compress(body, settings.gzip_level)),
        "gzip level 9 bytes": len(gzip.compress(body, 9)),
    }
    print(f"one 256-image classify request, 20 labels, top 5 ({platform.processor() or platform.machine()})")
    for name, ms in figures.items():
        print(f"  {name:48s} {ms:7.2f} ms  ({1e3 * ms / IMAGES:5.1f} us per image)")
    for name, size in sizes.items():
        print(f"  {name:48s} {size:7d}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"ms_per_request": figures, "sizes": sizes, "images": IMAGES}, indent=2))


if __name__ == "__main__":
    main()
