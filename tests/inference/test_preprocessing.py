"""Decoding and preprocessing: shapes, ranges, formats, and agreement with torchvision."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from torchvision import transforms

from services.inference.preprocessing import (
    ImageTooLarge,
    ImageTransform,
    InvalidImage,
    check_image_pixels,
    decode_image,
)
from tests.inference.conftest import encode

TRANSFORM = ImageTransform(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_chelsea_becomes_a_normalised_224_square(cat_jpeg: bytes) -> None:
    pixels = TRANSFORM.decode(cat_jpeg)
    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == np.float32
    assert pixels.flags.c_contiguous
    assert -1.0 <= pixels.min() < pixels.max() <= 1.0


def test_black_and_white_map_to_minus_one_and_one() -> None:
    # (x - 0.5) / 0.5 maps [0, 1] onto [-1, 1], as the TF-Lite weights were trained.
    black = TRANSFORM(Image.new("RGB", (320, 240), (0, 0, 0)))
    white = TRANSFORM(Image.new("RGB", (240, 320), (255, 255, 255)))
    assert np.all(black == -1.0)
    assert np.allclose(white, 1.0)


def test_matches_torchvision_reference_transform() -> None:
    image = Image.fromarray(skimage_data.coffee())
    reference = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )(image)
    torch.testing.assert_close(torch.from_numpy(TRANSFORM(image)), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "BMP", "GIF"])
def test_every_accepted_format_decodes(image_format: str) -> None:
    content = encode(skimage_data.astronaut(), image_format)
    assert TRANSFORM.decode(content).shape == (3, 224, 224)


def test_greyscale_and_alpha_become_rgb() -> None:
    grey = encode(skimage_data.camera(), "PNG")
    rgba = io.BytesIO()
    Image.new("RGBA", (300, 500), (10, 200, 30, 128)).save(rgba, format="PNG")
    assert decode_image(grey).mode == "RGB"
    assert TRANSFORM.decode(rgba.getvalue()).shape == (3, 224, 224)


def test_large_jpeg_is_drafted_but_never_below_the_asked_side() -> None:
    big = np.tile(skimage_data.chelsea(), (8, 8, 1))  # 3608 x 2400
    image = decode_image(encode(big), min_side=512)
    assert 512 <= min(image.size) < 2400


@pytest.mark.parametrize(
    "content",
    [b"", b"definitely not an image", b"\xff\xd8\xff\xe0" + b"\x00" * 64],
    ids=["empty", "text", "truncated-jpeg"],
)
def test_bad_bytes_raise_invalid_image(content: bytes) -> None:
    with pytest.raises(InvalidImage):
        TRANSFORM.decode(content)


def test_unaccepted_format_is_invalid() -> None:
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).save(buffer, format="TIFF")
    with pytest.raises(InvalidImage):
        TRANSFORM.decode(buffer.getvalue())


def huge_png(side: int) -> bytes:
    """A PNG whose header says side x side: tiny to make (1-bit, all black), slow to decode."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("side", [13000, 20000], ids=["above-ours", "above-pil-hard-limit"])
def test_an_image_over_the_pixel_budget_is_refused_from_its_header(side: int) -> None:
    with pytest.raises(ImageTooLarge, match=r"limit is 50 megapixels.*FERRY_INFERENCE_MAX_IMAGE_PIXELS"):
        check_image_pixels(huge_png(side), max_pixels=50_000_000)


def test_images_within_the_budget_and_non_images_pass_the_header_check(cat_jpeg: bytes) -> None:
    check_image_pixels(cat_jpeg, max_pixels=451 * 300)
    check_image_pixels(b"not an image", max_pixels=1)  # decode_image gives its own error
    with pytest.raises(ImageTooLarge, match="451x300"):
        check_image_pixels(cat_jpeg, max_pixels=451 * 300 - 1)
