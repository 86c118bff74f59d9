"""Image decoding and the resize/crop/normalise transforms image models were trained with.

Everything here is synchronous: callers run it in a thread pool so that a big image never stalls
the event loop. Decoding and resizing produce uint8 pixels; the float conversion and
normalisation run once per batch (``ImageTransform.normalize``), where they are one vectorised op.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pi_heif
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode, functional

#: PIL format names accepted as input, as the contract (ferry.types.v1.Image) lists them. HEIF is
#: what phones save photos as (an iPhone's HEIC); pi-heif decodes it (libheif and libde265, no
#: encoder), AVIF is Pillow's own.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "HEIF", "BMP", "GIF")
ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP, AVIF, HEIC/HEIF, BMP or GIF"
pi_heif.register_heif_opener()
CPU = torch.device("cpu")


def _torchvision_jpeg_decoder() -> Callable[[torch.Tensor, int, bool], torch.Tensor] | None:
    """torchvision's CPU JPEG decoder (libjpeg-turbo): (data, mode, apply_exif_orientation) -> uint8
    CHW; None where torchvision was built without its image library (PIL then decodes every JPEG)."""
    try:
        decoder: Callable[[torch.Tensor, int, bool], torch.Tensor] = torch.ops.image.decode_jpeg
    except (AttributeError, RuntimeError):
        return None
    return decoder


_decode_jpeg_cpu = _torchvision_jpeg_decoder()
# Once, at import: ``warnings.catch_warnings`` around each call is not thread-safe (it swaps the
# process's filter list while other decode threads run), and the notice says nothing per image.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)


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


#: PIL's modes of 16-bit greyscale (a PNG from a scanner, a microscope, a raw converter).
_SIXTEEN_BIT_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. PIL's own ``convert`` clips 16-bit greyscale to 255: a 16-bit PNG
    of a cat became a white picture, classified without an error ("nematode")."""
    if image.mode in _SIXTEEN_BIT_GREY:
        levels = np.asarray(image).astype(np.uint32) >> 8  # 0..65535 to 0..255
        image = Image.fromarray(levels.clip(0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


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
            return opened if opened.mode == "RGB" else _rgb(opened)
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

    A JPEG that ``decode_image`` would not draft is decoded by torchvision (``decode_jpeg_on``:
    libjpeg-turbo on the CPU, nvJPEG on a GPU); everything else is decoded by PIL on the CPU.

    Raises:
        InvalidImage: When the bytes are empty, not one of ACCEPTED_FORMATS, or corrupt.
    """
    if (decoded := decode_jpeg_on(content, min_side, device)) is not None:
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
    """A JPEG decoded by torchvision on ``device``, or None to use PIL instead.

    On the CPU this is the same libjpeg-turbo as PIL's, pixel for pixel, for less: it writes RGB
    straight into the tensor, where PIL decodes into its 4-byte RGBX buffer and ``np.asarray``
    then packs a copy (docs/benchmarks.md, *Decode + preprocess, session 8*). On a GPU it is
    nvJPEG. None for anything else than a JPEG PIL would not draft (the header is read by PIL, so
    a bomb or a format outside ACCEPTED_FORMATS is refused the same way), for a JPEG torchvision
    cannot decode (a truncated file: PIL then decodes it or says why not, in its own words), and
    on a GPU for a JPEG whose EXIF turns it (nvJPEG does not apply the orientation).
    ``torchvision.io``'s decoders are deprecated since torchvision 0.29 (superseded by
    TorchCodec, which Ferry does not depend on); PIL stays the fallback for every image.
    """
    header = _header(content) if content else None
    if header is None or header.format != "JPEG" or _drafts(header.size, min_side):
        return None
    on_cpu = device.type == "cpu"
    if on_cpu and _decode_jpeg_cpu is None:
        return None
    if not on_cpu and header.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        return None
    try:
        data = torch.frombuffer(bytearray(content), dtype=torch.uint8)
        if _decode_jpeg_cpu is not None and on_cpu:
            # The operator ``decode_jpeg`` calls on the CPU, without the wrapper's per-call usage
            # logging and deprecation warning: a tenth of a millisecond per image measured.
            return _decode_jpeg_cpu(data, ImageReadMode.RGB.value, True)
        decoded: torch.Tensor = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return decoded
    except RuntimeError:
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
        # Same rounding as torchvision's CenterCrop, so results match its transforms.
        top = round((size[0] - self.crop) / 2.0)
        left = round((size[1] - self.crop) / 2.0)
        if image.device.type == "cpu":
            resized = _resized_up_to(image, size, (top + self.crop, left + self.crop))
        else:  # torchvision casts to float where the device has no uint8 kernel
            resized = functional.resize(image, list(size), InterpolationMode.BICUBIC, antialias=True)
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


def _resized_up_to(image: torch.Tensor, size: tuple[int, int], until: tuple[int, int]) -> torch.Tensor:
    """Rows ``[0, until[0])`` and columns ``[0, until[1])`` of ``image`` resized to ``size``.

    Pixel for pixel what torchvision's antialiased bicubic resize to ``size`` gives there, without
    computing what the crop throws away past its bottom and right edges (a fifth of the cat's
    resize): each output pixel reads only the input within the filter's support of its centre,
    so the input is cut just past the last one read, and the scale is passed as the whole
    picture's, which the kernel would otherwise take from the cut input's size.
    """
    channels, height, width = image.shape
    rows = _read_up_to(height, size[0], until[0])
    columns = _read_up_to(width, size[1], until[1])
    # (1, C, H, W) that torch sees as channels_last (batch stride = numel): its vectorised uint8
    # kernel wants that layout, and both decoders give it (height, width, channels in memory).
    if image.stride() != (1, width * channels, channels):
        image = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    batch = image.as_strided((1, channels, height, width), (image.numel(), 1, width * channels, channels))
    resized: torch.Tensor = torch.ops.aten._upsample_bicubic2d_aa(
        batch[:, :, :rows, :columns], list(until), False, size[0] / height, size[1] / width
    )
    return resized[0]


def _read_up_to(length: int, resized: int, until: int) -> int:
    """How much of an input side of ``length`` the first ``until`` of ``resized`` outputs read.

    torch's antialiased bicubic reads, for output i, the inputs within ``support`` of the centre
    (i + 0.5) * scale, with support 2 * scale when shrinking and 2 when enlarging; one more on
    each side covers its rounding.
    """
    scale = length / resized
    support = 2.0 * max(scale, 1.0)
    return min(length, int(until * scale + support) + 2)
