"""Image decoding and the resize/crop/normalise transforms image models were trained with.

Everything here is synchronous: callers run it in a thread pool so that a big image never stalls
the event loop. Decoding and resizing produce uint8 pixels; the float conversion and
normalisation run once per batch (``ImageTransform.normalize``), where they are one vectorised op.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pi_heif
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode, functional

#: PIL format names accepted as input, as the contract (ferry.types.v1.Image) lists them. HEIF is
#: what phones save photos as (an iPhone's HEIC); pi-heif decodes it (libheif and libde265, no
#: encoder), AVIF is Pillow's own.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "HEIF", "BMP", "GIF")
ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP, AVIF, HEIC/HEIF, BMP or GIF"
pi_heif.register_heif_opener()
CPU = torch.device("cpu")


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
    except (OSError, SyntaxError, ValueError, RuntimeError):  # RuntimeError: libheif's refusals
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
            # In place, and converted only when not RGB already: each copy of a photo costs about
            # as much as a tenth of its decode.
            ImageOps.exif_transpose(opened, in_place=True)
            # convert: the first frame of a GIF, alpha dropped, palettes and greyscale expanded.
            return opened if opened.mode == "RGB" else opened.convert("RGB")
    except UnidentifiedImageError:
        # PIL's own message names an internal BytesIO object, which helps no caller.
        raise InvalidImage("the bytes are not a file of a supported image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InvalidImage(str(err) or type(err).__name__) from err
    except RuntimeError as err:  # libheif (HEIC) refusing a corrupt file or one past its limits
        raise InvalidImage(f"the image cannot be decoded: {err}") from err


def _draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The size to ask ``Image.draft`` for so the shorter side stays >= ``min_side``."""
    width, height = size
    scale = min_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _drafts(size: tuple[int, int], min_side: int) -> bool:
    """Whether ``Image.draft`` would decode a JPEG of ``size`` at a reduced scale (1/2 or less)."""
    return bool(min_side) and min(size) >= 2 * min_side


def decode_pixels(content: bytes, min_side: int = 0, device: torch.device = CPU) -> torch.Tensor:
    """Decodes an encoded image into an RGB uint8 tensor (3, height, width) on ``device``.

    On a GPU, a JPEG that ``decode_image`` would not draft is decoded there by nvJPEG
    (``decode_jpeg_on``); everything else is decoded by PIL (libjpeg-turbo for JPEG) on the CPU.

    Raises:
        InvalidImage: When the bytes are empty, not one of ACCEPTED_FORMATS, or corrupt.
    """
    if device.type != "cpu" and (decoded := decode_jpeg_on(content, min_side, device)) is not None:
        return decoded
    return pil_pixels(decode_image(content, min_side)).to(device, non_blocking=True)


def pil_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB picture as a uint8 tensor (3, height, width), a view of PIL's buffer."""
    with warnings.catch_warnings():
        # The array is PIL's read-only buffer: nothing writes to it (the resize makes a new one).
        warnings.simplefilter("ignore", UserWarning)
        pixels = torch.from_numpy(np.asarray(image.convert("RGB") if image.mode != "RGB" else image))
    return pixels.permute(2, 0, 1)


def decode_jpeg_on(content: bytes, min_side: int, device: torch.device) -> torch.Tensor | None:
    """A JPEG decoded by torchvision on ``device`` (nvJPEG on a GPU), or None to use PIL instead.

    None for anything else than a JPEG PIL would not draft (the header is read by PIL, so a bomb
    or a format outside ACCEPTED_FORMATS is refused the same way), and for a JPEG torchvision
    cannot decode cleanly: PIL then decodes it or says why not, in its own words.
    ``torchvision.io``'s decoders are deprecated since torchvision 0.29 (superseded by
    TorchCodec, which Ferry does not depend on); on the CPU PIL is as fast, so only a device
    uses them.
    """
    header = _header(content) if content else None
    if header is None or header.format != "JPEG" or _drafts(header.size, min_side):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # libjpeg's warnings (a truncated file, corrupt data) would yield a partial picture.
            warnings.simplefilter("error", UserWarning)
            data = torch.frombuffer(bytearray(content), dtype=torch.uint8)
            decoded: torch.Tensor = decode_jpeg(
                data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True
            )
            return decoded
    except (RuntimeError, UserWarning):
        return None


def _header(content: bytes) -> Image.Image | None:
    """The image's header as PIL reads it (nothing decoded), or None when PIL cannot read it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(content), formats=ACCEPTED_FORMATS)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None  # decode_image raises the error the caller sees


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side, center-crop, scale to [0, 1], then normalise per channel.

    The defaults are what efficientnet-lite's TF-Lite weights expect: bicubic 256, crop 224,
    (x - 0.5) / 0.5.

    Two halves, run where each is cheapest: ``pixels`` (decode, resize, crop: uint8, one image,
    in a decode thread) and ``normalize`` (to float, scaled and shifted: one vectorised op over
    the whole batch, in the batch thread). The resize is torch's antialiased bicubic on uint8
    (vectorised), which matches PIL's bicubic to within one intensity level.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"crop ({self.crop}) must be between 1 and resize ({self.resize})")

    def pixels(self, content: bytes, device: torch.device = CPU) -> torch.Tensor:
        """Decodes, resizes and crops ``content``: uint8 (crop, crop, 3), channels last.

        Raises:
            InvalidImage: The bytes are not an accepted image.
        """
        return self.resized(decode_pixels(content, min_side=2 * self.resize, device=device))

    def resized(self, image: torch.Tensor) -> torch.Tensor:
        """A uint8 (3, height, width) picture resized and center-cropped: uint8 (crop, crop, 3)."""
        height, width = image.shape[-2:]
        if width <= height:
            size = (max(1, int(self.resize * height / width)), self.resize)
        else:
            size = (self.resize, max(1, int(self.resize * width / height)))
        resized: torch.Tensor = functional.resize(
            image, list(size), InterpolationMode.BICUBIC, antialias=True
        )
        # Same rounding as torchvision's CenterCrop, so results match its transforms.
        top = round((size[0] - self.crop) / 2.0)
        left = round((size[1] - self.crop) / 2.0)
        cropped = resized[:, top : top + self.crop, left : left + self.crop]
        # Height, width, channels: a batch of these stacked is channels_last NCHW without a copy.
        return cropped.permute(1, 2, 0).contiguous()

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """A uint8 (N, crop, crop, 3) batch as float (N, 3, crop, crop), channels_last, normalised."""
        scale, shift = _affine(self.mean, self.std, self.crop, batch.device)
        # (x / 255 - mean) / std as one multiply-add against whole-image factors: broadcasting a
        # 3-element vector over the interleaved channels ran 3x slower (not vectorised).
        return torch.addcmul(shift, batch.float(), scale).permute(0, 3, 1, 2)

    def decode(self, content: bytes) -> npt.NDArray[np.float32]:
        """Decodes and transforms ``content``: float32 CHW (3, crop, crop), ready as a tensor input.

        Raises:
            InvalidImage: The bytes are not an accepted image.
        """
        return self._as_array(self.pixels(content))

    def __call__(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """Returns a float32 CHW array of shape (3, crop, crop)."""
        return self._as_array(self.resized(pil_pixels(image)))

    def _as_array(self, pixels: torch.Tensor) -> npt.NDArray[np.float32]:
        normalized = self.normalize(pixels.unsqueeze(0))[0].contiguous()
        return np.ascontiguousarray(normalized.cpu().numpy(), dtype=np.float32)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one transformed image (channels, height, width)."""
        return (3, self.crop, self.crop)


@functools.cache
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], side: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel factors (side, side, 3) of the normalisation x * scale + shift, on ``device``."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device)
    return scale.expand(side, side, 3).contiguous(), shift.expand(side, side, 3).contiguous()
