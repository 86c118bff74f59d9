"""Result files (built by services/jobs/result_files.py, read by services/gateway/job_results.py)
in both stores: JetStream Object Store on a real nats-server, and S3 on moto's standalone S3 API
server (an HTTP server speaking S3, in process, installed offline with the dev extra).

Store is stood in for by the records it would return (its listing is covered by tests/store and
the whole path by tests/e2e/test_job_features.py); what is tested here is the file itself. The
stores' fixtures are in conftest.py; how a file is written, in test_result_file_writes.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import boto3
import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.internal import decoder
from nats.js import JetStreamContext
from nats.js.errors import DigestMismatchError

from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2
from ferry.types.v1 import types_pb2
from services.common import limits
from services.common.delimited import framed, varint
from services.common.errors import FailedPrecondition, FerryError, status_to_proto
from services.common.result_stores import ResultStore, result_store
from services.gateway.job_results import JobResults
from services.jobs.result_files import ResultFiles, result_of, result_record


class Files:
    """The jobs service's builder and a gateway's reader of one store, joined in process as
    WriteResultFile joins them (``write`` builds the file of a job; ``read`` reads it, built first)."""

    def __init__(self, records: Any, store: ResultStore, **options: Any) -> None:
        self.builder = ResultFiles(records, store, **options)
        self.reader = JobResults(self._write_file, store)

    async def _write_file(self, tenant: str, name: str) -> str:
        return (await self.builder.write(tenant, name)).name

    async def write(self, tenant: str, job: job_pb2.Job) -> str:
        return await self._write_file(tenant, job.name)

    async def read(self, tenant: str, name: str) -> AsyncIterator[job_service_pb2.GetJobResultsResponse]:
        """The messages a download sends, parsed as its client does."""
        async for message in self.reader.read(tenant, name):
            yield job_service_pb2.GetJobResultsResponse.FromString(message)

    @property
    def largest_piece(self) -> int:
        return self.builder.largest_piece


class RecordsOf:
    """What store answers for one job: the job and its records, in pages of ``page`` (two)."""

    def __init__(self, job: job_pb2.Job, predictions: list[prediction_pb2.Prediction], page: int = 2) -> None:
        self.job = job
        self.predictions = predictions
        self.page = page
        self.listings = 0

    async def get_job(self, tenant: str, name: str) -> job_pb2.Job:
        assert (tenant, name) == ("acme", self.job.name)
        return self.job

    async def list_predictions(
        self, tenant: str, request: prediction_service_pb2.ListPredictionsRequest
    ) -> prediction_service_pb2.ListPredictionsResponse:
        assert request.job == self.job.name
        self.listings += 1
        start = int(request.page_token or 0)
        end = start + self.page
        more = end < len(self.predictions)
        return prediction_service_pb2.ListPredictionsResponse(
            predictions=self.predictions[start:end], next_page_token=str(end) if more else ""
        )


def a_job(
    state: job_pb2.JobState = job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED,
) -> tuple[job_pb2.Job, list[prediction_pb2.Prediction]]:
    job = job_pb2.Job(name=f"jobs/{uuid.uuid4()}", state=state, items_total=3)
    ok = prediction_pb2.PREDICTION_STATE_SUCCEEDED
    records = [
        prediction_pb2.Prediction(
            name=f"predictions/{uuid.uuid4()}",
            job=job.name,
            item_index=i,
            state=ok,
            classes=[types_pb2.ClassScore(label="tabby", score=0.61, index=281)],
        )
        for i in (0, 2)
    ]
    failed = prediction_pb2.Prediction(
        name=f"predictions/{uuid.uuid4()}",
        job=job.name,
        item_index=1,
        state=prediction_pb2.PREDICTION_STATE_FAILED,
        error=status_to_proto(grpc.StatusCode.INVALID_ARGUMENT, "not an image", "INVALID_IMAGE"),
    )
    return job, [records[0], failed, records[1]]


async def records(results: Files, name: str) -> list[bytes]:
    """The messages a download sends, each framed as the file holds it."""
    return [framed(message) async for message in results.reader.read("acme", name)]


def stored_name(job: job_pb2.Job, round: int = 0) -> str:
    return f"{job.name.removeprefix('jobs/')}/round-{round}.pb"


async def test_the_file_has_a_message_per_record_and_is_written_once_per_round(
    result_files: ResultStore,
) -> None:
    job, predictions = a_job()
    store = RecordsOf(job, predictions)
    results = Files(store, result_files)  # type: ignore[arg-type]  # a stand-in for Records

    first = await records(results, job.name)
    assert len(first) == 3
    parsed = [r async for r in results.read("acme", job.name)]
    assert [(r.index, r.input, r.prediction) for r in parsed] == [
        (p.item_index, f"inputs[{p.item_index}]", p.name) for p in predictions
    ]
    assert parsed[0].classes[0].label == "tabby" and not parsed[0].HasField("error")
    assert parsed[1].error.code == 3 and not parsed[1].classes
    listings = store.listings
    assert await records(results, job.name) == first  # read back from the object, not rebuilt
    assert store.listings == listings

    store.job.retry_count = 1  # RetryJob reopened it and it ended again: a new file
    store.predictions[1] = prediction_pb2.Prediction(
        name=predictions[1].name, job=job.name, item_index=1, state=prediction_pb2.PREDICTION_STATE_SUCCEEDED
    )
    again = [r async for r in results.read("acme", job.name)]
    assert again[1].state == prediction_pb2.PREDICTION_STATE_SUCCEEDED and not again[1].HasField("error")
    stored = await result_files.get(stored_name(job))
    assert stored == b"".join(first)  # the stored file is the messages served, byte for byte
    assert await result_files.exists(stored_name(job, 1))


async def test_a_line_names_its_upload_file_or_line_and_an_unnamed_record_its_place(
    js: JetStreamContext,
) -> None:
    job, predictions = a_job()
    predictions[0].input_name = "holiday/2024/IMG_0001.jpg"  # a zip's file
    predictions[2].input_name = "\\x1b[31mred.jpg"  # as the expander escaped it
    results = Files(RecordsOf(job, predictions), result_store("", js))  # type: ignore[arg-type]
    inputs = [r.input async for r in results.read("acme", job.name)]
    # Item 1 has no name: listed in CreateJob, or recorded before names were kept.
    assert inputs == ["holiday/2024/IMG_0001.jpg", "inputs[1]", "\\x1b[31mred.jpg"]


async def test_s3_files_are_objects_under_the_urls_prefix(js: JetStreamContext, s3_endpoint: str) -> None:
    boto3.client("s3").create_bucket(Bucket="ferry-prefixed")
    job, predictions = a_job()
    results = Files(RecordsOf(job, predictions), result_store("s3://ferry-prefixed/team-a/results", js))  # type: ignore[arg-type]
    await records(results, job.name)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="ferry-prefixed")["Contents"]]
    assert keys == [f"team-a/results/{stored_name(job)}"]


def test_a_results_url_of_another_kind_is_refused(js: JetStreamContext) -> None:
    with pytest.raises(ValueError, match="s3://"):
        result_store("gs://bucket", js)


async def test_a_running_job_has_no_result_file_yet(js: JetStreamContext) -> None:
    job, predictions = a_job(state=job_pb2.JOB_STATE_RUNNING)
    results = Files(RecordsOf(job, predictions), result_store("", js))  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition) as refused:
        await records(results, job.name)
    # What to do, with the job's own name (it said "GET /v1/{name}:watch", the placeholder itself).
    assert f"GET /v1/{job.name}:watch" in refused.value.message, refused.value.message


async def test_results_carry_embeddings_json_outputs_and_tensors(js: JetStreamContext) -> None:
    job = job_pb2.Job(name=f"jobs/{uuid.uuid4()}", state=job_pb2.JOB_STATE_SUCCEEDED, items_total=3)
    ok = prediction_pb2.PREDICTION_STATE_SUCCEEDED
    embedded = prediction_pb2.Prediction(
        name=f"predictions/{uuid.uuid4()}", job=job.name, item_index=0, state=ok, embedding=[0.6, 0.8]
    )
    answered = prediction_pb2.Prediction(
        name=f"predictions/{uuid.uuid4()}", job=job.name, item_index=1, state=ok
    )
    answered.output.update({"agreed": True, "label": "espresso"})
    tensor = types_pb2.Tensor(name="logits", datatype="FP32", shape=[2], fp32_contents=[0.25, 0.75])
    tensors = prediction_pb2.Prediction(
        name=f"predictions/{uuid.uuid4()}", job=job.name, item_index=2, state=ok, tensors=[tensor]
    )
    results = Files(RecordsOf(job, [embedded, answered, tensors]), result_store("", js))  # type: ignore[arg-type]

    parsed = [r async for r in results.read("acme", job.name)]
    assert list(parsed[0].embedding) == pytest.approx([0.6, 0.8])
    assert parsed[1].output["label"] == "espresso" and parsed[1].output["agreed"] is True
    assert not parsed[0].HasField("output") and not parsed[1].embedding
    assert list(parsed[2].tensors[0].fp32_contents) == [0.25, 0.75]


async def test_downloads_of_a_new_file_at_once_build_it_once(result_files: ResultStore) -> None:
    job, predictions = a_job()
    store = RecordsOf(job, predictions)
    results = Files(store, result_files)  # type: ignore[arg-type]  # a stand-in for Records
    read = await asyncio.gather(*(records(results, job.name) for _ in range(4)))
    assert all(found == read[0] for found in read) and len(read[0]) == 3
    assert store.listings == 2  # one build: 3 records in pages of two (each download built it: 8)


class Tampered:
    """A result store whose files' digests are found wrong once their last chunk is read, as the
    Object Store finds them for a file changed after it was written."""

    def __init__(self, inner: ResultStore) -> None:
        self.inner = inner
        self.where = inner.where

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def chunks(self, name: str) -> AsyncIterator[bytes]:
        async for chunk in self.inner.chunks(name):
            yield chunk
        raise DigestMismatchError()


class CountedChunks:
    """A result store that counts the chunks its readers have taken."""

    def __init__(self, inner: ResultStore) -> None:
        self.inner = inner
        self.where = inner.where
        self.taken = 0

    async def exists(self, name: str) -> bool:
        return await self.inner.exists(name)

    async def put(self, name: str, data: bytes) -> None:
        await self.inner.put(name, data)

    async def put_pieces(self, name: str, pieces: AsyncIterable[bytes | bytearray]) -> bool:
        return await self.inner.put_pieces(name, pieces)

    async def get(self, name: str) -> bytes:
        return await self.inner.get(name)

    async def chunks(self, name: str) -> AsyncIterator[bytes]:
        async for chunk in self.inner.chunks(name):
            self.taken += 1
            yield chunk


async def test_a_download_reads_the_file_as_it_sends_it(js: JetStreamContext) -> None:
    job = job_pb2.Job(name=f"jobs/{uuid.uuid4()}", state=job_pb2.JOB_STATE_SUCCEEDED, items_total=200)
    ok = prediction_pb2.PREDICTION_STATE_SUCCEEDED
    predictions = [  # about 10 KB a line: 2 MB, several of NATS's chunks
        prediction_pb2.Prediction(
            name=f"predictions/{uuid.uuid4()}", job=job.name, item_index=i, state=ok, embedding=[i / 7] * 500
        )
        for i in range(200)
    ]
    counted = CountedChunks(result_store("", js))
    results = Files(RecordsOf(job, predictions), counted)  # type: ignore[arg-type]
    await results.write("acme", job)
    reading = results.read("acme", job.name)
    first = await anext(reading)
    assert first.index == 0 and counted.taken == 1  # it held the whole file before its first message
    rest = [r async for r in reading]
    assert [r.index for r in [first, *rest]] == list(range(200)) and counted.taken > 3
    assert list(rest[-1].embedding) == pytest.approx([199 / 7] * 500)


async def test_messages_longer_than_a_chunk_and_across_chunks_are_read_whole(
    result_files: ResultStore,
) -> None:
    job = job_pb2.Job(name=f"jobs/{uuid.uuid4()}", state=job_pb2.JOB_STATE_SUCCEEDED, items_total=40)
    ok = prediction_pb2.PREDICTION_STATE_SUCCEEDED
    sizes = [100_000 if i == 7 else 1_000 + 97 * i for i in range(40)]  # item 7: about 400 KB
    predictions = [
        prediction_pb2.Prediction(
            name=f"predictions/{uuid.uuid4()}", job=job.name, item_index=i, state=ok, embedding=[i / 3] * size
        )
        for i, size in enumerate(sizes)
    ]
    results = Files(RecordsOf(job, predictions), result_files)  # type: ignore[arg-type]
    served = await records(results, job.name)
    assert b"".join(served) == await result_files.get(stored_name(job))
    assert [len(r.embedding) async for r in results.read("acme", job.name)] == sizes


def json_line(result: job_service_pb2.GetJobResultsResponse) -> bytes:
    """A line of a result file as the jobs service wrote them before session 14 (proto JSON)."""
    fields = json_format.MessageToDict(
        result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def all_kinds(job: job_pb2.Job) -> list[prediction_pb2.Prediction]:
    """Records of every kind a result carries: classes, an error with details, an embedding, a
    JSON output (nested, keys out of order), tensors, a name not in ASCII."""
    _, predictions = a_job()
    ok = prediction_pb2.PREDICTION_STATE_SUCCEEDED
    more = [
        prediction_pb2.Prediction(item_index=3, state=ok, embedding=[0.1, 1 / 3, -2.5e-8, 3.4e38]),
        prediction_pb2.Prediction(item_index=4, state=ok, input_name="Café/été 🌞.jpg"),
        prediction_pb2.Prediction(
            item_index=5,
            state=ok,
            tensors=[types_pb2.Tensor(name="logits", datatype="FP32", shape=[2], fp32_contents=[0.1, 0.7])],
        ),
    ]
    more[1].output.update({"zeta": 1, "alpha": [1.5, "b", None, {"y": True, "x": 0.1}], "mid": {"k": "v"}})
    for record in [*predictions, *more]:
        record.job = job.name
        record.name = record.name or f"predictions/{uuid.uuid4()}"
    return [*predictions, *more]


def framed_messages(data: bytes) -> list[bytes]:
    """The messages of a length-delimited file, read with protobuf's own varint decoder."""
    found, at = [], 0
    while at < len(data):
        size, at = decoder._DecodeVarint(data, at)  # type: ignore[attr-defined]
        found.append(data[at : at + size])
        at += size
    assert at == len(data)
    return found


async def test_the_file_is_each_result_serialized_after_its_length(result_files: ResultStore) -> None:
    job, _ = a_job()
    predictions = all_kinds(job)
    results = Files(RecordsOf(job, predictions), result_files)  # type: ignore[arg-type]
    stored = await result_files.get(await results.write("acme", job))
    expected = [result_of(p) for p in predictions]
    parse = job_service_pb2.GetJobResultsResponse.FromString
    assert [parse(message) for message in framed_messages(stored)] == expected
    assert [r async for r in results.read("acme", job.name)] == expected


def test_the_messages_sent_are_byte_for_byte_those_sent_when_the_file_was_json_lines() -> None:
    """Before session 14 the gateway parsed each JSON line and gRPC serialized the message again:
    the same bytes as now go out, so Envoy's REST lines, `ferry results` and save_job_results
    print what they printed. But for the order of a JSON output's keys: a protobuf map's, which
    upb orders by a hash seeded per process, so it differed from one gateway to the next already
    (deterministic serialization sorts them, to compare the rest)."""
    job, _ = a_job()
    for prediction in all_kinds(job):
        result = result_of(prediction)
        before = json_format.Parse(json_line(result), job_service_pb2.GetJobResultsResponse())
        assert before.SerializeToString(deterministic=True) == result.SerializeToString(deterministic=True)
        if not result.HasField("output"):
            assert before.SerializeToString() == result.SerializeToString(), result


async def test_a_json_lines_file_from_before_is_built_again_in_the_new_form(
    result_files: ResultStore,
) -> None:
    job, predictions = a_job()
    old = stored_name(job).removesuffix(".pb") + ".jsonl"
    await result_files.put(old, b"".join(json_line(result_of(p)) for p in predictions[:1]))  # stale
    records = RecordsOf(job, predictions)
    results = Files(records, result_files)  # type: ignore[arg-type]
    assert [r async for r in results.read("acme", job.name)] == [result_of(p) for p in predictions]
    assert results.builder.builds == 1 and await result_files.exists(stored_name(job))


async def test_a_json_lines_file_named_by_a_jobs_service_from_before_is_still_read(
    js: JetStreamContext,
) -> None:
    """A rolling upgrade that starts with the gateways: the jobs service still names .jsonl files."""
    job, predictions = a_job()
    predictions = all_kinds(job)
    store = result_store("", js)
    old = stored_name(job).removesuffix(".pb") + ".jsonl"
    await store.put(old, b"".join(json_line(result_of(p)) for p in predictions))

    async def old_jobs_service(tenant: str, name: str) -> str:
        return old

    reader = JobResults(old_jobs_service, store)
    sent = [message async for message in reader.read("acme", job.name)]
    # Compared as messages: a JSON output's Struct serializes its keys in upb's per-process map
    # order, which differs between a message parsed from JSON and one built in code.
    assert [job_service_pb2.GetJobResultsResponse.FromString(m) for m in sent] == [
        result_of(p) for p in predictions
    ]


@pytest.mark.parametrize(
    "damage",
    ["cut short", "a length of 11 bytes", "a length past the message limit", "not what it was written as"],
)
async def test_a_damaged_file_is_an_internal_error_naming_the_job_and_the_file(
    js: JetStreamContext, damage: str
) -> None:
    job, predictions = a_job()
    store = result_store("", js)
    whole = b"".join(result_record(result_of(p)) for p in predictions)
    first = len(result_record(result_of(predictions[0])))
    damaged = {
        "cut short": whole[:-5],
        "a length of 11 bytes": whole[:first] + b"\xff" * 11,
        "a length past the message limit": whole[:first] + varint(limits.MAX_MESSAGE_BYTES + 1) + b"{",
        "not what it was written as": whole,  # its digest is found wrong after the last chunk
    }[damage]
    await store.put(stored_name(job), damaged)
    if damage == "not what it was written as":
        store = Tampered(store)  # type: ignore[assignment]
    results = Files(RecordsOf(job, predictions), store)  # type: ignore[arg-type]
    got: list[job_service_pb2.GetJobResultsResponse] = []

    async def download() -> None:
        async for result in results.read("acme", job.name):
            got.append(result)

    with pytest.raises(FerryError) as failed:
        await asyncio.wait_for(download(), 30)
    error = failed.value
    assert error.code == grpc.StatusCode.INTERNAL and error.reason == "BACKEND_ERROR"
    assert job.name in error.message and stored_name(job) in error.message, error.message
    assert error.metadata == {"name": job.name, "file": stored_name(job)}
    assert results.builder.builds == 0  # the damaged file was found, not rebuilt over
    whole_before = {"cut short": 2, "not what it was written as": 3}.get(damage, 1)
    assert got == [result_of(p) for p in predictions[:whole_before]]
