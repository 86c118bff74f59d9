"""Decoding and preprocessing: shapes, ranges, formats, and agreement with torchvision."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from random import Random

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from torchvision import transforms
from torchvision.transforms.v2 import InterpolationMode, functional

from services.inference import preprocessing
from services.inference.preprocessing import (
    ImageTooLarge,
    ImageTransform,
    InvalidImage,
    check_image_pixels,
    decode_image,
    decode_jpeg_on,
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


#: One uint8 intensity level after (x / 255 - 0.5) / 0.5.
ONE_LEVEL = 1 / 127.5


def reference(image: Image.Image, transform: ImageTransform = TRANSFORM) -> torch.Tensor:
    """torchvision's own PIL pipeline (PIL's bicubic resize): what the weights were trained with."""
    return transforms.Compose(
        [
            transforms.Resize(transform.resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(transform.crop),
            transforms.ToTensor(),
            transforms.Normalize(transform.mean, transform.std),
        ]
    )(image)


@pytest.mark.parametrize("photo", ["coffee", "chelsea", "astronaut"])
def test_matches_torchvision_reference_transform_within_one_level(photo: str) -> None:
    # torch's vectorised uint8 bicubic rounds a few pixels the other way from PIL's.
    image = Image.fromarray(getattr(skimage_data, photo)())
    pixels = torch.from_numpy(TRANSFORM.decode(encode(np.asarray(image))))
    expected = reference(Image.open(io.BytesIO(encode(np.asarray(image)))))
    torch.testing.assert_close(pixels, expected, atol=ONE_LEVEL + 1e-6, rtol=0)
    assert (pixels - expected).abs().mean() < ONE_LEVEL / 20  # a few pixels, not a shift


def test_pixels_are_uint8_channels_last_and_normalize_as_the_formula() -> None:
    content = encode(skimage_data.chelsea())
    pixels = TRANSFORM.pixels(content)
    assert (pixels.shape, pixels.dtype) == ((224, 224, 3), torch.uint8)
    batch = TRANSFORM.normalize(torch.stack([pixels, pixels]))
    assert batch.shape == (2, 3, 224, 224) and batch.is_contiguous(memory_format=torch.channels_last)
    formula = (pixels.permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(batch[1], formula, atol=1e-6, rtol=0)


def test_the_device_decoder_agrees_with_pil_on_the_cpu() -> None:
    # On a GPU the same call runs nvJPEG; here it runs libjpeg-turbo, as PIL does.
    content = encode(skimage_data.chelsea())
    decoded = decode_jpeg_on(content, 512, torch.device("cpu"))
    assert decoded is not None and decoded.shape == (3, 300, 451)
    via_pil = torch.from_numpy(np.array(decode_image(content, 512))).permute(2, 0, 1)
    assert (decoded.int() - via_pil.int()).abs().max() <= 1


@pytest.mark.parametrize(
    "content",
    [encode(skimage_data.astronaut(), "PNG"), b"\xff\xd8\xff\xe0" + b"\x00" * 64, b"not an image"],
    ids=["png", "truncated-jpeg", "text"],
)
def test_the_device_decoder_leaves_what_it_cannot_decode_to_pil(content: bytes) -> None:
    assert decode_jpeg_on(content, 512, torch.device("cpu")) is None


def test_a_big_jpeg_is_left_to_pil_drafting() -> None:
    big = encode(np.tile(skimage_data.chelsea(), (4, 4, 1)))  # 1804 x 1200: a 1/2 draft keeps 600
    assert decode_jpeg_on(big, 512, torch.device("cpu")) is None


def pil_and_full_resize(content: bytes, transform: ImageTransform = TRANSFORM) -> torch.Tensor:
    """The pixels as session 7 made them: PIL's decode, the whole picture resized, then cropped."""
    image = torch.from_numpy(np.array(decode_image(content, 2 * transform.resize))).permute(2, 0, 1)
    height, width = image.shape[-2:]
    side = transform.resize
    size = (int(side * height / width), side) if width <= height else (side, int(side * width / height))
    resized = functional.resize(image, list(size), InterpolationMode.BICUBIC, antialias=True)
    top, left = round((size[0] - transform.crop) / 2.0), round((size[1] - transform.crop) / 2.0)
    return resized[:, top : top + transform.crop, left : left + transform.crop].permute(1, 2, 0)


@pytest.mark.parametrize("photo", ["coffee", "chelsea", "astronaut", "rocket", "phone"])
def test_pixels_are_those_of_pil_and_the_whole_resize_exactly(photo: str) -> None:
    # torchvision's decoder and the resize cut at the crop change the cost, not one pixel.
    if photo == "phone":  # 3000 x 2000: drafted by PIL to 1/2, not torchvision's to decode
        from benchmarks.bulk import phone_photo

        content = phone_photo(6.0)
    else:
        content = encode(getattr(skimage_data, photo)())
    assert torch.equal(TRANSFORM.pixels(content), pil_and_full_resize(content))


def test_a_jpeg_is_decoded_by_torchvision_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pil(content: bytes, min_side: int = 0) -> Image.Image:
        raise AssertionError("PIL decoded a JPEG that torchvision decodes for less")

    monkeypatch.setattr(preprocessing, "decode_image", no_pil)
    assert TRANSFORM.pixels(encode(skimage_data.chelsea())).shape == (224, 224, 3)


def test_without_torchvisions_decoder_pil_decodes_the_same_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    content = encode(skimage_data.chelsea())
    expected = TRANSFORM.pixels(content)
    monkeypatch.setattr(preprocessing, "_decode_jpeg_cpu", None)
    assert decode_jpeg_on(content, 512, torch.device("cpu")) is None
    assert torch.equal(TRANSFORM.pixels(content), expected)


def rotated_jpeg(orientation: int) -> bytes:
    """Chelsea (451 x 300) stored sideways, with the EXIF orientation that turns it upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_jpeg_turned_by_its_exif_is_upright_as_pil_turns_it(orientation: int) -> None:
    content = rotated_jpeg(orientation)
    assert torch.equal(TRANSFORM.pixels(content), pil_and_full_resize(content))


def test_a_turned_jpeg_is_left_to_pil_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # nvJPEG does not apply EXIF orientation: such a photo would reach the model sideways.
    def no_device(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("a turned JPEG was sent to nvJPEG")

    monkeypatch.setattr(preprocessing, "decode_jpeg", no_device)
    assert decode_jpeg_on(rotated_jpeg(6), 512, torch.device("cuda")) is None


@pytest.mark.parametrize("seed", range(40))
def test_the_resize_cut_at_the_crop_is_the_whole_resize_cropped(seed: int) -> None:
    rng = Random(seed)
    side = rng.choice([160, 232, 256, 299])
    transform = ImageTransform(resize=side, crop=rng.randint(max(1, side - 80), side))
    height, width = rng.randint(1, 900), rng.randint(1, 900)
    noise = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=noise)
    size = (int(side * height / width), side) if width <= height else (side, int(side * width / height))
    size = (max(1, size[0]), max(1, size[1]))
    whole = functional.resize(image, list(size), InterpolationMode.BICUBIC, antialias=True)
    top, left = round((size[0] - transform.crop) / 2.0), round((size[1] - transform.crop) / 2.0)
    expected = whole[:, top : top + transform.crop, left : left + transform.crop].permute(1, 2, 0)
    assert torch.equal(transform.resized(image), expected)
    assert torch.equal(transform.resized(image.permute(1, 2, 0).contiguous().permute(2, 0, 1)), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here: nvJPEG not exercised")
def test_pixels_decode_on_the_gpu() -> None:
    content = encode(skimage_data.chelsea())
    on_gpu = TRANSFORM.pixels(content, torch.device("cuda"))
    assert on_gpu.is_cuda
    assert (on_gpu.cpu().int() - TRANSFORM.pixels(content).int()).abs().max() <= 2


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "AVIF", "BMP", "GIF"])
def test_every_accepted_format_decodes(image_format: str) -> None:
    content = encode(skimage_data.astronaut(), image_format)
    assert TRANSFORM.decode(content).shape == (3, 224, 224)


def test_a_phones_heic_photo_decodes_upright() -> None:
    # Stored turned a quarter, with EXIF orientation 6, as a phone held sideways saves it.
    content = HEIC.read_bytes()
    decoded = decode_image(content)
    upright = skimage_data.chelsea()
    assert decoded.size == (upright.shape[1], upright.shape[0])
    # Lossy at quality 60: a level or two per pixel off the original, not a different picture.
    assert np.abs(np.asarray(decoded, dtype=np.int16) - upright.astype(np.int16)).mean() < 4
    check_image_pixels(content, max_pixels=upright.shape[0] * upright.shape[1])
    with pytest.raises(ImageTooLarge, match="451x300"):
        check_image_pixels(content, max_pixels=100_000)


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


HEIC = Path(__file__).parents[1] / "fixtures" / "chelsea-sideways.heic"


def with_extent(heic: bytes, width: int, height: int) -> bytes:
    """``heic`` with its image's declared size (the ``ispe`` box) changed."""
    at = heic.index(b"ispe") + 8  # past the box's type, its version and flags
    return heic[:at] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + heic[at + 8 :]


@pytest.mark.parametrize(("width", "height"), [(70_000, 70_000), (3_000_000_000, 10_000), (0, 451)])
def test_a_heic_declaring_an_impossible_size_is_an_invalid_image(width: int, height: int) -> None:
    # libheif refuses these with a RuntimeError, which escaped as an internal error.
    content = with_extent(HEIC.read_bytes(), width, height)
    check_image_pixels(content, max_pixels=50_000_000)
    with pytest.raises(InvalidImage):
        TRANSFORM.decode(content)


def test_a_damaged_heic_is_decoded_or_invalid_never_an_error() -> None:
    heic, random = HEIC.read_bytes(), Random(17)
    for _ in range(150):
        damaged = bytearray(heic)
        for _ in range(random.randint(1, 20)):
            damaged[random.randrange(len(damaged))] = random.randrange(256)
        with contextlib.suppress(InvalidImage):
            check_image_pixels(bytes(damaged), max_pixels=50_000_000)
            TRANSFORM.decode(bytes(damaged))


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


def test_a_16_bit_greyscale_png_decodes_to_its_picture_not_white() -> None:
    # PIL's convert("RGB") clips 16-bit greyscale to 255: such a PNG of a cat was a white square,
    # and its Predict answered "nematode" without an error.
    grey = np.asarray(Image.fromarray(skimage_data.chelsea()).convert("L"))
    buffer = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(buffer, format="PNG")  # 0..255 to 0..65535
    decoded = np.asarray(preprocessing.decode_image(buffer.getvalue()))
    assert decoded.shape == (*grey.shape, 3)
    assert np.abs(decoded.astype(int) - grey[..., None].astype(int)).max() <= 1
