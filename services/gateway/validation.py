"""Checks of public requests: pure functions that return clean values or raise InvalidArgument.

Every message says what was wrong and what is accepted, because it reaches the user verbatim
(as the gRPC status message, or the ``message`` of the REST error body).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from ferry.types.v1 import types_pb2
from services.common.errors import InvalidArgument
from services.common.ids import parse_name

MODEL_PREFIX = "models/"
EXAMPLE_MODEL = "models/efficientnet-lite0"
MAX_REQUEST_ID_CHARS = 128

# Model ids are short slugs such as "efficientnet-lite0"; anything else cannot be served.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def model_id(name: str, field: str = "model") -> str:
    """Normalises ``"models/{id}"`` or a bare ``"{id}"`` to the model id.

    Args:
        name: the model as the request gave it.
        field: the request field it came from, named in the error.

    Raises:
        InvalidArgument: the name is empty or not of that form.
    """
    raw = name.removeprefix(MODEL_PREFIX)
    if not _MODEL_ID.fullmatch(raw):
        shown = repr(name) if name else "empty"
        raise InvalidArgument(
            f"{field} is {shown}; expected 'models/<model>' or '<model>' (letters, digits, '.', '_', '-'), "
            f"for example '{EXAMPLE_MODEL}'",
            reason="INVALID_MODEL_NAME",
            metadata={"field": field},
        )
    return raw


def model_name(model: str) -> str:
    """The resource name ``"models/{id}"`` of a model id."""
    return f"{MODEL_PREFIX}{model}"


def top_k(value: int, default: int, maximum: int) -> int:
    """Returns the number of classes to return: ``default`` for 0, else ``value`` within 1..maximum.

    Raises:
        InvalidArgument: ``value`` is negative or above ``maximum``.
    """
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise InvalidArgument(
            f"top_k is {value}; it must be between 1 and {maximum} (0 means {default})",
            reason="INVALID_TOP_K",
            metadata={"top_k": str(value), "max_top_k": str(maximum)},
        )
    return value


def image_content(image: types_pb2.Image | None, max_bytes: int, where: str = "image") -> bytes:
    """Returns the encoded image bytes, checked to be present and at most ``max_bytes`` long.

    Args:
        image: the image, or None when the request had none.
        max_bytes: the largest accepted image.
        where: what the image is called in the error, for example ``"inputs[3].image"``.

    Raises:
        InvalidArgument: no image, an empty one, or one over the limit.
    """
    if image is None or not image.content:
        raise InvalidArgument(
            f"{where} is missing or empty; send the encoded image file (JPEG, PNG, WebP, BMP or GIF) "
            f"in {where}.content (base64 in JSON)",
            reason="MISSING_IMAGE",
            metadata={"field": where},
        )
    size = len(image.content)
    if size > max_bytes:
        raise InvalidArgument(
            f"{where} is {size} bytes; the limit is {max_bytes} bytes ({_mib(max_bytes)}); "
            "send a smaller or more compressed image",
            reason="IMAGE_TOO_LARGE",
            metadata={"field": where, "size_bytes": str(size), "max_bytes": str(max_bytes)},
        )
    return image.content


def job_inputs(inputs: Sequence[types_pb2.Input], max_items: int, max_image_bytes: int) -> None:
    """Checks a job's inputs: 1 to ``max_items`` of them, each with an image within the limit.

    Raises:
        InvalidArgument: no inputs, too many, or an input (named by index) without a good image.
    """
    if not inputs:
        raise InvalidArgument(
            "a job needs at least one input; send inputs: [{image: {content: ...}}, ...]",
            reason="NO_INPUTS",
        )
    if len(inputs) > max_items:
        raise InvalidArgument(
            f"a job takes at most {max_items} inputs and this one has {len(inputs)}; "
            "split it into several jobs",
            reason="TOO_MANY_INPUTS",
            metadata={"inputs": str(len(inputs)), "max_inputs": str(max_items)},
        )
    for index, item in enumerate(inputs):
        image = item.image if item.WhichOneof("kind") == "image" else None
        image_content(image, max_image_bytes, where=f"inputs[{index}].image")


def request_id(value: str) -> str:
    """Checks a client's idempotency key (empty means none).

    Raises:
        InvalidArgument: the key is longer than MAX_REQUEST_ID_CHARS.
    """
    if len(value) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(
            f"request_id is {len(value)} characters; the limit is {MAX_REQUEST_ID_CHARS} "
            "(a UUID is a good request_id)",
            reason="REQUEST_ID_TOO_LONG",
            metadata={"max_chars": str(MAX_REQUEST_ID_CHARS)},
        )
    return value


def resource_id(name: str, collection: str) -> uuid.UUID:
    """Parses ``"{collection}/{uuid}"`` into the id (see ``services.common.ids.parse_name``).

    Raises:
        InvalidArgument: the name is not of that form.
    """
    return parse_name(name, collection)


def _mib(size: int) -> str:
    mib = size / (1024 * 1024)
    return f"{mib:g} MiB" if mib == int(mib) else f"about {mib:.1f} MiB"
