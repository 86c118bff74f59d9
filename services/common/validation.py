"""Checks of public requests: pure functions that return clean values or raise InvalidArgument.

Every message says what was wrong and what is accepted, because it reaches the user verbatim
(as the gRPC status message, or the ``message`` of the REST error body).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Sequence
from datetime import timedelta

from google.protobuf import struct_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ferry.models.v1 import model_service_pb2
from ferry.types.v1 import types_pb2
from services.common import limits, nesting, notebooks
from services.common.errors import InvalidArgument
from services.common.ids import parse_name

MODEL_PREFIX = "models/"
EXAMPLE_MODEL = "models/efficientnet-lite0"

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


_MODEL_VERSION = re.compile(r"[A-Za-z0-9._-]{1,64}")


def model_version(version: str, model: str, field: str = "version", required: bool = False) -> str:
    """Checks a model version as a request gave it (``""``: the model's default, unless ``required``);
    ``model``: the model's id, so the message can say where its versions are listed.

    Raises:
        InvalidArgument: INVALID_MODEL_VERSION, naming the field.
    """
    if (not version and not required) or _MODEL_VERSION.fullmatch(version):
        return version
    shown = repr(version) if version else "empty"
    raise InvalidArgument(
        f"{field} is {shown}; expected a version of the model such as '2' (1 to 64 letters, digits, "
        f"'.', '_', '-'); GET /v1/models/{model} lists its versions",
        reason="INVALID_MODEL_VERSION",
        metadata={"field": field},
    )


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
            metadata={"field": "top_k", "top_k": str(value), "max_top_k": str(maximum)},
        )
    return value


def image_content(
    image: types_pb2.Image | None, max_bytes: int, where: str = "image", send_as: str = ""
) -> bytes:
    """Returns the encoded image bytes, checked to be present and at most ``max_bytes`` long.

    Args:
        image: the image, or None when the request had none.
        max_bytes: the largest accepted image.
        where: what the image is called in the error, for example ``"inputs[3].image"``.
        send_as: where the caller puts an image in its protocol; default ``{where}.content``.

    Raises:
        InvalidArgument: no image, an empty one, or one over the limit.
    """
    if image is None or not image.content:
        raise InvalidArgument(
            f"{where} is missing or empty; send the encoded image file "
            f"(JPEG, PNG, WebP, AVIF, HEIC, BMP or GIF) {send_as or f'in {where}.content (base64 in JSON)'}",
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


#: The public PredictRequest's input fields, in the order they are named in errors.
PREDICT_INPUT_FIELDS = ("image", "text", "payload", "tensor")


def predict_input(request: model_service_pb2.PredictRequest, max_bytes: int) -> types_pb2.Input:
    """The one input of a Predict: exactly one of image, text, payload or tensor, within limits.

    Args:
        request: the public request.
        max_bytes: the largest image, and the largest payload or tensor once serialized.

    Raises:
        InvalidArgument: none or several set, or the one set is empty or too large.
    """
    present = [name for name in PREDICT_INPUT_FIELDS if request.HasField(name)]
    if len(present) != 1:
        shown = " and ".join(present) if present else "none"
        raise InvalidArgument(
            f"a Predict takes exactly one of image, text, payload or tensor and this one has {shown}; "
            "for example {image: {content: <base64>}} or {text: {content: 'a sentence'}}",
            reason="MISSING_IMAGE" if not present else "INVALID_INPUT",
            metadata={"field": "image" if not present else present[1]},
        )
    field = present[0]
    if field == "payload":  # before it is copied: a copy re-parses it, and protobuf has a depth limit
        nesting.check_struct(request.payload, field)
    if field == "image":  # the bytes only: an image by URL was fetched into content already
        return types_pb2.Input(image=types_pb2.Image(content=image_content(request.image, max_bytes)))
    return input_item(types_pb2.Input(**{field: getattr(request, field)}), max_bytes)


def input_item(item: types_pb2.Input, max_bytes: int, where: str = "") -> types_pb2.Input:
    """Checks one input of any kind, as Predict checks its one: a kind set, present, within limits.

    Used for each input of a BatchPredict and of a job, and for each line of a job's manifest, so
    every path refuses the same inputs with the same reasons. Whether the model takes that kind
    is not known here: inference says so per input (INVALID_ARGUMENT naming the kinds it takes).

    Args:
        item: the input.
        max_bytes: the largest image, and the largest payload or tensor once serialized.
        where: what the input is called in errors, for example ``"inputs[3]"``; empty for a
            Predict, whose fields are named bare (``"text.content"``).

    Raises:
        InvalidArgument: MISSING_INPUT (no kind set), MISSING_IMAGE, IMAGE_TOO_LARGE,
            MISSING_TEXT, TEXT_TOO_LONG, TOO_MANY_LABELS, INPUT_TOO_LARGE or NESTING_TOO_DEEP.
    """
    kind = item.WhichOneof("kind")
    if kind is None:
        shown = where or "the input"
        raise InvalidArgument(
            f"{shown} is empty; send one of image, text, payload or tensor, for example "
            "{image: {content: <base64>}} or {text: {content: 'a sentence'}}",
            reason="MISSING_INPUT",
            metadata={"field": where or "input"},
        )
    field = f"{where}.{kind}" if where else kind
    if kind == "image":
        image_content(item.image, max_bytes, where=field)
    elif kind == "text":
        text(item.text, where=field)
    else:
        _serialized_size(getattr(item, kind), field, max_bytes)
        if kind == "payload":
            nesting.check_struct(item.payload, field)
    return item


def text(value: types_pb2.Text, where: str = "text") -> types_pb2.Text:
    """Checks a text input: non-empty, within the text limits.

    Raises:
        InvalidArgument: an empty or too long text, or too many candidate labels.
    """
    if not value.content.strip():
        raise InvalidArgument(
            f"{where}.content is empty; send the text to embed or classify",
            reason="MISSING_TEXT",
            metadata={"field": f"{where}.content"},
        )
    if len(value.content) > limits.MAX_TEXT_CHARS:
        raise InvalidArgument(
            f"{where}.content has {len(value.content)} characters; the limit is {limits.MAX_TEXT_CHARS}",
            reason="TEXT_TOO_LONG",
            metadata={"field": f"{where}.content", "max_chars": str(limits.MAX_TEXT_CHARS)},
        )
    if len(value.candidate_labels) > limits.MAX_CANDIDATE_LABELS:
        raise InvalidArgument(
            f"{where}.candidate_labels has {len(value.candidate_labels)} labels; the limit is "
            f"{limits.MAX_CANDIDATE_LABELS}",
            reason="TOO_MANY_LABELS",
            metadata={"field": f"{where}.candidate_labels", "max_labels": str(limits.MAX_CANDIDATE_LABELS)},
        )
    return value


def _serialized_size(message: Message, where: str, max_bytes: int) -> None:
    size = message.ByteSize()
    if size > max_bytes:
        raise InvalidArgument(
            f"{where} is {size} bytes; the limit is {max_bytes} bytes ({_mib(max_bytes)})",
            reason="INPUT_TOO_LARGE",
            metadata={"field": where, "size_bytes": str(size), "max_bytes": str(max_bytes)},
        )


def notebook_parameters(parameters: struct_pb2.Struct) -> struct_pb2.Struct:
    """Checks a notebook job's parameters: at most MAX_PARAMETERS_BYTES, nested at most MAX_JSON_DEPTH,
    each named as a Python variable (papermill assigns them in the notebook's code).

    Raises:
        InvalidArgument: INPUT_TOO_LARGE or NESTING_TOO_DEEP, naming ``parameters``;
            INVALID_NOTEBOOK_JOB naming the first parameter that is no Python variable name.
    """
    bad = notebooks.bad_parameter_names(parameters.fields)
    if bad:
        raise InvalidArgument(
            f"parameter name {bad[0][:100]!r} is not a Python variable name (letters, digits and _,"
            " not starting with a digit, not a keyword such as class); papermill assigns each"
            " parameter in the notebook as name = value: use the names of its parameters cell",
            reason="INVALID_NOTEBOOK_JOB",
            metadata={"field": "parameters", "parameter": bad[0][:100]},
        )
    _serialized_size(parameters, "parameters", limits.MAX_PARAMETERS_BYTES)
    nesting.check_struct(parameters, "parameters")
    return parameters


def job_inputs(inputs: Sequence[types_pb2.Input], max_items: int, max_bytes: int) -> None:
    """Checks a job's inputs: 1 to ``max_items`` of them, each one a good input (``input_item``).

    Raises:
        InvalidArgument: no inputs, too many, or an input (named by index) that is empty,
            invalid or too large.
    """
    if not inputs:
        raise InvalidArgument(
            "a job needs at least one input; send inputs: [{image: {content: ...}}, ...] "
            "or [{text: {content: ...}}, ...]",
            reason="NO_INPUTS",
            metadata={"field": "inputs"},
        )
    if len(inputs) > max_items:
        raise InvalidArgument(
            f"a job takes at most {max_items} inputs and this one has {len(inputs)}; "
            "split it into several jobs",
            reason="TOO_MANY_INPUTS",
            metadata={"field": "inputs", "inputs": str(len(inputs)), "max_inputs": str(max_items)},
        )
    for index, item in enumerate(inputs):
        input_item(item, max_bytes, where=f"inputs[{index}]")


def request_id(value: str, field: str = "request_id") -> str:
    """Checks a client's idempotency key (empty means none); ``field`` names it in a refusal
    (ModelInfer's ``id`` is one too: it names the call's records).

    Raises:
        InvalidArgument: the key is longer than limits.MAX_REQUEST_ID_CHARS, or holds a NUL
            character (a job keeps its request_id, and Postgres text cannot hold one).
    """
    if "\x00" in value:
        raise InvalidArgument(
            f"{field} holds a NUL character (U+0000); send printable text (a UUID is a good {field})",
            reason="INVALID_REQUEST_ID",
            metadata={"field": field},
        )
    if len(value) > limits.MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(
            f"{field} is {len(value)} characters; the limit is {limits.MAX_REQUEST_ID_CHARS} "
            f"(a UUID is a good {field})",
            reason="REQUEST_ID_TOO_LONG",
            metadata={"field": field, "max_chars": str(limits.MAX_REQUEST_ID_CHARS)},
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


DEFAULT_STATS_WINDOW = "1h"
MAX_STATS_WINDOW = timedelta(days=90)
_WINDOW = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_WINDOW_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def stats_window(value: str) -> tuple[str, timedelta]:
    """Parses a stats window such as ``"15m"``, ``"1h"``, ``"24h"`` or ``"7d"``; empty means 1h.

    Returns:
        The window as given (or the default) and its length.

    Raises:
        InvalidArgument: not a positive number and one of s, m, h, d, or longer than 90 days.
    """
    text = value or DEFAULT_STATS_WINDOW
    found = _WINDOW.fullmatch(text)
    length = timedelta(**{_WINDOW_UNITS[found[2]]: int(found[1])}) if found else None
    if length is None or length > MAX_STATS_WINDOW:
        raise InvalidArgument(
            f"window is {value!r}; expected a whole number and a unit (s, m, h or d) of at most 90 days, "
            "for example '15m', '1h', '24h' or '7d'",
            reason="INVALID_WINDOW",
            metadata={"field": "window"},
        )
    return text, length


def min_score(value: float) -> float:
    """Checks a minimum top-class score (0 means no minimum).

    Raises:
        InvalidArgument: outside 0..1 (or not a number).
    """
    if not 0.0 <= value <= 1.0:
        raise InvalidArgument(
            f"min_score is {value:g}; it must be between 0 and 1 (a class probability)",
            reason="INVALID_MIN_SCORE",
            metadata={"field": "min_score"},
        )
    return value


def label(value: str) -> str:
    """Checks a label filter.

    Raises:
        InvalidArgument: longer than limits.MAX_LABEL_CHARS, or holding a NUL character (no label
            has one: Postgres text cannot hold it, and store failed with a 500).
    """
    if len(value) > limits.MAX_LABEL_CHARS or "\x00" in value:
        raise InvalidArgument(
            f"label is {len(value)} characters; class labels are at most {limits.MAX_LABEL_CHARS}, "
            "with no NUL character (U+0000)",
            reason="INVALID_LABEL",
            metadata={"field": "label"},
        )
    return value


def time_range(start: Timestamp | None, end: Timestamp | None) -> None:
    """Checks that a time range's start (if any) comes before its end (if any).

    Raises:
        InvalidArgument: a time outside years 1 to 9999 (or with nanos outside 0..999,999,999), which
            no timestamp can be (store failed with a 500), or start_time not before end_time.
    """
    for field, value in (("start_time", start), ("end_time", end)):
        if value is None:
            continue
        try:
            value.ToDatetime()
        except (ValueError, OverflowError):
            raise InvalidArgument(
                f"{field} is {value.seconds} s and {value.nanos} ns from 1970; a time is between "
                "0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z",
                reason="INVALID_TIME_RANGE",
                metadata={"field": field},
            ) from None
    if start is not None and end is not None and start.ToNanoseconds() >= end.ToNanoseconds():
        raise InvalidArgument(
            f"start_time ({start.ToJsonString()}) must be before end_time ({end.ToJsonString()})",
            reason="INVALID_TIME_RANGE",
            metadata={"field": "start_time"},
        )


def enum_value(value: int, enum: EnumTypeWrapper, field: str) -> int:
    """Checks that ``value`` is a known number of ``enum`` (0, unspecified, means any).

    Raises:
        InvalidArgument: an unknown number.
    """
    if value not in enum.values():
        known = ", ".join(enum.keys()[1:])
        raise InvalidArgument(
            f"{field} is {value}; expected one of {known}", reason="INVALID_ENUM", metadata={"field": field}
        )
    return value


def manifest_items(count: int, max_items: int, name: str) -> None:
    """Refuses an upload that makes more items than a job takes (its own limit, upload_max_entries,
    may be above a job's, max_job_items).

    Raises:
        InvalidArgument: TOO_MANY_INPUTS.
    """
    if count > max_items:
        raise InvalidArgument(
            f"{name} makes {count} items and a job takes at most {max_items}; split it into several uploads",
            reason="TOO_MANY_INPUTS",
            metadata={"field": "manifest", "inputs": str(count), "max_inputs": str(max_items)},
        )


def some_input_taken(model: str, takes: Collection[str], kinds: Collection[str], count: int) -> None:
    """Refuses a job none of whose ``count`` inputs (of ``kinds``) ``model`` takes (texts for an
    image model): every item would only fail. A job with some it takes runs, and the others fail
    one by one; a model that does not say what it takes (not serving yet) is left to inference.

    Raises:
        InvalidArgument: UNSUPPORTED_INPUT, naming what the model takes and what the job holds.
    """
    if not takes or set(kinds) & set(takes):
        return
    raise InvalidArgument(
        f"{model} takes {' or '.join(sorted(takes))} inputs and none of this job's {count} "
        f"inputs is one (they are {', '.join(sorted(kinds))}); name a model that takes them "
        "(GET /v1/models lists each model's input_kinds)",
        reason="UNSUPPORTED_INPUT",
        metadata={"field": "model", "model": model, "input_kinds": ",".join(sorted(takes))},
    )
