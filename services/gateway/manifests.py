"""A job's items from an upload it names (``CreateJob.manifest = "uploads/{id}"``).

A zip upload makes one item per file, in name order. A JSONL manifest makes one item per
non-blank line, each a JSON object of one of these forms::

    {"image": "uploads/<id>/<entry>"}   a file of a zip upload (of the same tenant)
    {"image": "https://host/cat.jpg"}   fetched once, SSRF-safely, by the gateway's fetcher
    {"content": "<base64>"}             the image itself
    {"text": "a sentence"}              a text, for a text model (minilm: an embedding)
    {"text": "...", "candidate_labels": ["a", "b"]}   zero-shot classification of the text
    {"payload": {...}}                  a JSON object, for a JSON model (for example "agree")
    {"tensor": {"datatype": "FP32", "shape": [2], "fp32_contents": [1, 2]}}   a ferry.types.v1.Tensor

Texts, payloads and tensors are checked like a Predict's input (``validation.input_item``);
whether the model takes that kind is inference's to say, per item, as for every job input.

Every line is resolved before the job is recorded, so a bad line is an INVALID_ARGUMENT naming
its line number and no job is created. Images become claim checks, never bytes held for the
job: a zip's file is already its own object (``uploads.py``); an inline image or a fetched URL
is stored as one (``<tenant>/<upload>/line-<n>``, ``<tenant>/<upload>/url-<hash>``, the latter
charged to the tenant's upload quota) once, and every item naming it shares the reference. The
manifest itself is copied to a spool file and read a line at a time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import tempfile
from collections.abc import Iterator
from typing import Any

from google.protobuf import json_format
from nats.js.errors import NotFoundError, ObjectNotFoundError

from ferry.events.v1 import events_pb2
from ferry.types.v1 import types_pb2
from services.common import nesting
from services.common.errors import InvalidArgument, NotFound
from services.gateway import validation
from services.gateway.fetcher import MAX_CONCURRENT_FETCHES, Fetcher
from services.gateway.uploads import BUCKET, ZIP, Index, Uploads

#: One job item's input: an Input carried in the work message, or a claim check of an image.
JobInput = types_pb2.Input | events_pb2.ObjectRef
#: Lines longer than this are parsed in a worker thread, off the event loop.
_LONG_LINE = 64 * 1024


class _Resolver:
    """Turns one manifest's lines into job inputs, reading each upload's index once."""

    def __init__(self, uploads: Uploads, index: Index, fetcher: Fetcher, max_item_bytes: int) -> None:
        self._uploads = uploads
        self._index = index
        self._fetcher = fetcher
        self.max_item_bytes = max_item_bytes
        """The largest payload or tensor once serialized: it travels in the work message."""
        self._indexes: dict[str, Index] = {}

    async def entry(self, upload: str, entry: str, where: str) -> events_pb2.ObjectRef:
        """The claim check of the file ``entry`` of the zip upload ``upload``."""
        if upload not in self._indexes:
            try:
                self._indexes[upload] = await self._uploads.index(self._index.tenant, upload)
            except NotFound as err:
                raise NotFound(
                    f"{where}: {err.message}", reason="UPLOAD_NOT_FOUND", metadata={"upload": upload}
                ) from None
        found = self._indexes[upload]
        if found.kind != ZIP:
            raise _bad(where, f"{upload} is a manifest, not a zip; name a file of a zip upload")
        position = found.position_of(entry)
        if position is None:
            raise NotFound(
                f"{where}: {upload} has no file {entry!r}",
                reason="UPLOAD_NOT_FOUND",
                metadata={"upload": upload, "entry": entry},
            )
        return found.entry_ref(position)

    async def stored(self, suffix: str, data: bytes) -> events_pb2.ObjectRef:
        """Stores ``data`` as ``<index>/<suffix>`` unless it already is; its claim check."""
        name = f"{self._index.tenant}/{self._index.upload_id}/{suffix}"
        bucket = await self._uploads.store()
        try:
            await bucket.get_info(name)
        except (ObjectNotFoundError, NotFoundError):
            await bucket.put(name, data)
        return events_pb2.ObjectRef(bucket=BUCKET, name=name, size_bytes=len(data))

    def checked(self, data: bytes, where: str) -> bytes:
        """An inline image, checked against the image limit (it is stored, not sent in a message)."""
        limit = self._uploads.max_image_bytes
        return validation.image_content(types_pb2.Image(content=data), limit, where)

    async def fetch_all(self, urls: dict[str, str]) -> dict[str, events_pb2.ObjectRef]:
        """Fetches and stores each URL once (``urls``: URL to the line that first named it)."""
        slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)

        async def one(url: str, where: str) -> tuple[str, events_pb2.ObjectRef]:
            async with slots:
                data = await self._fetcher.fetch(url, where)
                suffix = "url-" + hashlib.sha256(url.encode()).hexdigest()[:32]
                await self._uploads.charge(self._index, suffix, len(data))
                return url, await self.stored(suffix, data)

        return dict(await asyncio.gather(*(one(url, where) for url, where in urls.items())))


async def expand(
    uploads: Uploads, tenant: str, name: str, fetcher: Fetcher, max_items: int, max_item_bytes: int
) -> list[JobInput]:
    """The inputs of the upload ``name``: a zip's files, or a manifest's lines, images as claim checks.

    Raises:
        InvalidArgument: INVALID_MANIFEST (a line, by number, is not a valid item), TOO_MANY_INPUTS,
            an image too large or a URL refused (naming the line).
        NotFound: UPLOAD_NOT_FOUND, the upload or a zip file a line names.
    """
    index = await uploads.index(tenant, name)
    if index.kind == ZIP:
        _check_count(len(index.entries), max_items, name)
        return [index.entry_ref(position) for position in range(len(index.entries))]
    _check_count(index.lines, max_items, name)
    resolver = _Resolver(uploads, index, fetcher, max_item_bytes)
    with tempfile.TemporaryFile(prefix="ferry-manifest-") as spooled:
        await uploads.read_manifest(index, spooled)
        spooled.seek(0)
        return await _expand_lines(resolver, _lines(spooled), name)


def _lines(spooled: Any) -> Iterator[tuple[int, str]]:
    """The spooled manifest's non-blank lines with their numbers, one at a time."""
    for number, raw in enumerate(spooled, 1):
        line = raw.decode("utf-8")
        if line.strip():
            yield number, line


async def _expand_lines(resolver: _Resolver, lines: Iterator[tuple[int, str]], name: str) -> list[JobInput]:
    # Per line: an image's claim check, another kind's Input, or an image's URL (fetched below).
    items: list[JobInput | str] = []
    urls: dict[str, str] = {}
    for number, line in lines:
        where = f"{name} line {number}"
        if len(line) > _LONG_LINE:
            kind, value = await asyncio.to_thread(_parse_line, line, where)
        else:
            kind, value = _parse_line(line, where)
        if kind == "content":
            data = resolver.checked(_base64(value, where), where)
            items.append(await resolver.stored(f"line-{number}", data))
        elif kind != "image":
            items.append(_other_input(value, resolver.max_item_bytes, where))
        elif value.startswith("uploads/"):
            upload, _, entry = value.partition("/")[2].partition("/")
            if not entry:
                raise _bad(where, f"{value!r} names no file; write uploads/<id>/<file in the zip>")
            items.append(await resolver.entry(f"uploads/{upload}", entry, where))
        elif value.startswith(("http://", "https://")):
            urls.setdefault(value, where)
            items.append(value)
        else:
            raise _bad(where, f'"image" is {value!r}: neither uploads/<id>/<file> nor an http(s) URL')
    fetched = await resolver.fetch_all(urls)
    return [fetched[i] if isinstance(i, str) else i for i in items]


#: A line's keys, by the kind of item it makes.
_LINE_KEYS = {
    "image": {"image"},
    "content": {"content"},
    "text": {"text", "candidate_labels"},
    "payload": {"payload"},
    "tensor": {"tensor"},
}
_LINE_FORMS = (
    '{"image": "..."}, {"content": "<base64>"}, {"text": "...", "candidate_labels": [...]} '
    '(labels optional), {"payload": {...}} or {"tensor": {...}}'
)


def _parse_line(line: str, where: str) -> tuple[str, Any]:
    """A line's kind (its main key) and the line: the string value of ``image`` or ``content``,
    else the whole object (a text's labels ride along with it)."""
    try:
        item: Any = nesting.loads(line)
    except nesting.TooDeep as err:  # however deep: Python's recursion limit is not a 500
        raise InvalidArgument(
            f"{where}: {err}, the limit; flatten it",
            reason=nesting.REASON,
            metadata={"field": "manifest", "max_depth": str(err.limit)},
        ) from None
    except json.JSONDecodeError as err:
        raise _bad(where, f"not JSON ({err.msg} at column {err.colno})") from None
    except ValueError as err:  # an integer too long to convert, for example
        raise _bad(where, f"not JSON that Ferry can read ({err})") from None
    kinds = [k for k in _LINE_KEYS if isinstance(item, dict) and k in item]
    if len(kinds) != 1 or not item.keys() <= _LINE_KEYS[kinds[0]]:
        raise _bad(where, f"expected one object of one of these forms: {_LINE_FORMS}")
    kind = kinds[0]
    if kind in ("image", "content"):
        value = item[kind]
        if not isinstance(value, str) or not value:
            raise _bad(where, f'"{kind}" must be a non-empty string')
        return kind, value
    return kind, item


def _other_input(line: dict[str, Any], max_bytes: int, where: str) -> types_pb2.Input:
    """The Input of a text, payload or tensor line, checked as a Predict's input is."""
    item = types_pb2.Input()
    if "text" in line:
        labels = line.get("candidate_labels", [])
        if not isinstance(line["text"], str):
            raise _bad(where, '"text" must be a string')
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise _bad(where, '"candidate_labels" must be a list of strings')
        item.text.content = line["text"]
        item.text.candidate_labels.extend(labels)
    elif "payload" in line:
        if not isinstance(line["payload"], dict):
            raise _bad(where, '"payload" must be a JSON object')
        item.payload.update(line["payload"])
    else:
        try:
            json_format.ParseDict(line["tensor"], item.tensor)
        except (json_format.ParseError, TypeError, ValueError) as err:
            raise _bad(where, f'"tensor" is not a ferry.types.v1.Tensor ({err})') from None
    try:
        return validation.input_item(item, max_bytes)
    except InvalidArgument as err:  # the same reason, said of this line of the request's manifest
        metadata = {**err.metadata, "field": "manifest"}
        raise InvalidArgument(f"{where}: {err.message}", reason=err.reason, metadata=metadata) from None


def _base64(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(where, '"content" is not valid base64') from None


def _check_count(count: int, max_items: int, name: str) -> None:
    # The upload's own limit (upload_max_entries) may be above a job's (max_job_items).
    if count > max_items:
        raise InvalidArgument(
            f"{name} makes {count} items and a job takes at most {max_items}; split it into several uploads",
            reason="TOO_MANY_INPUTS",
            metadata={"field": "manifest", "inputs": str(count), "max_inputs": str(max_items)},
        )


def _bad(where: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {why}", reason="INVALID_MANIFEST", metadata={"field": "manifest"})
