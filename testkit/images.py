"""Image files for requests: encoded arrays, request bodies, and hand-built malicious PNGs."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(pixels: np.ndarray | Image.Image, fmt: str = "PNG") -> str:
    """base64 of an encoded image file."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return b64(buffer.getvalue())


def support_body(examples: list[tuple[str, bytes | str]]) -> dict:
    """``POST /tasks/{id}/support`` body from (label, image file bytes or base64) pairs."""
    return {
        "examples": [
            {"label": label, "image": b64(im) if isinstance(im, bytes) else im} for label, im in examples
        ]
    }


def png_chunks(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG file from raw scanlines (each with its filter byte), with any header values."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def decompression_bomb(side: int = 8192) -> bytes:
    """A 1-bit PNG of side x side pixels (67 megapixels by default) that compresses to a few KB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    raw = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_chunks(side, side, 1, 0, raw)


def zero_size_png() -> bytes:
    return png_chunks(0, 0, 8, 0, zlib.compress(b""))
