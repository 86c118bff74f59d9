"""Uploads in a real JetStream Object Store: the size bound, tenant scoping, and manifest expansion
(the jobs service's ``manifests.chunks``, on uploads the gateway stored)."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import struct
import tarfile
import unicodedata
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from random import Random
from typing import Any

import pytest
from google.api import httpbody_pb2
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta
from nats.js.object_store import ObjectStore

from ferry.events.v1 import events_pb2
from ferry.jobs.v1 import job_service_pb2
from ferry.types.v1 import types_pb2
from services.common import input_names, limits, messaging, upload_checks
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.common.fetcher import Fetcher, FetchPolicy
from services.common.upload_checks import UploadLimits
from services.common.upload_quota import UploadQuota
from services.common.upload_store import BUCKET
from services.gateway.settings import GatewaySettings
from services.gateway.uploads import OBJECT_CHUNK_BYTES, PUT_CONCURRENCY, Index, Uploads
from services.jobs import manifests
from services.jobs.claims import ClaimChecks
from services.jobs.manifests import JobInput

FETCHER = Fetcher(FetchPolicy(max_bytes=1000))


async def expand(
    uploads: Uploads, tenant: str, name: str, fetcher: Fetcher, max_items: int, max_item_bytes: int
) -> list[JobInput]:
    """Every input of a job naming the upload ``name`` (the expander publishes them chunk by chunk)."""
    return (await expanded(uploads, tenant, name, fetcher, max_items, max_item_bytes)).inputs


async def expanded(
    uploads: Uploads, tenant: str, name: str, fetcher: Fetcher, max_items: int, max_item_bytes: int
) -> manifests.Chunk:
    """Every input of a job naming the upload ``name``, with the names its results show."""
    request = events_pb2.JobExpansion(
        tenant=tenant,
        manifest=name,
        max_items=max_items,
        max_item_bytes=max_item_bytes,
        max_image_bytes=uploads.max_image_bytes,
        upload_quota_bytes=1_000_000,
    )

    async def progress(line: int) -> None:
        pass

    every = manifests.Chunk([], [])
    async for chunk in manifests.chunks(uploads, request, fetcher, 2, progress):
        assert len(chunk.inputs) == len(chunk.names)
        every.inputs.extend(chunk.inputs)
        every.names.extend(chunk.names)
    return every


async def pieces(*chunks: bytes) -> AsyncIterator[job_service_pb2.CreateUploadRequest]:
    for chunk in chunks:
        yield job_service_pb2.CreateUploadRequest(body=httpbody_pb2.HttpBody(data=chunk))


def uploads_of(js: JetStreamContext, max_bytes: int = 1_000_000, **settings: int) -> Uploads:
    settings.setdefault("max_image_bytes", 1000)
    return Uploads(js, GatewaySettings(max_upload_bytes=max_bytes, **settings))


async def image_of(js: JetStreamContext, ref: events_pb2.ObjectRef) -> bytes:
    """What the runner reads for an item's claim check."""
    return (await ClaimChecks(js, 5.0).input_of(events_pb2.JobItem(input_ref=ref))).image.content


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


async def test_an_upload_past_the_bound_is_refused_while_it_streams(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js, max_bytes=100)
        stored = await uploads.create("acme", pieces(b'{"content": "aGk="}\n' * 4))
        assert (stored.kind, stored.entries, stored.size_bytes) == ("jsonl", 4, 80)
        with pytest.raises(InvalidArgument) as refused:
            await uploads.create("acme", pieces(b"x" * 60, b"x" * 60, b"never read"))
        assert refused.value.reason == "UPLOAD_TOO_LARGE"


async def test_an_upload_sent_in_tiny_pieces_is_refused_early(nats_url: str) -> None:
    # Each piece costs the lane the same CPU whatever its size: 200,000 pieces of one byte took it
    # 12.9 s for a 200 KB upload over native gRPC.
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js)
        tiny = [b'{"text": "a"}\n'] + [b" "] * 10_000
        with pytest.raises(InvalidArgument) as refused:
            await uploads.create("acme", pieces(*tiny))
        assert refused.value.reason == "INVALID_UPLOAD"
        assert "pieces of at least 512 bytes" in refused.value.message
        assert refused.value.metadata["limit"] == "upload_min_piece_bytes"
        fine = [b'{"text": "a"}\n' + b" " * 600] * 5_000  # small pieces, but not tiny ones
        assert (await uploads_of(js, 10_000_000).create("acme", pieces(*fine))).entries == 5_000


async def test_a_tenant_reads_only_its_own_uploads(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js)
        stored = await uploads.create("acme", pieces(zipped({"a.jpg": b"A"})))
        index = await uploads.index("acme", stored.name)
        assert await image_of(js, index.entry_ref(0)) == b"A"
        with pytest.raises(NotFound) as missing:
            await uploads.index("other", stored.name)
        assert missing.value.reason == "UPLOAD_NOT_FOUND"


async def test_a_manifest_expands_to_its_images_in_line_order(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js)
        photos = await uploads.create("acme", pieces(zipped({"b.jpg": b"BB", "a.jpg": b"AA", "dir/": b""})))
        assert photos.entries == 2
        lines = [{"image": f"{photos.name}/b.jpg"}, {"content": "Q0M="}, {"image": f"{photos.name}/a.jpg"}]
        manifest = await uploads.create("acme", pieces("\n\n".join(json.dumps(x) for x in lines).encode()))
        inputs = await expand(uploads, "acme", manifest.name, FETCHER, 10, 1000)
        assert all(isinstance(i, events_pb2.ObjectRef) for i in inputs)  # claim checks, not bytes
        assert [await image_of(js, i) for i in inputs] == [b"BB", b"CC", b"AA"]  # type: ignore[arg-type]
        by_zip = await expand(uploads, "acme", photos.name, FETCHER, 10, 1000)
        assert [await image_of(js, i) for i in by_zip] == [b"AA", b"BB"]  # type: ignore[arg-type]

        with pytest.raises(InvalidArgument) as too_many:
            await expand(uploads, "acme", manifest.name, FETCHER, 2, 1000)
        assert too_many.value.reason == "TOO_MANY_INPUTS"
        with pytest.raises(InvalidArgument) as too_large:
            tiny_images = uploads_of(js, max_image_bytes=1)  # the same bucket, a 1-byte image limit
            await expand(tiny_images, "acme", manifest.name, FETCHER, 10, 1000)
        assert too_large.value.reason == "IMAGE_TOO_LARGE" and "line 3" in too_large.value.message


def test_a_manifest_keeps_the_indexes_it_read_up_to_a_bound_of_files() -> None:
    # Kept all, a manifest naming one file of each of its tenant's uploads (2,000 at most, of up
    # to 10,000 files each, about 4 MB an index once read) held them all in the expander.
    def index(files: int) -> Index:
        return Index(
            uuid.uuid4(), "acme", "zip", 1, [upload_checks.Entry(f"{i}.jpg", 1) for i in range(files)]
        )

    kept = manifests.KeptIndexes(5)
    kept.keep("uploads/a", index(2))
    kept.keep("uploads/b", index(2))
    assert kept.get("uploads/a") is not None  # named lately: "b" is now the oldest
    kept.keep("uploads/c", index(2))
    assert kept.entries == 4 and kept.get("uploads/b") is None and kept.get("uploads/a") is not None
    kept.keep("uploads/big", index(9))  # alone past the bound: kept, as the last one read
    assert kept.entries == 9 and kept.get("uploads/big") is not None and kept.get("uploads/c") is None


async def test_a_manifest_naming_more_uploads_than_it_keeps_expands_right(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifests, "KEPT_INDEX_ENTRIES", 3)  # one upload of 2 files at a time
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js)
        zips = [
            await uploads.create("acme", pieces(zipped({"a.jpg": b"A%d" % i, "b.jpg": b"B%d" % i})))
            for i in range(3)
        ]
        lines = [{"image": f"{zips[i % 3].name}/{'ab'[i % 2]}.jpg"} for i in range(7)]
        manifest = await uploads.create("acme", pieces("\n".join(json.dumps(x) for x in lines).encode()))
        inputs = await expand(uploads, "acme", manifest.name, FETCHER, 10, 1000)
        images = [await image_of(js, i) for i in inputs]  # type: ignore[arg-type]
        assert images == [b"A0", b"B1", b"A2", b"B0", b"A1", b"B2", b"A0"]


async def test_a_manifest_takes_texts_payloads_and_tensors(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js)
        lines = [
            {"text": "a cat asleep on a sofa"},
            {"text": "a kitten", "candidate_labels": ["animal", "tax"]},
            {"payload": {"image": "aGk=", "top_k": 2}},
            {"tensor": {"datatype": "FP32", "shape": [2], "fp32_contents": [0.5, 1.5]}},
            {"content": "Q0M="},
        ]
        manifest = await uploads.create("acme", pieces("\n".join(json.dumps(x) for x in lines).encode()))
        inputs = await expand(uploads, "acme", manifest.name, FETCHER, 10, 1000)
        texts = [i for i in inputs if isinstance(i, types_pb2.Input)]
        assert [i.WhichOneof("kind") for i in texts] == ["text", "text", "payload", "tensor"]
        assert isinstance(inputs[4], events_pb2.ObjectRef) and await image_of(js, inputs[4]) == b"CC"
        inputs = texts
        assert inputs[0].text.content == "a cat asleep on a sofa" and not inputs[0].text.candidate_labels
        assert list(inputs[1].text.candidate_labels) == ["animal", "tax"]
        assert inputs[2].payload["image"] == "aGk=" and inputs[2].payload["top_k"] == 2
        assert list(inputs[3].tensor.shape) == [2] and list(inputs[3].tensor.fp32_contents) == [0.5, 1.5]


async def test_items_are_named_by_their_zip_file_or_what_their_manifest_line_gave(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js)
        decomposed = unicodedata.normalize("NFD", "holiday/2024/café.jpg")
        hostile = "\x1b]0;owned\x07photo\u202egpj.exe"
        long_name = "deep/" * 300 + "IMG_0001.jpg"
        files = {"holiday/2024/IMG_0001.jpg": b"A", decomposed: b"B", hostile: b"C", long_name: b"D"}
        photos = await uploads.create("acme", pieces(zipped(files)))
        by_zip = await expanded(uploads, "acme", photos.name, FETCHER, 10, 1000)
        # In the zip's name order, as its items are: "\x1b" sorts first, then "deep/", "holiday/".
        assert [await image_of(js, i) for i in by_zip.inputs] == [b"C", b"D", b"A", b"B"]  # type: ignore[arg-type]
        hostile_shown, long_shown, *names = by_zip.names
        assert hostile_shown == "\\x1b]0;owned\\x07photo\\u202egpj.exe"  # no terminal title, no reversed text
        assert len(long_shown) == limits.INPUT_NAME_CHARS and long_shown.endswith("/IMG_0001.jpg")
        assert long_shown.startswith("deep/deep/") and input_names.ELLIPSIS in long_shown
        assert names == ["holiday/2024/IMG_0001.jpg", "holiday/2024/café.jpg"]  # composed (NFC), as typed

        lines = [
            {"image": f"{photos.name}/holiday/2024/IMG_0001.jpg"},
            {"content": "Q0M=", "id": "scan-17"},
            {"text": "a cat on a sofa"},
            {"text": "stock prices fell", "candidate_labels": ["finance"], "id": "Kunde 4711"},
            {"payload": {"x": 1}},
            {"image": f"{photos.name}/holiday/2024/café.jpg"},  # NFC, as the results show the NFD file
        ]
        manifest = await uploads.create("acme", pieces("\n\n".join(json.dumps(x) for x in lines).encode()))
        by_lines = await expanded(uploads, "acme", manifest.name, FETCHER, 10, 1000)
        assert by_lines.names == [
            f"{photos.name}/holiday/2024/IMG_0001.jpg",  # the image the line names
            "scan-17",  # the line's own id
            "line 5",  # its line number (blank lines count: it is the file's line 5)
            "Kunde 4711",
            "line 9",
            f"{photos.name}/holiday/2024/café.jpg",
        ]
        assert await image_of(js, by_lines.inputs[5]) == b"B"  # type: ignore[arg-type]
        assert isinstance(by_lines.inputs[3], types_pb2.Input)
        assert list(by_lines.inputs[3].text.candidate_labels) == ["finance"]  # "id" is not an input field


@pytest.mark.parametrize(
    ("line", "reason", "words"),
    [
        ('{"text": 42}', "INVALID_MANIFEST", '"text" must be a string'),
        ('{"text": "x", "candidate_labels": "animal"}', "INVALID_MANIFEST", "list of strings"),
        ('{"text": "x", "payload": {}}', "INVALID_MANIFEST", "one of these forms"),
        ('{"candidate_labels": ["a"]}', "INVALID_MANIFEST", "one of these forms"),
        ('{"payload": [1, 2]}', "INVALID_MANIFEST", "must be a JSON object"),
        ('{"payload": ' + "[" * 100_000 + "]" * 100_000 + "}", "NESTING_TOO_DEEP", "deeper than 32 levels"),
        ('{"payload": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}", "NESTING_TOO_DEEP", "deeper than 32 levels"),
        ('{"payload": {"n": ' + "9" * 5000 + "}}", "INVALID_MANIFEST", "not JSON that Ferry can read"),
        # A number past a double: was an OverflowError, the job failed BACKEND_ERROR with a traceback.
        ('{"payload": {"n": 1' + "0" * 400 + "}}", "INVALID_MANIFEST", "past what a double holds"),
        ('{"payload": {"n": [1, 1e999]}}', "INVALID_INPUT", "NaN or infinity"),  # was retried 5 min, a 500
        ('{"tensor": {"shape": [1], "fp32_contents": [1' + "0" * 400 + "]}}", "INVALID_MANIFEST", "Tensor"),
        ('{"tensor": {"shape": "two"}}', "INVALID_MANIFEST", "ferry.types.v1.Tensor"),
        ('{"text": "   "}', "MISSING_TEXT", "text.content is empty"),
        ('{"text": "x", "candidate_labels": [' + ", ".join(['"l"'] * 65) + "]}", "TOO_MANY_LABELS", "64"),
        ('{"payload": {"blob": "' + "x" * 2000 + '"}}', "INPUT_TOO_LARGE", "limit is 1000 bytes"),
        ('{"text": "x", "id": ""}', "INVALID_MANIFEST", '"id" must be a non-empty string'),
        ('{"text": "x", "id": 17}', "INVALID_MANIFEST", '"id" must be a non-empty string'),
        ('{"text": "x", "id": "a\\u0000b"}', "INVALID_MANIFEST", "U+0000"),
        ('{"text": "x", "id": "' + "i" * 1025 + '"}', "INVALID_MANIFEST", "at most 1024"),
        ('{"id": "only a name"}', "INVALID_MANIFEST", "one of these forms"),
        # CreateJob's input shape in a manifest: said '"image" must be a non-empty string'.
        ('{"image": {"content": "eA=="}}', "INVALID_MANIFEST", 'by its bytes, {"content": "<base64>"}'),
        ('{"text": {"content": "a cat"}}', "INVALID_MANIFEST", 'gives the text itself: {"text": "…"}'),
    ],
)
async def test_a_bad_text_payload_or_tensor_line_is_refused_with_its_line_number(
    nats_url: str, line: str, reason: str, words: str
) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js)
        good = json.dumps({"text": "fine"})
        manifest = await uploads.create("acme", pieces("\n".join([good, "", line, good]).encode()))
        with pytest.raises(InvalidArgument) as refused:
            await expand(uploads, "acme", manifest.name, FETCHER, 10, 1000)
        assert refused.value.reason == reason
        assert f"{manifest.name} line 3: " in refused.value.message and words in refused.value.message
        assert refused.value.metadata["field"] == "manifest"  # the request's field


def listing(records: int, name_bytes: int = 1, zip64: bool = False) -> bytes:
    """A zip of one file whose directory lists ``records`` records of it, each under its own name
    (an attacker's zip: 212 MB of such records listed 4 million, and zipfile built an object of each)."""
    data = b"x"
    crc = zlib.crc32(data)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, 1, 1, 1, 0) + b"a" + data
    head = struct.Struct("<4s6H3L5H2L")
    directory = b"".join(
        head.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, 1, 1, name_bytes, 0, 0, 0, 0, 0, 0)
        + f"{i:0{name_bytes}d}".encode()[-name_bytes:]
        for i in range(records)
    )
    counted = 0xFFFF if zip64 else min(records, 0xFFFF)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, counted, counted, len(directory), len(local), 0)
    if not zip64:
        return local + directory + end
    end64_at = len(local) + len(directory)
    end64 = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, records, records, len(directory), len(local)
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end64_at, 1)
    return local + directory + end64 + locator + end


def quoting(files: int, kernel: bytes) -> bytes:
    """A stored zip whose every file's data holds all the files after it (a zip bomb needing no
    compression: 4,500 files around 100 KB of noise were a 525 KB zip and 856 MB unpacked)."""

    def local(name: bytes, data: bytes) -> bytes:
        size, crc = len(data), zlib.crc32(data)
        return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, size, size, len(name), 0) + name

    names = [f"{i:03d}.jpg".encode() for i in range(files)]
    data, records = kernel, []
    for name in reversed(names):  # the last file's data is the kernel; each earlier one quotes it all
        records.append((name, data))
        data = local(name, data) + data
    directory, offset = b"", 0
    for name, held in reversed(records):
        size, crc = len(held), zlib.crc32(held)
        directory += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            20,
            20,
            0,
            0,
            0,
            0,
            crc,
            size,
            size,
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        directory += name
        offset += 30 + len(name)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, files, files, len(directory), len(data), 0)
    return data + directory + end


def tarred(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def with_bytes_changed(data: bytes, find: bytes, replace: bytes) -> bytes:
    assert data.count(find) >= 1
    return data.replace(find, replace)


def stored_zip(name: str, content: bytes) -> bytes:
    """A zip of one file kept unpacked (ZIP_STORED): its bytes appear as they are in the zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


def deflated_zip(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def packed_data_overwritten(data: bytes, skip: int = 0) -> bytes:
    """The zip's first file's packed bytes (after its 30-byte header and name, and ``skip`` more)
    made garbage."""
    start = 30 + int.from_bytes(data[26:28], "little") + skip
    return data[:start] + b"\xff" * 8 + data[start + 8 :]


def encrypted_flag(data: bytes) -> bytes:
    """The zip with every file marked encrypted (bit 0 of the flags, local and central headers)."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = out.find(signature)
        while at != -1:
            out[at + offset] |= 0x1
            at = out.find(signature, at + 4)
    return bytes(out)


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        # A bad CRC: the stored file's bytes changed after the zip was made.
        (
            with_bytes_changed(stored_zip("a.jpg", b"JPEGDATA" * 10), b"JPEGDATA", b"JPEGDATB"),
            "INVALID_UPLOAD",
            "CRC",
        ),
        # Corrupt deflate data: the packed stream overwritten with bytes no inflater takes.
        (
            packed_data_overwritten(deflated_zip({"a.jpg": bytes(range(256)) * 3})),
            "INVALID_UPLOAD",
            "cannot be read",
        ),
        # Corrupt bzip2 and LZMA data (zipfile reads both): an OSError and an LZMAError, once a 500.
        (
            packed_data_overwritten(deflated_zip({"a.jpg": bytes(range(256)) * 3}, zipfile.ZIP_BZIP2)),
            "INVALID_UPLOAD",
            "'a.jpg' in the zip cannot be read: Invalid data stream",
        ),
        (
            # Past zipfile's 9-byte LZMA header: the stream itself.
            packed_data_overwritten(deflated_zip({"a.jpg": bytes(range(256)) * 3}, zipfile.ZIP_LZMA), 12),
            "INVALID_UPLOAD",
            "'a.jpg' in the zip cannot be read: Corrupt input data",
        ),
        (encrypted_flag(zipped({"a.jpg": b"A" * 10})), "INVALID_UPLOAD", "encrypted"),
        (zipped({f"{i}.jpg": b"x" for i in range(6)}), "UPLOAD_TOO_MANY_ENTRIES", "upload_max_entries"),
        (
            deflated_zip({"zeros.jpg": bytes(900)}),
            "UPLOAD_UNPACKED_TOO_LARGE",
            "upload_max_compression_ratio",
        ),
        (
            zipped({"a.jpg": b"a" * 600, "b.jpg": b"b" * 600}),
            "UPLOAD_UNPACKED_TOO_LARGE",
            "upload_max_unpacked_bytes",
        ),
        (zipped({"big.jpg": b"b" * 1001}), "IMAGE_TOO_LARGE", "big.jpg"),
        (b"PK\x03\x04broken", "INVALID_UPLOAD", "not a readable one"),
        # Files whose bytes hold the files after them: no packing ratio shows it (zipfile read them).
        (
            quoting(3, b"x" * 100),
            "INVALID_UPLOAD",
            "'000.jpg' in the zip overlaps the file or directory after it",
        ),
        # A directory listing more records than files and their folders and bookkeeping need, or
        # more bytes of them, is refused before zipfile reads it (it built an object per record).
        (listing(21), "UPLOAD_TOO_MANY_ENTRIES", "lists more than 20 records"),
        (listing(21, zip64=True), "UPLOAD_TOO_MANY_ENTRIES", "lists more than 20 records"),
        (zipped({"a.jpg": b"a", **{f"d{i}/": b"" for i in range(20)}}), "UPLOAD_TOO_MANY_ENTRIES", "records"),
        (zipped({"d/": b""}), "INVALID_UPLOAD", "no files"),
        (b"PK\x05\x06" + bytes(18), "INVALID_UPLOAD", "no files"),  # an empty zip: its end record only
        # Said once what an upload takes (the message said it twice).
        (b"", "INVALID_UPLOAD", "the upload is empty (0 bytes); POST /v1/uploads takes"),
        (b"\n \n", "INVALID_UPLOAD", "only blank lines (one item per line); POST /v1/uploads takes"),
        (b'{"text": "a"}\n\xff\xfe', "INVALID_UPLOAD", "byte 14"),
        # Usual mistakes, named: curl -F, one photo, a .tar.gz (was "neither a zip nor … (byte N)").
        (b"--------abc\r\nContent-Disposition: form-data", "INVALID_UPLOAD", "multipart form (curl -F)"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\xff\xff", "INVALID_UPLOAD", "one JPEG image; zip the images"),
        (b"\x1f\x8b\x08\x00\xff\xff", "INVALID_UPLOAD", "a gzip file; send a zip instead"),
        # A tar of manifests was read as one ("line 1: not JSON"), other archives "(byte 2)".
        (
            tarred({"photos/a.jsonl": b'{"text": "a"}\n'}),
            "INVALID_UPLOAD",
            "a tar archive; send a zip instead",
        ),
        (b"7z\xbc\xaf\x27\x1c\x00\x04", "INVALID_UPLOAD", "a 7-Zip archive; send a zip"),
        (b"%PDF-1.7\n%\xe2\xe3", "INVALID_UPLOAD", "a PDF document"),
        (b"MZ\x90\x00" + bytes(60) + b"PK\x05\x06", "INVALID_UPLOAD", "self-extracting archive"),
        (b"\x00\x00\x00\x18ftypheic", "INVALID_UPLOAD", "one HEIC or AVIF image"),
        (b'{"text": "a"}\n' * 6, "UPLOAD_TOO_MANY_ENTRIES", "upload_max_entries"),
    ],
)
async def test_a_bad_or_oversized_upload_is_refused_with_a_reason_naming_the_limit(
    nats_url: str, data: bytes, reason: str, words: str
) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(
            js, upload_max_entries=5, upload_max_unpacked_bytes=1000, upload_max_compression_ratio=20
        )
        with pytest.raises(InvalidArgument) as refused:
            await uploads.create("acme", pieces(data[:7], data[7:]))
        assert refused.value.reason == reason, refused.value.message
        assert words in refused.value.message, refused.value.message


def test_a_zip_directory_past_its_byte_bound_is_refused_before_zipfile_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "names.zip"
    path.write_bytes(listing(280, name_bytes=60_000))  # 280 names of 60,000 bytes: a 16.8 MB directory
    bounds = UploadLimits(limits.UPLOAD_MAX_ENTRIES, 1 << 30, 100, 1 << 20)
    with pytest.raises(InvalidArgument) as refused:
        upload_checks.open_zip(path, bounds)
    assert refused.value.reason == "UPLOAD_TOO_MANY_ENTRIES"
    assert "directory is 16812880 bytes, more than the 16 MiB" in refused.value.message


def finder_zip(files: dict[str, bytes]) -> bytes:
    """A zip as macOS's Finder makes it: each file's resource fork under __MACOSX/, a .DS_Store
    (mostly zeros: it packs ~100x), deflated; plus a Thumbs.db from a Windows folder."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            folder, _, base = name.rpartition("/")
            archive.writestr(name, content)
            archive.writestr(f"__MACOSX/{folder}/._{base}", b"\x00\x05\x16\x07" + bytes(200))
        archive.writestr("photos/.DS_Store", b"Bud1" + bytes(6140))
        archive.writestr("photos/Thumbs.db", bytes(4096))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "bookkeeping"),
    [
        ("photos/IMG_0001.jpg", False),
        (".hidden/IMG_0001.jpg", False),
        ("photos/.IMG_0001.jpg", False),
        ("__macosx_notes/IMG_0001.jpg", False),
        ("__MACOSX/photos/._IMG_0001.jpg", True),
        ("photos/__MACOSX/IMG_0001.jpg", True),
        ("photos/._IMG_0001.jpg", True),
        ("photos/.DS_Store", True),
        ("Thumbs.db", True),
        ("photos\\desktop.ini", True),
    ],
)
def test_an_operating_systems_bookkeeping_in_a_zip_is_told_from_the_users_files(
    name: str, bookkeeping: bool
) -> None:
    assert upload_checks.os_metadata(name) is bookkeeping


async def test_a_zip_made_by_finder_makes_items_of_its_images_only(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        # The ratio bound a .DS_Store would fail as a bomb, were it read as an image.
        uploads = uploads_of(js, upload_max_compression_ratio=20)
        made = finder_zip({"photos/IMG_0001.jpg": b"A", "photos/IMG_0002.jpg": b"B"})
        upload = await uploads.create("acme", pieces(made))
        assert (upload.entries, upload.skipped_entries) == (2, 4)
        items = await expanded(uploads, "acme", upload.name, FETCHER, 10, 1000)
        assert items.names == ["photos/IMG_0001.jpg", "photos/IMG_0002.jpg"]
        assert [await image_of(js, i) for i in items.inputs] == [b"A", b"B"]  # type: ignore[arg-type]

        only_bookkeeping = finder_zip({})
        with pytest.raises(InvalidArgument) as refused:
            await uploads.create("acme", pieces(only_bookkeeping))
        assert refused.value.reason == "INVALID_UPLOAD"
        assert "no files but an operating system's bookkeeping" in refused.value.message


async def test_a_tenant_past_its_quota_is_refused_429_and_others_are_not(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js, upload_quota_bytes=3000)
        await uploads.create("quota-a", pieces(zipped({"a.jpg": b"a" * 900, "b.jpg": b"b" * 900})))
        await uploads.create("quota-a", pieces(b'{"text": "x"}\n' * 50))  # 700 bytes: 2,500 used
        with pytest.raises(ResourceExhausted) as refused:
            await uploads.create("quota-a", pieces(zipped({"c.jpg": b"c" * 600})))
        assert refused.value.reason == "UPLOAD_QUOTA_EXCEEDED"
        assert refused.value.metadata["limit"] == "upload_quota_bytes"
        with pytest.raises(ResourceExhausted):  # refused while it streams, past the room left
            await uploads.create("quota-a", pieces(b'{"text": "x"}\n' * 20, b'{"text": "x"}\n' * 30))
        assert (await uploads.create("quota-b", pieces(zipped({"c.jpg": b"c" * 600})))).entries == 1


async def test_what_a_manifest_stores_later_is_added_to_its_upload_one_ledger_entry_for_all(
    nats_url: str,
) -> None:
    # The images a manifest names by URL, stored as its job expands, used to be an entry each: every
    # charge re-read and rewrote a ledger that grew with each (27 ms of CPU per charge at 10,000), and
    # concurrent charges lost their compare-and-set rounds. Now they add to the manifest's own entry.
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js, upload_quota_bytes=100_000)
        tenant = f"ledger-{uuid.uuid4().hex[:8]}"
        made = await uploads.create(tenant, pieces(b'{"image": "https://example.com/a.jpg"}\n' * 3))
        index = await uploads.index(tenant, made.name)
        await asyncio.gather(*(uploads.charge(index, 1_000) for _ in range(64)))  # fetches at once
        quota = UploadQuota(js, 100_000, 3600.0)
        ledger, _ = await quota._ledger(tenant)
        assert list(ledger) == [str(index.upload_id)]
        assert ledger[str(index.upload_id)][0] == made.size_bytes + 64_000
        assert await quota.room(tenant) == 100_000 - made.size_bytes - 64_000
        with pytest.raises(ResourceExhausted) as refused:  # past the quota, as before
            await uploads.charge(index, 40_000)
        assert refused.value.metadata["limit"] == "upload_quota_bytes"


async def test_a_tenant_keeping_the_most_uploads_is_refused_another_429(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "UPLOAD_TENANT_MAX_UPLOADS", 3)
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js)
        tenant = f"many-{uuid.uuid4().hex[:8]}"
        kept = [await uploads.create(tenant, pieces(b'{"text": "x"}\n')) for _ in range(3)]
        with pytest.raises(ResourceExhausted) as refused:
            await uploads.create(tenant, pieces(b'{"text": "x"}\n'))
        assert refused.value.reason == "UPLOAD_QUOTA_EXCEEDED"
        assert refused.value.metadata == {"limit": "upload_tenant_max_uploads", "uploads": "3"}
        assert "put more files in one zip" in refused.value.message
        index = await uploads.index(tenant, kept[0].name)
        await uploads.charge(index, 10)  # what a kept manifest stores later is no new upload
        assert (await uploads.create(f"other-{tenant}", pieces(b'{"text": "x"}\n'))).size_bytes


async def test_uploads_in_flight_together_are_bounded_by_the_spool_and_a_refused_one_may_retry(
    nats_url: str,
) -> None:
    # Four parallel 256 MiB uploads filled the chart's 1 GiB /tmp and got the pod evicted.
    line = b'{"text": "' + b"x" * 100 + b'"}\n'
    body = line * (150_000 // len(line))  # 1,327 lines
    first_written, finish_first = asyncio.Event(), asyncio.Event()

    async def held_open() -> AsyncIterator[job_service_pb2.CreateUploadRequest]:
        yield job_service_pb2.CreateUploadRequest(body=httpbody_pb2.HttpBody(data=body))
        first_written.set()  # past the 64 KiB buffer: written to the spool, its bytes taken
        await finish_first.wait()

    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js, max_bytes=200_000, upload_spool_bytes=250_000, upload_buffer_bytes=65_536)
        tenant = f"spool-{uuid.uuid4().hex[:8]}"
        first = asyncio.create_task(uploads.create(tenant, held_open()))
        await asyncio.wait_for(first_written.wait(), 10)
        await asyncio.sleep(0.1)  # its write went through
        with pytest.raises(ResourceExhausted) as refused:
            await uploads.create(tenant, pieces(body))
        assert refused.value.reason == "OVERLOADED"
        assert refused.value.metadata == {"limit": "upload_spool_bytes", "spool_bytes": "250000"}
        assert refused.value.retry_after is not None and refused.value.retry_after.seconds > 0
        finish_first.set()
        assert (await first).size_bytes == len(body)
        assert (await uploads.create(tenant, pieces(body))).size_bytes == len(body)  # room again


def test_a_spool_smaller_than_the_largest_upload_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="FERRY_GATEWAY_UPLOAD_SPOOL_BYTES"):
        GatewaySettings(max_upload_bytes=2_000_000, upload_spool_bytes=1_000_000)


async def test_a_refused_zip_leaves_nothing_stored_and_its_quota_refunded(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js, upload_quota_bytes=2000)
        good = stored_zip("a.jpg", b"A" * 700)
        bad = with_bytes_changed(
            zipped({"a.jpg": b"A" * 700, "b.jpg": b"JPEGDATA"}), b"JPEGDATA", b"JPEGDATB"
        )
        with pytest.raises(InvalidArgument):
            await uploads.create("refund", pieces(bad))
        before = await (await uploads.store()).status()
        await uploads.create("refund", pieces(good))
        await uploads.create("refund", pieces(good))  # fits only if the refused one was refunded
        assert (await (await uploads.store()).status()).size > before.size


async def test_a_zips_files_are_stored_several_at_once_each_read_back_whole(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 10,000-file zip took 11 s stored one file after another, each put allocating a 1 MiB
    chunk: puts now overlap (at most PUT_CONCURRENCY) and a small file's chunk is its size."""
    in_flight, peak, chunks = 0, 0, {}
    put = ObjectStore.put

    async def counted(self: ObjectStore, name: str, data: Any, meta: ObjectMeta | None = None) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if meta is not None and meta.options is not None:  # the index has no options
            chunks[name.rsplit("/", 1)[-1]] = meta.options.max_chunk_size
        try:
            return await put(self, name, data, meta)
        finally:
            in_flight -= 1

    monkeypatch.setattr(ObjectStore, "put", counted)
    rng = Random(7)
    files = {f"{i:03d}.jpg": rng.randbytes(rng.randrange(0, 3000)) for i in range(60)}
    files["big.jpg"] = rng.randbytes(OBJECT_CHUNK_BYTES * 2 + 5)  # streamed in chunks
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js, max_bytes=8 * 1024 * 1024, max_image_bytes=4 * 1024 * 1024)
        stored = await uploads.create("acme", pieces(zipped(files)))
        index = await uploads.index("acme", stored.name)
        for position, entry in enumerate(index.entries):
            assert await image_of(js, index.entry_ref(position)) == files[entry.name], entry.name
    assert 2 <= peak <= PUT_CONCURRENCY
    sizes = [len(files[entry.name]) for entry in index.entries]
    assert [chunks[str(p)] for p in range(len(sizes))] == [
        OBJECT_CHUNK_BYTES if size > OBJECT_CHUNK_BYTES else max(size, 1) for size in sizes
    ]


async def chunk_sequences(js: JetStreamContext, bucket: ObjectStore, name: str) -> list[int]:
    """The stream sequences of the object ``name``'s chunks, in order."""
    info = await bucket.get_info(name)
    stream, subject = f"OBJ_{BUCKET}", f"$O.{BUCKET}.C.{info.nuid}"
    found: list[int] = []
    while len(found) < (info.chunks or 0):
        message = await js.get_msg(stream, seq=found[-1] + 1 if found else 1, subject=subject, next=True)
        found.append(message.seq or 0)
    return found


async def test_a_file_of_several_chunks_lies_in_one_run_of_the_stream(nats_url: str) -> None:
    """Stored side by side, 8 files' chunks alternated in the stream, and NATS loaded every 8 MB
    block holding one of a file's chunks to read it: about 8 times its size, per claim check read
    (docs/benchmarks.md, session 10). Each larger file is now stored alone, two uploads at once
    included; small files still go side by side."""
    rng = Random(11)
    uploaded = [
        {f"{u}-{i:02d}.png": rng.randbytes(OBJECT_CHUNK_BYTES * 2 + 7) for i in range(3)}
        | {f"{u}-small-{i:02d}.png": rng.randbytes(3000) for i in range(10)}
        for u in "ab"
    ]
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js, max_bytes=16 * 1024 * 1024, max_image_bytes=4 * 1024 * 1024)
        stored = await asyncio.gather(*(uploads.create("acme", pieces(zipped(f))) for f in uploaded))
        bucket = await uploads.store()
        for upload, files in zip(stored, uploaded, strict=True):
            index = await uploads.index("acme", upload.name)
            for position, entry in enumerate(index.entries):
                if len(files[entry.name]) <= OBJECT_CHUNK_BYTES:
                    continue
                sequences = await chunk_sequences(js, bucket, index.entry_ref(position).name)
                assert len(sequences) == 3
                assert sequences == list(range(sequences[0], sequences[0] + 3)), entry.name
                assert await image_of(js, index.entry_ref(position)) == files[entry.name]


async def test_a_zip_whose_files_fail_together_is_refused_and_every_failure_is_read(
    nats_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files stored at once can fail together: one failure was raised, the others were left for
    # asyncio to log as "Task exception was never retrieved", with a traceback (the e2e fuzz
    # found it with a zip of corrupt deflate data). Every put fails here, at once.
    async def failing(self: ObjectStore, name: str, data: Any, meta: ObjectMeta | None = None) -> Any:
        raise zipfile.BadZipFile(f"Bad CRC-32 for {name}")

    rng = Random(3)  # incompressible: zeros would pass the compression-ratio bound
    files = {f"{i:02d}.jpg": rng.randbytes(OBJECT_CHUNK_BYTES - 1) for i in range(PUT_CONCURRENCY + 2)}
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js, max_bytes=16 * 1024 * 1024, max_image_bytes=2 * 1024 * 1024)
        await uploads.store()
        monkeypatch.setattr(ObjectStore, "put", failing)
        with pytest.raises(InvalidArgument) as refused:
            await uploads.create("acme", pieces(deflated_zip(files)))
        message = refused.value.message
        del refused  # its traceback holds the tasks: asyncio logs an unread failure as they go
        gc.collect()
        await asyncio.sleep(0.1)
    assert "cannot be read" in message
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()], caplog.text


@pytest.mark.parametrize("line_limit", [5, 6, 7, 16, 1 << 24])
def test_manifest_lines_are_counted_across_block_edges(tmp_path: Path, line_limit: int) -> None:
    """Blocks are read at most the line limit long, so small limits put every edge case (a line
    split across blocks, blank lines of whitespace, CRLF, no final newline) on a block edge."""
    random = Random(line_limit)
    for trial in range(100):
        parts = [
            random.choice([b"", b"  ", b"\r", b'{"a":1}', b" x ", b"\t\x0b", b"y" * random.randint(1, 9)])
        ]
        parts += [random.choice([b"", b" ", b"abc", b"\r", b"z" * random.randint(1, 9)]) for _ in range(20)]
        data = b"\n".join(parts) + random.choice([b"", b"\n", b"\n\n "])
        path = tmp_path / f"{trial}.jsonl"
        path.write_bytes(data)
        bounds = UploadLimits(1000, 1, 1, 1, max_line_bytes=line_limit)
        non_blank = sum(1 for line in data.split(b"\n") if line.strip())
        longest = max(len(line) for line in data.split(b"\n"))
        if longest > line_limit:
            with pytest.raises(InvalidArgument, match="longer than"):
                upload_checks.manifest_lines(path, bounds)
        elif not non_blank:
            with pytest.raises(InvalidArgument, match="empty"):
                upload_checks.manifest_lines(path, bounds)
        else:
            assert upload_checks.manifest_lines(path, bounds) == non_blank, data


@pytest.mark.parametrize(
    ("piece", "reason", "words"),
    [
        # 5,000 lines a piece: the 10,001st arrives in the third.
        (b'{"text": "a"}\n' * 5_000, "UPLOAD_TOO_MANY_ENTRIES", "more than 10000 lines"),
        # One line of 1 MiB a piece: past the 16 MiB line limit in the seventeenth.
        (b"x" * (1 << 20), "INVALID_UPLOAD", "line 1 of the manifest is longer than 16 MiB"),
        # A known mistake is named as its first bytes arrive, not called "not UTF-8".
        (b"\xff\xd8\xff\xe0" + bytes(70_000), "INVALID_UPLOAD", "one JPEG image"),
    ],
)
async def test_a_manifest_past_a_limit_is_refused_before_the_rest_arrives(
    nats_url: str, piece: bytes, reason: str, words: str
) -> None:
    # A 200 MiB manifest of 16 million lines was read whole through Envoy and the upload lane
    # before its refusal (issue #17): its pieces are no longer taken once the scan knows.
    taken = 0

    async def counted() -> AsyncIterator[job_service_pb2.CreateUploadRequest]:
        nonlocal taken
        for _ in range(60):
            taken += 1
            yield job_service_pb2.CreateUploadRequest(body=httpbody_pb2.HttpBody(data=piece))

    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = uploads_of(js, 100 << 20, upload_max_entries=10_000, upload_buffer_bytes=64 * 1024)
        with pytest.raises(InvalidArgument) as refused:
            await uploads.create("acme", counted())
    assert refused.value.reason == reason, refused.value.message
    assert words in refused.value.message, refused.value.message
    assert taken < 20, taken
