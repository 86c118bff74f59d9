"""Uploads in a real JetStream Object Store: the size bound, tenant scoping, and manifest expansion."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from google.api import httpbody_pb2

from ferry.jobs.v1 import job_service_pb2
from services.common import messaging
from services.common.errors import InvalidArgument, NotFound
from services.gateway import manifests
from services.gateway.fetcher import Fetcher, FetchPolicy
from services.gateway.uploads import Uploads, inspect

FETCHER = Fetcher(FetchPolicy(max_bytes=1000))


async def pieces(*chunks: bytes) -> AsyncIterator[job_service_pb2.CreateUploadRequest]:
    for chunk in chunks:
        yield job_service_pb2.CreateUploadRequest(body=httpbody_pb2.HttpBody(data=chunk))


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


async def test_an_upload_past_the_bound_is_refused_while_it_streams(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = Uploads(js, max_bytes=100)
        stored = await uploads.create("acme", pieces(b'{"content": "aGk="}\n' * 4))
        assert (stored.kind, stored.entries, stored.size_bytes) == ("jsonl", 4, 80)
        with pytest.raises(InvalidArgument) as refused:
            await uploads.create("acme", pieces(b"x" * 60, b"x" * 60, b"never read"))
        assert refused.value.reason == "UPLOAD_TOO_LARGE"


async def test_a_tenant_reads_only_its_own_uploads(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = Uploads(js, max_bytes=10_000)
        stored = await uploads.create("acme", pieces(zipped({"a.jpg": b"A"})))
        assert (await uploads.read("acme", stored.name)).data == zipped({"a.jpg": b"A"})
        with pytest.raises(NotFound) as missing:
            await uploads.read("other", stored.name)
        assert missing.value.reason == "UPLOAD_NOT_FOUND"


async def test_a_manifest_expands_to_its_images_in_line_order(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = Uploads(js, max_bytes=10_000)
        photos = await uploads.create("acme", pieces(zipped({"b.jpg": b"BB", "a.jpg": b"AA", "dir/": b""})))
        assert photos.entries == 2
        lines = [{"image": f"{photos.name}/b.jpg"}, {"content": "Q0M="}, {"image": f"{photos.name}/a.jpg"}]
        manifest = await uploads.create("acme", pieces("\n\n".join(json.dumps(x) for x in lines).encode()))
        inputs = await manifests.expand(uploads, "acme", manifest.name, FETCHER, 10, 1000)
        assert [i.image.content for i in inputs] == [b"BB", b"CC", b"AA"]
        by_zip = await manifests.expand(uploads, "acme", photos.name, FETCHER, 10, 1000)
        assert [i.image.content for i in by_zip] == [b"AA", b"BB"]  # file-name order

        with pytest.raises(InvalidArgument) as too_many:
            await manifests.expand(uploads, "acme", manifest.name, FETCHER, 2, 1000)
        assert too_many.value.reason == "TOO_MANY_INPUTS"
        with pytest.raises(InvalidArgument) as too_large:
            await manifests.expand(uploads, "acme", manifest.name, FETCHER, 10, 1)
        assert too_large.value.reason == "IMAGE_TOO_LARGE" and "line 1" in too_large.value.message


async def test_a_manifest_takes_texts_payloads_and_tensors(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = Uploads(js, max_bytes=10_000)
        lines = [
            {"text": "a cat asleep on a sofa"},
            {"text": "a kitten", "candidate_labels": ["animal", "tax"]},
            {"payload": {"image": "aGk=", "top_k": 2}},
            {"tensor": {"datatype": "FP32", "shape": [2], "fp32_contents": [0.5, 1.5]}},
            {"content": "Q0M="},
        ]
        manifest = await uploads.create("acme", pieces("\n".join(json.dumps(x) for x in lines).encode()))
        inputs = await manifests.expand(uploads, "acme", manifest.name, FETCHER, 10, 1000)
        assert [i.WhichOneof("kind") for i in inputs] == ["text", "text", "payload", "tensor", "image"]
        assert inputs[0].text.content == "a cat asleep on a sofa" and not inputs[0].text.candidate_labels
        assert list(inputs[1].text.candidate_labels) == ["animal", "tax"]
        assert inputs[2].payload["image"] == "aGk=" and inputs[2].payload["top_k"] == 2
        assert list(inputs[3].tensor.shape) == [2] and list(inputs[3].tensor.fp32_contents) == [0.5, 1.5]
        assert inputs[4].image.content == b"CC"
        assert [i.WhichOneof("kind") for i in inputs[1:3]] == ["text", "payload"]  # slices too


@pytest.mark.parametrize(
    ("line", "reason", "words"),
    [
        ('{"text": 42}', "INVALID_MANIFEST", '"text" must be a string'),
        ('{"text": "x", "candidate_labels": "animal"}', "INVALID_MANIFEST", "list of strings"),
        ('{"text": "x", "payload": {}}', "INVALID_MANIFEST", "one of these forms"),
        ('{"candidate_labels": ["a"]}', "INVALID_MANIFEST", "one of these forms"),
        ('{"payload": [1, 2]}', "INVALID_MANIFEST", "must be a JSON object"),
        ('{"tensor": {"shape": "two"}}', "INVALID_MANIFEST", "ferry.types.v1.Tensor"),
        ('{"text": "   "}', "MISSING_TEXT", "text.content is empty"),
        ('{"text": "x", "candidate_labels": [' + ", ".join(['"l"'] * 65) + "]}", "TOO_MANY_LABELS", "64"),
        ('{"payload": {"blob": "' + "x" * 2000 + '"}}', "INPUT_TOO_LARGE", "limit is 1000 bytes"),
    ],
)
async def test_a_bad_text_payload_or_tensor_line_is_refused_with_its_line_number(
    nats_url: str, line: str, reason: str, words: str
) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "uploads-test", stack)
        uploads = Uploads(js, max_bytes=10_000)
        good = json.dumps({"text": "fine"})
        manifest = await uploads.create("acme", pieces("\n".join([good, "", line, good]).encode()))
        with pytest.raises(InvalidArgument) as refused:
            await manifests.expand(uploads, "acme", manifest.name, FETCHER, 10, 1000)
        assert refused.value.reason == reason
        assert f"{manifest.name} line 3: " in refused.value.message and words in refused.value.message
        assert refused.value.metadata["field"] == "manifest"  # the request's field


@pytest.mark.parametrize(
    ("data", "kind"),
    [(b'{"content": "aGk="}\n', "jsonl"), (zipped({"a.jpg": b"A"}), "zip")],
)
def test_an_upload_is_told_apart_by_its_bytes(data: bytes, kind: str) -> None:
    assert inspect(data) == (kind, 1)


@pytest.mark.parametrize("data", [b"", b"\n \n", b"\xff\xfe", b"PK\x03\x04broken", zipped({"d/": b""})])
def test_what_is_neither_a_manifest_nor_a_zip_of_files_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as refused:
        inspect(data)
    assert refused.value.reason == "INVALID_UPLOAD"
