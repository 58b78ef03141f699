"""Turn the image inputs the SDK accepts into encoded image files (bytes)."""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import numpy
    from PIL.Image import Image as PILImage

Image: TypeAlias = (
    "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | PILImage | numpy.ndarray"  # noqa: E501
)
"""One image: a file path, an encoded image file's bytes, a binary file object, a PIL image or a
numpy array (HxW, HxWx1, HxWx3 or HxWx4; uint8 0..255, bool, or float in [0, 1])."""

Images: TypeAlias = "Image | Iterable[Image]"
"""One image or an iterable of images (pass a stack of numpy images as `list(array)`)."""

_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


def _pil_image(obj: object) -> bool:
    pil = sys.modules.get("PIL.Image")  # a PIL image exists only if its module was imported
    return pil is not None and isinstance(obj, pil.Image)


def _ndarray(obj: object) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


def is_single_image(obj: object) -> bool:
    return (
        isinstance(obj, str | os.PathLike | bytes | bytearray | memoryview)
        or hasattr(obj, "read")
        or _pil_image(obj)
        or _ndarray(obj)
    )


def iter_images(images: Images) -> Iterable[Image]:
    """`images` as an iterable of single images."""
    return [images] if is_single_image(images) else images


def encode_image(image: Image) -> bytes:
    """The bytes of an encoded image file; PIL images and numpy arrays become PNG."""
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as file:
            return file.read()
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError("image file objects must be opened in binary mode ('rb')")
        return data
    if _pil_image(image):
        buffer = io.BytesIO()
        (image if image.mode in _PNG_MODES else image.convert("RGB")).save(buffer, format="PNG")
        return buffer.getvalue()
    if _ndarray(image):
        return _png_from_array(image)
    raise TypeError(
        f"unsupported image type {type(image).__name__}: "
        "pass a path, bytes, a binary file object, a PIL image or a numpy array"
    )


def _png_from_array(array: Any) -> bytes:
    """Encode an image array as an 8-bit grayscale, RGB or RGBA PNG (numpy only, no Pillow needed)."""
    import numpy as np

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    channels = 1 if array.ndim == 2 else array.shape[2] if array.ndim == 3 else 0
    if channels not in (1, 3, 4) or array.size == 0:
        raise ValueError(
            f"expected a non-empty HxW, HxWx1, HxWx3 or HxWx4 image array, got shape {array.shape} "
            "(pass several images as a list, e.g. list(array))"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        if array.min() < 0 or array.max() > 1:
            raise ValueError("float image arrays must hold values in [0, 1]")
        array = np.rint(array * 255)
    elif array.dtype.kind in "iu" and (array.min() < 0 or array.max() > 255):
        raise ValueError("integer image arrays must hold values in 0..255")
    pixels = np.ascontiguousarray(array, dtype=np.uint8).reshape(array.shape[0], -1)
    height, width = array.shape[:2]
    rows = np.hstack([np.zeros((height, 1), np.uint8), pixels]).tobytes()  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    color_type = {1: 0, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body
