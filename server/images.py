"""Safe decoding of base64 image files into the model's preprocessed uint8 [size, size] arrays."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Awaitable, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.preprocess import preprocess_image
from server.admission import parts
from server.protocol import ImageTooLarge, InvalidImage, ServiceError

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
INLINE_DECODE_CHARS = 4096
"""Requests whose images total at most this many base64 characters are decoded on the event loop: a
thread-pool hop costs more than decoding a drawing this small (an Omniglot PNG is ~400 characters), and
so little data decodes to at most a few megapixels. Larger requests are decoded in chunks elsewhere."""

Chunk = tuple[int, Callable[[], list[np.ndarray]]]
"""A chunk of a request's images: how many, and the function that decodes them."""
ChunkRunner = Callable[[list[Chunk]], Awaitable[list[list[np.ndarray]]]]
"""``run(chunks)``: runs the chunks' functions one after the other, off the event loop, and returns their
results (``Dispatcher.decoding``: one decode thread per HTTP process, chunks in fair order)."""


class ImageDecoder:
    """Decodes untrusted images: format allow-list, size checked from the header before pixels are decoded."""

    def __init__(self, max_side: int, size: int, normalize_polarity: bool = True) -> None:
        self.max_side = max_side
        self.size = size
        self.normalize_polarity = normalize_polarity
        # Second line of defence against decompression bombs: PIL refuses anything twice this size
        # while opening; anything between is caught by the side check below.
        Image.MAX_IMAGE_PIXELS = max_side * max_side
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    def decode(self, data: str, where: str) -> np.ndarray:
        """One base64 image -> uint8 [size, size]; ``where`` names the field in error messages."""
        raw = self._b64(data, where)
        try:
            with Image.open(io.BytesIO(raw), formats=FORMATS) as image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width < 1 or height < 1:
                    raise InvalidImage(f"{where}: image has no pixels ({width}x{height})")
                if width > self.max_side or height > self.max_side:
                    raise ImageTooLarge(
                        f"{where}: {width}x{height} pixels exceeds {self.max_side}x{self.max_side}",
                    )
                image.load()
                return preprocess_image(image, normalize_polarity=self.normalize_polarity, size=self.size)
        except ServiceError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"{where}: {exc}") from None
        except UnidentifiedImageError:
            raise InvalidImage(f"{where}: not a supported image file ({', '.join(FORMATS)})") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InvalidImage(f"{where}: cannot decode image ({exc})") from None

    @staticmethod
    def _b64(data: str, where: str) -> bytes:
        if data.startswith("data:"):  # tolerate data URLs: data:image/png;base64,....
            data = data.partition(",")[2]
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImage(f"{where}: not valid base64") from None
        if not raw:
            raise InvalidImage(f"{where}: empty image")
        return raw


async def decode_images(
    decoder: ImageDecoder, images: list[str], where: Callable[[int], str], run: ChunkRunner, chunk: int
) -> np.ndarray:
    """uint8 [n, size, size] from base64 images; ``where(i)`` names image i in error messages. Small
    requests inline (``INLINE_DECODE_CHARS``), larger ones in chunks of at most ``chunk`` images, each
    through ``run``."""

    def decode(indices: range) -> Callable[[], list[np.ndarray]]:
        return lambda: [decoder.decode(images[i], where(i)) for i in indices]

    if sum(len(image) for image in images) <= INLINE_DECODE_CHARS:
        return np.stack(decode(range(len(images)))())
    chunks = [(len(indices), decode(indices)) for indices in parts(len(images), chunk)]
    return np.stack([image for decoded in await run(chunks) for image in decoded])
