"""Image decoding and the resize/crop/normalise transforms image models were trained with.

Everything here is CPU-bound and synchronous: callers run it in a thread pool so that a big
image never stalls the event loop.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

#: PIL format names accepted as input, as the contract (ferry.types.v1.Image) lists them.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP or GIF"


class InvalidImage(ValueError):
    """The bytes are not an image in one of the accepted formats."""

    reason = "INVALID_IMAGE"


class ImageTooLarge(InvalidImage):
    """The image's header declares more pixels than the decoding budget allows."""

    reason = "IMAGE_TOO_LARGE"


def check_image_pixels(content: bytes, max_pixels: int) -> None:
    """Refuses an image whose header declares more than ``max_pixels``, before any decoding.

    Only the header is read (``Image.open`` is lazy), so this costs microseconds even for a
    picture that would take seconds and gigabytes to decode. Bytes that are not an accepted
    image pass here and fail in ``decode_image`` with its own message.

    Raises:
        ImageTooLarge: With the image's size and the limit in the message.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content), formats=ACCEPTED_FORMATS) as opened:
                width, height = opened.size
        size = f"{width}x{height} = {width * height / 1e6:.1f} megapixels"
        too_large = width * height > max_pixels
    except Image.DecompressionBombError:  # beyond PIL's own hard limit, so far beyond ours
        size, too_large = f"over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels", True
    except (OSError, SyntaxError, ValueError):
        return
    if too_large:
        raise ImageTooLarge(
            f"it is {size} and the limit is {max_pixels / 1e6:g} megapixels per image "
            "(FERRY_INFERENCE_MAX_IMAGE_PIXELS); downscale it before sending"
        )


def decode_image(content: bytes, min_side: int = 0) -> Image.Image:
    """Decodes an encoded image into an RGB picture, upright as its EXIF orientation says.

    Args:
        content: The encoded file.
        min_side: When set, a JPEG may be decoded at a reduced scale (a cheap DCT shortcut), but
            never below this many pixels on its shorter side.

    Raises:
        InvalidImage: When the bytes are empty, not one of ACCEPTED_FORMATS, or corrupt.
    """
    if not content:
        raise InvalidImage("the image is empty")
    try:
        with warnings.catch_warnings():
            # Oversized images raise DecompressionBombError; the warning below that limit is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(content), formats=ACCEPTED_FORMATS)
            if min_side and opened.format == "JPEG":
                # Why: a 24-megapixel photo decodes several times faster at 1/4 scale, and the
                # result is still at least twice the model's input before the real resize.
                opened.draft("RGB", _draft_size(opened.size, min_side))
            # convert: the first frame of a GIF, alpha dropped, palettes and greyscale expanded.
            return ImageOps.exif_transpose(opened).convert("RGB")
    except UnidentifiedImageError:
        # PIL's own message names an internal BytesIO object, which helps no caller.
        raise InvalidImage("the bytes are not a file of a supported image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InvalidImage(str(err) or type(err).__name__) from err


def _draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The size to ask ``Image.draft`` for so the shorter side stays >= ``min_side``."""
    width, height = size
    scale = min_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side, center-crop, scale to [0, 1], then normalise per channel.

    The defaults are what efficientnet-lite's TF-Lite weights expect: bicubic 256, crop 224,
    (x - 0.5) / 0.5.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"crop ({self.crop}) must be between 1 and resize ({self.resize})")

    def decode(self, content: bytes) -> npt.NDArray[np.float32]:
        """Decodes ``content`` and transforms it; raises InvalidImage for bad bytes."""
        return self(decode_image(content, min_side=2 * self.resize))

    def __call__(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """Returns a float32 CHW array of shape (3, crop, crop)."""
        image = _resize_shorter_side(image.convert("RGB"), self.resize)
        image = _center_crop(image, self.crop)
        scaled = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        normalised = (scaled - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one transformed image (channels, height, width)."""
        return (3, self.crop, self.crop)


def _resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if width <= height:
        new = (size, max(1, int(size * height / width)))
    else:
        new = (max(1, int(size * width / height)), size)
    return image.resize(new, Image.Resampling.BICUBIC)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    # Same rounding as torchvision's CenterCrop, so results match its transforms.
    width, height = image.size
    left = round((width - size) / 2.0)
    top = round((height - size) / 2.0)
    return image.crop((left, top, left + size, top + size))
