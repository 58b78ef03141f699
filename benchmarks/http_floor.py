"""The HTTP floor for benchmarks/server_bench.py: a bare FastAPI server with the project's request schema
and image decoding, classifying by nearest neighbour in pixel space (no model, no worker process, no
store), run with one uvicorn process:

    python -m uvicorn benchmarks.http_floor:app --port 8001
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from model.config import MetaNetConfig
from server.config import ServerSettings
from server.images import ImageDecoder, decode_images

app = FastAPI(title="pixel nearest neighbour")
decoder = ImageDecoder(ServerSettings().max_image_side, MetaNetConfig().image_size)
tasks: dict[str, tuple[np.ndarray, list[str]]] = {}  # task id -> (pixels [n, 784] float32, labels)
decode_thread = ThreadPoolExecutor(1)


class Example(BaseModel):
    label: str
    image: str


class SupportBody(BaseModel):
    examples: list[Example]


class ClassifyBody(BaseModel):
    images: list[str]


async def _pixels(images: list[str]) -> np.ndarray:
    """Decoded as the server decodes them (small requests inline, large ones in chunks of 32 on one
    decode thread)."""

    async def run(chunks):
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(decode_thread, decode) for _, decode in chunks]

    decoded = await decode_images(decoder, images, "images[{}]".format, run, 32)
    return decoded.reshape(len(images), -1) / 255.0


@app.post("/tasks/{task_id}/support")
async def support(task_id: str, body: SupportBody) -> dict:
    pixels = await _pixels([e.image for e in body.examples])
    old, labels = tasks.get(task_id, (np.zeros((0, pixels.shape[1])), []))
    tasks[task_id] = (np.concatenate([old, pixels]), labels + [e.label for e in body.examples])
    return {"num_examples": len(tasks[task_id][1])}


@app.post("/tasks/{task_id}/classify")
async def classify(task_id: str, body: ClassifyBody) -> dict:
    support_pixels, labels = tasks[task_id]
    queries = await _pixels(body.images)
    distances = (support_pixels**2).sum(1) - 2 * queries @ support_pixels.T  # squared, less |query|^2
    return {"predictions": [{"label": labels[i]} for i in distances.argmin(1)]}
