"""Image preprocessing shared by training and serving.

Any decoded image becomes a 28x28 uint8 array with bright strokes on a dark background:

1. convert to grayscale (alpha is composited onto white first, so transparent PNGs read as paper);
2. polarity rule: the background is whatever dominates the image border. If the mean of the
   outermost row and column of pixels is brighter than mid-gray (>= 128), the image is dark ink
   on light paper and is inverted. Turn this off with ``normalize_polarity=False``;
3. resize to 28x28 with area averaging (box filter), which keeps thin strokes visible.

The model consumes ``to_tensor(array)``: float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGE_SIZE = 28


def _grayscale(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("L")
    return image.convert("L")


def border_mean(pixels: np.ndarray) -> float:
    """Mean intensity of the outermost rows and columns of a 2-D array."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return float(border.mean())


def preprocess_image(
    image: Image.Image, *, normalize_polarity: bool = True, size: int = IMAGE_SIZE
) -> np.ndarray:
    """Convert any PIL image to a ``size`` x ``size`` uint8 array with bright strokes."""
    gray = _grayscale(image)
    pixels = np.asarray(gray)
    if normalize_polarity and border_mean(pixels) >= 128:
        gray = Image.fromarray(255 - pixels)  # ImageOps.invert, without its per-call lookup table
    resized = gray.resize((size, size), Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.uint8).copy()


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images [..., H, W] -> float32 model input [..., 1, H, W] in [0, 1]."""
    pixels = torch.as_tensor(images)
    return (pixels.float() / 255.0).unsqueeze(-3)
