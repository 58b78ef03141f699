"""The shared image preprocessing: any image -> 28x28 uint8 with bright strokes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from model.preprocess import preprocess_image, to_tensor
from testkit import omniglot


def omniglot_drawing() -> Image.Image:
    return Image.open(io.BytesIO(omniglot(None, 1, 1)[0][0])).convert("L")


def test_dark_on_light_and_light_on_dark_give_the_same_tensor():
    paper = omniglot_drawing()  # black strokes on white, 105x105
    screen = ImageOps.invert(paper)
    a, b = preprocess_image(paper), preprocess_image(screen)
    assert a.shape == (28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert a[0].max() == 0 and a.max() > 200  # dark background, bright strokes


def test_polarity_normalization_can_be_turned_off():
    paper = omniglot_drawing()
    kept = preprocess_image(paper, normalize_polarity=False)
    assert kept[0].min() == 255  # background stays white


def test_any_mode_and_size():
    rgb = Image.new("RGB", (300, 200), "white")
    rgb.paste((0, 0, 0), (100, 50, 200, 150))
    transparent = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    transparent.paste((0, 0, 0, 255), (20, 20, 40, 40))
    for image in (rgb, transparent, rgb.convert("P"), rgb.convert("1")):
        out = preprocess_image(image)
        assert out.shape == (28, 28) and out[0, 0] == 0 and out.max() == 255


def test_to_tensor_scales_to_unit_interval():
    tensor = to_tensor(np.array([[[0, 255]]], dtype=np.uint8))
    assert tensor.shape == (1, 1, 1, 2) and tensor.max() == 1.0 and tensor.dtype.is_floating_point
