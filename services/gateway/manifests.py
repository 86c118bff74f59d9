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

Everything is resolved here, before the job is recorded, so a bad line is an INVALID_ARGUMENT
naming its line number and no job is created; the items then go out like inline inputs (each
published once, under its msg id). A zip entry or URL named by many lines is read or fetched once,
and every item built from it shares the bytes (``ManifestInputs`` builds each Input when sent).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import zipfile
from collections.abc import Sequence
from typing import Any, overload

from google.protobuf import json_format

from ferry.types.v1 import types_pb2
from services.common.errors import InvalidArgument, NotFound
from services.gateway import validation
from services.gateway.fetcher import MAX_CONCURRENT_FETCHES, Fetcher
from services.gateway.uploads import ZIP, Stored, Uploads, zip_files


class ManifestInputs(Sequence[types_pb2.Input]):
    """A job's inputs: images as shared bytes, one ``Input`` built per access (not held 2,000
    times), and the other kinds as the ``Input`` each line made."""

    def __init__(self, items: list[bytes | types_pb2.Input]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> types_pb2.Input: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[types_pb2.Input]: ...
    def __getitem__(self, index: int | slice) -> types_pb2.Input | Sequence[types_pb2.Input]:
        if isinstance(index, slice):
            return ManifestInputs(self._items[index])
        found = self._items[index]
        if isinstance(found, types_pb2.Input):
            return found
        return types_pb2.Input(image=types_pb2.Image(content=found))


class _Resolver:
    """Turns one upload's entries into image bytes, reading each zip and fetching each URL once."""

    def __init__(self, uploads: Uploads, tenant: str, fetcher: Fetcher, max_image_bytes: int) -> None:
        self._uploads = uploads
        self._tenant = tenant
        self._fetcher = fetcher
        self.max_image_bytes = max_image_bytes
        """The largest image, and the largest payload or tensor once serialized."""
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._entries: dict[tuple[str, str], bytes] = {}

    async def zip_of(self, name: str, where: str) -> zipfile.ZipFile:
        if name not in self._zips:
            try:
                stored = await self._uploads.read(self._tenant, name)
            except NotFound as err:
                raise NotFound(
                    f"{where}: {err.message}", reason="UPLOAD_NOT_FOUND", metadata={"upload": name}
                ) from None
            if stored.kind != ZIP:
                raise _bad(where, f"{name} is a manifest, not a zip; name a file of a zip upload")
            self._zips[name] = zipfile.ZipFile(io.BytesIO(stored.data))
        return self._zips[name]

    async def entry(self, upload: str, entry: str, where: str) -> bytes:
        key = (upload, entry)
        if key not in self._entries:
            archive = await self.zip_of(upload, where)
            try:
                info = archive.getinfo(entry)
            except KeyError:
                raise NotFound(
                    f"{where}: {upload} has no file {entry!r}",
                    reason="UPLOAD_NOT_FOUND",
                    metadata={"upload": upload, "entry": entry},
                ) from None
            if info.file_size > self.max_image_bytes:
                raise _too_large(where, info.file_size, self.max_image_bytes)
            self._entries[key] = self.checked(archive.read(info), where)
        return self._entries[key]

    def checked(self, data: bytes, where: str) -> bytes:
        return validation.image_content(types_pb2.Image(content=data), self.max_image_bytes, where)

    async def fetch_all(self, urls: dict[str, str]) -> dict[str, bytes]:
        """Fetches each URL once (``urls``: URL to the line that first named it)."""
        slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)

        async def one(url: str, where: str) -> tuple[str, bytes]:
            async with slots:
                return url, await self._fetcher.fetch(url, where)

        return dict(await asyncio.gather(*(one(url, where) for url, where in urls.items())))


async def expand(
    uploads: Uploads, tenant: str, name: str, fetcher: Fetcher, max_items: int, max_image_bytes: int
) -> ManifestInputs:
    """The inputs of the upload ``name``: a zip's files, or a manifest's lines resolved to bytes.

    Raises:
        InvalidArgument: INVALID_MANIFEST (a line, by number, is not a valid item), TOO_MANY_INPUTS,
            an image too large or a URL refused (naming the line).
        NotFound: UPLOAD_NOT_FOUND, the upload or a zip file a line names.
    """
    resolver = _Resolver(uploads, tenant, fetcher, max_image_bytes)
    stored = await uploads.read(tenant, name)
    if stored.kind == ZIP:
        files = zip_files(await resolver.zip_of(name, name))
        _check_count(len(files), max_items, name)
        return ManifestInputs([await resolver.entry(name, f, f"{name}/{f}") for f in files])
    return await _expand_lines(resolver, stored, name, max_items)


async def _expand_lines(resolver: _Resolver, stored: Stored, name: str, max_items: int) -> ManifestInputs:
    lines = [(n, line) for n, line in enumerate(stored.data.decode("utf-8").splitlines(), 1) if line.strip()]
    _check_count(len(lines), max_items, name)
    # Per line: an image's bytes, another kind's Input, or an image's URL (fetched below).
    images: list[bytes | types_pb2.Input | str] = []
    urls: dict[str, str] = {}
    for number, line in lines:
        where = f"{name} line {number}"
        kind, value = _parse_line(line, where)
        if kind == "content":
            images.append(resolver.checked(_base64(value, where), where))
        elif kind != "image":
            images.append(_other_input(value, resolver.max_image_bytes, where))
        elif value.startswith("uploads/"):
            upload, _, entry = value.partition("/")[2].partition("/")
            if not entry:
                raise _bad(where, f"{value!r} names no file; write uploads/<id>/<file in the zip>")
            images.append(await resolver.entry(f"uploads/{upload}", entry, where))
        elif value.startswith(("http://", "https://")):
            urls.setdefault(value, where)
            images.append(value)
        else:
            raise _bad(where, f'"image" is {value!r}: neither uploads/<id>/<file> nor an http(s) URL')
    fetched = await resolver.fetch_all(urls)
    return ManifestInputs([fetched[i] if isinstance(i, str) else i for i in images])


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
        item: Any = json.loads(line)
    except json.JSONDecodeError as err:
        raise _bad(where, f"not JSON ({err.msg} at column {err.colno})") from None
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
    if count > max_items:
        raise InvalidArgument(
            f"{name} makes {count} items and a job takes at most {max_items}; split it into several uploads",
            reason="TOO_MANY_INPUTS",
            metadata={"field": "manifest", "inputs": str(count), "max_inputs": str(max_items)},
        )


def _bad(where: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {why}", reason="INVALID_MANIFEST", metadata={"field": "manifest"})


def _too_large(where: str, size: int, limit: int) -> InvalidArgument:
    """IMAGE_TOO_LARGE from a zip file's declared size, before it is unpacked (a zip bomb is not)."""
    return InvalidArgument(
        f"{where} is {size} bytes; the limit is {limit} bytes; send a smaller or more compressed image",
        reason="IMAGE_TOO_LARGE",
        metadata={"field": where, "size_bytes": str(size), "max_bytes": str(limit)},
    )
