"""ImageDecoder without HTTP: formats, polarity, and every kind of bad image."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from server.errors import status_of
from server.images import ImageDecoder
from server.protocol import ServiceError
from testkit import b64, decompression_bomb, png, zero_size_png


@pytest.fixture(scope="module")
def decoder() -> ImageDecoder:
    return ImageDecoder(max_side=4096, size=28)


def stroke(dark_on_light: bool, size: int = 105) -> np.ndarray:
    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[20:85, 45:60] = 255
    return 255 - pixels if dark_on_light else pixels


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_formats_decode_to_bright_strokes(decoder: ImageDecoder, fmt: str) -> None:
    out = decoder.decode(png(Image.fromarray(stroke(True)).convert("RGB"), fmt), "img")
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[14, 14] > 200 and out[2, 2] < 30  # stroke bright, background dark


def test_polarity_is_normalized(decoder: ImageDecoder) -> None:
    dark_on_light = decoder.decode(png(stroke(True)), "img")
    light_on_dark = decoder.decode(png(stroke(False)), "img")
    np.testing.assert_array_equal(dark_on_light, light_on_dark)
    kept = ImageDecoder(max_side=4096, size=28, normalize_polarity=False).decode(png(stroke(True)), "img")
    np.testing.assert_array_equal(kept, 255 - light_on_dark)


def test_data_url_and_any_size(decoder: ImageDecoder) -> None:
    assert decoder.decode("data:image/png;base64," + png(stroke(False, 300)), "img").shape == (28, 28)
    assert decoder.decode(png(np.full((1, 1), 255, np.uint8)), "img").shape == (28, 28)


def _truncated() -> str:
    data = base64.b64decode(png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)))
    return b64(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ("not base64 at all!", 400, "base64"),
        ("", 400, "empty"),
        (b64(b"just some bytes, not an image"), 400, "not a supported image"),
        (_truncated(), 400, "cannot decode"),
        (b64(zero_size_png()), 400, "img"),
        (png(np.zeros((1, 4097), np.uint8)), 413, "exceeds"),
        (b64(decompression_bomb()), 413, "img"),
        (b64(b"%PDF-1.4 not an allowed format"), 400, "not a supported image"),
    ],
    ids=["base64", "empty", "not-image", "truncated", "zero-size", "too-wide", "bomb", "pdf"],
)
def test_bad_images_are_4xx(decoder: ImageDecoder, payload: str, status: int, fragment: str) -> None:
    with pytest.raises(ServiceError) as caught:
        decoder.decode(payload, "img")
    assert status_of(caught.value) == status and fragment in caught.value.message
    assert caught.value.message.startswith("img")


def test_bomb_is_rejected_before_decoding(decoder: ImageDecoder, monkeypatch: pytest.MonkeyPatch) -> None:
    wide = png(np.zeros((10, 5000), np.uint8))
    loaded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loaded.append(self.size))
    with pytest.raises(ServiceError):
        decoder.decode(wide, "img")
    assert loaded == []


def test_image_bytes_are_not_echoed(decoder: ImageDecoder) -> None:
    secret = b64(b"SECRET-PIXELS" * 10)
    with pytest.raises(ServiceError) as caught:
        decoder.decode(secret, "img")
    assert "SECRET" not in caught.value.message and secret not in caught.value.message


def test_png_helper_roundtrip() -> None:
    image = Image.open(io.BytesIO(base64.b64decode(png(stroke(False)))))
    assert image.size == (105, 105)
