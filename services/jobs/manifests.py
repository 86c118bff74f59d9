"""A job's items from the upload it names (``CreateJob.manifest = "uploads/{id}"``), read by the jobs service.

A zip upload makes one item per file, in name order. A JSONL manifest makes one item per
non-blank line, each a JSON object of one of these forms::

    {"image": "uploads/<id>/<entry>"}   a file of a zip upload (of the same tenant)
    {"image": "https://host/cat.jpg"}   fetched once, SSRF-safely (``services.common.fetcher``)
    {"content": "<base64>"}             the image itself
    {"text": "a sentence"}              a text, for a text model (minilm: an embedding)
    {"text": "...", "candidate_labels": ["a", "b"]}   zero-shot classification of the text
    {"payload": {...}}                  a JSON object, for a JSON model (for example "agree")
    {"tensor": {"datatype": "FP32", "shape": [2], "fp32_contents": [1, 2]}}   a ferry.types.v1.Tensor

Any line may also hold ``"id"``, the user's own name for the item, which its record and result
line show (``Prediction.input_name``); without one an item is named by the zip file's name, the
image the line names, or the line's number (``services.common.input_names``).

Texts, payloads and tensors are checked like a Predict's input (``validation.input_item``);
whether the model takes that kind is inference's to say, per item, as for every job input.

The gateway records the job EXPANDING and asks for its expansion (``expander.py``), which copies
the manifest from the Object Store to a spool file and reads it here one line at a time, twice:

1. ``check``: every line is parsed and checked, the zip files it names are looked up, and its
   images become objects: an inline image is stored as ``<tenant>/<upload>/line-<n>``, a URL is
   fetched once and stored as ``<tenant>/<upload>/url-<hash>`` (charged to the tenant's upload
   quota). A line that is not a valid item raises, naming its number, before any item is queued.
   Storing is idempotent, so a redelivered expansion repeats this pass at little cost.
2. ``inputs``: the lines again, as job inputs in chunks for the expander to publish (images as
   claim checks, never bytes: the runner reads them when it runs the item).

Memory: one line (at most the upload's line limit), one chunk of inputs, the references of
the manifest's distinct URLs (at most a job's item limit), and the indexes of the zips its lines
name lately (``KeptIndexes``, at most ``KEPT_INDEX_ENTRIES`` files together).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import IO, Any, NamedTuple

from google.protobuf import json_format
from nats.js.errors import NotFoundError, ObjectNotFoundError

from ferry.events.v1 import events_pb2
from ferry.types.v1 import types_pb2
from services.common import input_names, limits, nesting, validation
from services.common.errors import InvalidArgument, NotFound
from services.common.fetcher import MAX_CONCURRENT_FETCHES, Fetcher
from services.common.upload_store import BUCKET, ZIP, Index, UploadStore

#: One job item's input: an Input carried in the work message, or a claim check of an image.
JobInput = types_pb2.Input | events_pb2.ObjectRef
#: Lines longer than this are parsed in a worker thread, off the event loop.
_LONG_LINE = 64 * 1024
#: Inline images stored at once while a manifest is checked (each is two NATS round trips).
_CONCURRENT_STORES = 8
#: Called with the number of the last line read, after each chunk of the check pass.
Progress = Callable[[int], Awaitable[None]]


class Chunk(NamedTuple):
    """Consecutive items of a job: their inputs, and the names their results show (``input_names``)."""

    inputs: list[JobInput]
    names: list[str]


async def chunks(
    uploads: UploadStore, request: events_pb2.JobExpansion, fetcher: Fetcher, chunk: int, progress: Progress
) -> AsyncIterator[Chunk]:
    """The inputs of the job ``request`` expands, checked first, then ``chunk`` at a time in order.

    Raises (before the first chunk):
        FerryError: the upload cannot make this job: UPLOAD_NOT_FOUND, TOO_MANY_INPUTS, a line
            that is not a valid item (by number, see ``Manifest.check``), or UNSUPPORTED_INPUT
            (no line is an input the model takes).
    """
    index = await uploads.index(request.tenant, request.manifest)
    if index.kind == ZIP:
        count = len(index.entries)
        validation.manifest_items(count, request.max_items, request.manifest)
        validation.some_input_taken(request.model, request.input_kinds, {"image"}, count)
        for start in range(0, count, chunk):
            positions = range(start, min(start + chunk, count))
            yield Chunk(
                [index.entry_ref(p) for p in positions],
                [input_names.shown(index.entries[p].name) for p in positions],
            )
        return
    validation.manifest_items(index.lines, request.max_items, request.manifest)
    with tempfile.TemporaryFile(prefix="ferry-manifest-") as spooled:
        await uploads.read_manifest(index, spooled)
        manifest = Manifest(uploads, index, spooled, fetcher, request)
        kinds = await manifest.check(chunk, progress)
        validation.some_input_taken(request.model, request.input_kinds, kinds, index.lines)
        async for batch in manifest.inputs(chunk):
            yield batch


class Manifest:
    """One JSONL manifest of a job, spooled to ``spooled``, read into checked job inputs."""

    def __init__(
        self,
        uploads: UploadStore,
        index: Index,
        spooled: IO[bytes],
        fetcher: Fetcher,
        expansion: events_pb2.JobExpansion,
    ) -> None:
        self._uploads = uploads
        self._index = index
        self._spooled = spooled
        self._fetcher = fetcher
        self._max_item_bytes = expansion.max_item_bytes
        self._max_image_bytes = expansion.max_image_bytes
        self._quota_bytes = expansion.upload_quota_bytes
        self._name = expansion.manifest
        self._indexes = KeptIndexes(KEPT_INDEX_ENTRIES)
        self._urls: dict[str, events_pb2.ObjectRef] = {}
        self._stored_before = False
        """Whether an object of this upload's images was found stored by an earlier expansion."""

    async def check(self, chunk: int, progress: Progress) -> set[str]:
        """Checks every line and stores its images; returns the kinds of input the lines make
        ("image", "text", "payload", "tensor").

        Raises:
            InvalidArgument: INVALID_MANIFEST (a line, by number, is not a valid item), an image
                too large or a URL refused (naming the line), NESTING_TOO_DEEP.
            NotFound: UPLOAD_NOT_FOUND, a zip or a zip file a line names.
            ResourceExhausted: UPLOAD_QUOTA_EXCEEDED by the fetched images.
        """
        kinds: set[str] = set()
        pending: dict[str, str] = {}  # URLs of this chunk not fetched yet, with their line
        storing = _Stores(_CONCURRENT_STORES)
        number = 0
        try:
            for read, (number, line) in enumerate(self._lines(), 1):
                where = f"{self._name} line {number}"
                kind, value, _ = await _parse(line, where)
                if kind == "content":
                    data = self._checked_image(_base64(value, where), where)
                    await storing.start(self._store(f"line-{number}", data))
                elif kind == "image" and value.startswith(("http://", "https://")):
                    if value not in self._urls:
                        pending.setdefault(value, where)
                elif kind == "image":
                    await self._image_ref(value, where)
                else:
                    _other_input(value, self._max_item_bytes, where)
                kinds.add("image" if kind == "content" else kind)
                if read % chunk == 0:
                    await storing.wait()
                    await self._fetch(pending)
                    pending = {}
                    await progress(number)
            await storing.wait()
        finally:
            storing.cancel()  # a bad line ends the check: what was being stored is not needed
        await self._fetch(pending)
        await progress(number)
        return kinds

    async def inputs(self, chunk: int) -> AsyncIterator[Chunk]:
        """The checked manifest's inputs in order, ``chunk`` at a time (call ``check`` first)."""
        batch = Chunk([], [])
        for number, line in self._lines():
            where = f"{self._name} line {number}"
            kind, value, given = await _parse(line, where)
            batch.names.append(given or _name_of(kind, value, number))
            if kind == "content":
                size = len(_base64(value, where))
                batch.inputs.append(
                    events_pb2.ObjectRef(bucket=BUCKET, name=self._object(f"line-{number}"), size_bytes=size)
                )
            elif kind == "image" and value.startswith(("http://", "https://")):
                batch.inputs.append(self._urls[value])
            elif kind == "image":
                batch.inputs.append(await self._image_ref(value, where))
            else:
                batch.inputs.append(_other_input(value, self._max_item_bytes, where))
            if len(batch.inputs) == chunk:
                yield batch
                batch = Chunk([], [])
        if batch.inputs:
            yield batch

    def _lines(self) -> Iterator[tuple[int, str]]:
        """The spooled manifest's non-blank lines with their numbers, one at a time."""
        self._spooled.seek(0)
        for number, raw in enumerate(self._spooled, 1):
            # Windows editors save UTF-8 with a byte order mark: not JSON, but not the user's fault.
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            if line.strip():
                yield number, line

    def _object(self, suffix: str) -> str:
        return f"{self._index.tenant}/{self._index.upload_id}/{suffix}"

    async def _image_ref(self, value: str, where: str) -> events_pb2.ObjectRef:
        """The claim check of ``uploads/<id>/<file>``, a file of a zip upload of the same tenant."""
        if not value.startswith("uploads/"):
            raise _bad(where, f'"image" is {value!r}: neither uploads/<id>/<file> nor an http(s) URL')
        upload, _, entry = value.partition("/")[2].partition("/")
        if not entry:
            raise _bad(where, f"{value!r} names no file; write uploads/<id>/<file in the zip>")
        name = f"uploads/{upload}"
        found = self._indexes.get(name)
        if found is None:
            try:
                found = await self._uploads.index(self._index.tenant, name)
            except NotFound as err:
                raise NotFound(
                    f"{where}: {err.message}", reason="UPLOAD_NOT_FOUND", metadata={"upload": name}
                ) from None
            self._indexes.keep(name, found)
        if found.kind != ZIP:
            raise _bad(where, f"{name} is a manifest, not a zip; name a file of a zip upload")
        position = found.position_of(entry)
        if position is None:
            raise NotFound(
                f"{where}: {name} has no file {entry!r}",
                reason="UPLOAD_NOT_FOUND",
                metadata={"upload": name, "entry": entry},
            )
        return found.entry_ref(position)

    async def _store(self, suffix: str, data: bytes) -> events_pb2.ObjectRef:
        """Stores ``data`` as ``<upload>/<suffix>`` unless it already is; its claim check.

        An upload's first expansion finds none of its objects stored, so each is stored without
        asking first. Once one is found stored (the expansion redelivered, or the manifest named by
        a second job), each is asked for first, so that its bytes are not sent again.
        """
        name = self._object(suffix)
        ref = events_pb2.ObjectRef(bucket=BUCKET, name=name, size_bytes=len(data))
        if self._stored_before:
            bucket = await self._uploads.store()
            with contextlib.suppress(ObjectNotFoundError, NotFoundError):
                await bucket.get_info(name)
                return ref
        if not await self._uploads.store_new(name, data):
            self._stored_before = True
        return ref

    def _checked_image(self, data: bytes, where: str) -> bytes:
        """An inline image, checked against the image limit (it is stored, not sent in a message)."""
        return validation.image_content(types_pb2.Image(content=data), self._max_image_bytes, where)

    async def _fetch(self, urls: dict[str, str]) -> None:
        """Fetches and stores each URL once (``urls``: URL to the line that first named it)."""
        slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)

        async def one(url: str, where: str) -> None:
            async with slots:
                suffix = "url-" + hashlib.sha256(url.encode()).hexdigest()[:32]
                bucket = await self._uploads.store()
                try:  # fetched by an earlier delivery of this expansion
                    info = await bucket.get_info(self._object(suffix))
                    ref = events_pb2.ObjectRef(bucket=BUCKET, name=self._object(suffix), size_bytes=info.size)
                except (ObjectNotFoundError, NotFoundError):
                    data = await self._fetcher.fetch(url, where)
                    await self._uploads.charge(self._index, len(data), self._quota_bytes)
                    ref = await self._store(suffix, data)
                self._urls[url] = ref

        await asyncio.gather(*(one(url, where) for url, where in urls.items()))


#: Files of the zip indexes one manifest keeps read: a line may name a file of any of the tenant's
#: 2,000 uploads, and an index of 10,000 files takes about 4 MB once read (kept all, the 100
#: uploads of a manifest naming one file of each would take 400 MB of the expander's memory).
KEPT_INDEX_ENTRIES = 2 * limits.UPLOAD_MAX_ENTRIES


class KeptIndexes:
    """The upload indexes a manifest's lines named lately, least recently named forgotten first
    once they hold more than ``most_entries`` files together (the last one read is always kept).
    A manifest naming its uploads in turn reads each index again: slower, never larger."""

    def __init__(self, most_entries: int) -> None:
        self._most = most_entries
        self._kept: OrderedDict[str, Index] = OrderedDict()
        self.entries = 0
        """Files of the kept indexes, together."""

    def get(self, name: str) -> Index | None:
        """The index of upload ``name`` if it is kept (then it is the last one named)."""
        found = self._kept.get(name)
        if found is not None:
            self._kept.move_to_end(name)
        return found

    def keep(self, name: str, index: Index) -> None:
        """Keeps ``index`` as the last one named, forgetting the oldest past the bound."""
        self._kept[name] = index
        self.entries += _files(index)
        while self.entries > self._most and len(self._kept) > 1:
            _, forgotten = self._kept.popitem(last=False)
            self.entries -= _files(forgotten)


def _files(index: Index) -> int:
    return max(len(index.entries), 1)


class _Stores:
    """Inline images being stored, at most ``limit`` at a time (each holds its image's bytes)."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[object]] = set()

    async def start(self, storing: Coroutine[Any, Any, object]) -> None:
        """Starts ``storing`` once a slot is free."""
        try:
            await self._slots.acquire()
        except BaseException:
            storing.close()  # never started: not a coroutine left unawaited
            raise

        # The task runs ``storing`` itself (not a wrapper awaiting it): one cancelled before its
        # first step closes the coroutine, where a wrapper's would be left never awaited.
        task = asyncio.create_task(storing)
        task.add_done_callback(lambda _: self._slots.release())
        self._tasks.add(task)

    async def wait(self) -> None:
        """Waits for every store started; raises the first failure."""
        tasks, self._tasks = self._tasks, set()
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = set()


def _name_of(kind: str, value: Any, number: int) -> str:
    """The name of a line's item that has no ``"id"``: the image it names, else its number."""
    if kind != "image":
        return input_names.of_line(number)
    if value.startswith(("http://", "https://")):
        return input_names.of_url(value)
    return input_names.shown(value)


async def _parse(line: str, where: str) -> tuple[str, Any, str]:
    """``_parse_line``, in a worker thread for a long line (off the event loop)."""
    if len(line) > _LONG_LINE:
        return await asyncio.to_thread(_parse_line, line, where)
    return _parse_line(line, where)


#: A line's keys, by the kind of item it makes (each may also hold an "id").
_LINE_KEYS = {
    "image": {"image", "id"},
    "content": {"content", "id"},
    "text": {"text", "candidate_labels", "id"},
    "payload": {"payload", "id"},
    "tensor": {"tensor", "id"},
}
_LINE_FORMS = (
    '{"image": "..."}, {"content": "<base64>"}, {"text": "...", "candidate_labels": [...]} '
    '(labels optional), {"payload": {...}} or {"tensor": {...}}, each with an optional "id"'
)


def _parse_line(line: str, where: str) -> tuple[str, Any, str]:
    """A line's kind (its main key), the line (the string value of ``image`` or ``content``, else
    the whole object: a text's labels ride along with it) and its ``"id"`` ("" when it has none)."""
    try:
        item: Any = nesting.loads(line)
    except nesting.TooDeep as err:  # however deep: Python's recursion limit is not a 500
        raise InvalidArgument(
            f"{where}: {err}, the limit; flatten it",
            reason=nesting.REASON,
            metadata={"field": "manifest", "max_depth": str(err.limit)},
        ) from None
    except json.JSONDecodeError as err:
        # Saved with carriage returns alone (classic Mac OS) as line ends, the whole manifest is
        # one line: JSON then ends after the first object, and "Extra data" says nothing of why.
        ending = ""
        if err.msg == "Extra data" and "\r" in line:
            ending = "; its lines end with a carriage return (\\r) alone: end each with \\n"
        raise _bad(where, f"not JSON ({err.msg} at column {err.colno}){ending}") from None
    except ValueError as err:  # an integer too long to convert, for example
        raise _bad(where, f"not JSON that Ferry can read ({err})") from None
    kinds = [k for k in _LINE_KEYS if isinstance(item, dict) and k in item]
    if len(kinds) != 1 or not item.keys() <= _LINE_KEYS[kinds[0]]:
        raise _bad(where, f"expected one object of one of these forms: {_LINE_FORMS}")
    kind = kinds[0]
    given = item.pop("id", None)
    if given is not None and (problem := input_names.id_problem(given)) is not None:
        raise _bad(where, problem)
    if kind in ("image", "content"):
        value = item[kind]
        if kind == "image" and isinstance(value, dict):
            # CreateJob's and Predict's shape, {"image": {"content": …}}: a new user's first guess.
            raise _bad(
                where,
                '"image" is an object, as in a CreateJob input; a manifest line gives an image by its '
                'bytes, {"content": "<base64>"}, or by name, {"image": "uploads/<id>/<file>"} or '
                '{"image": "https://…"}',
            )
        if not isinstance(value, str) or not value:
            raise _bad(where, f'"{kind}" must be a non-empty string')
        return kind, value, given or ""
    return kind, item, given or ""


def _other_input(line: dict[str, Any], max_bytes: int, where: str) -> types_pb2.Input:
    """The Input of a text, payload or tensor line, checked as a Predict's input is."""
    item = types_pb2.Input()
    if "text" in line:
        labels = line.get("candidate_labels", [])
        if isinstance(line["text"], dict):  # CreateJob's shape, {"text": {"content": …}}
            raise _bad(
                where,
                '"text" is an object, as in a CreateJob input; a manifest line gives the text itself: '
                '{"text": "…"}, with "candidate_labels" beside it',
            )
        if not isinstance(line["text"], str):
            raise _bad(where, '"text" must be a string')
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise _bad(where, '"candidate_labels" must be a list of strings')
        item.text.content = line["text"]
        item.text.candidate_labels.extend(labels)
    elif "payload" in line:
        if not isinstance(line["payload"], dict):
            raise _bad(where, '"payload" must be a JSON object')
        try:
            item.payload.update(line["payload"])
        except OverflowError as err:  # a number past a double (10**400): JSON has no bound, a Struct has
            raise _bad(where, f'"payload" holds a number past what a double holds ({err})') from None
    else:
        try:
            json_format.ParseDict(line["tensor"], item.tensor)
        except (json_format.ParseError, TypeError, ValueError, OverflowError) as err:
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


def _bad(where: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {why}", reason="INVALID_MANIFEST", metadata={"field": "manifest"})
