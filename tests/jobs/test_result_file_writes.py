"""How a result file is written (services/jobs/result_files.py): in pieces of a bounded size as
store's records are read, seen by readers only once whole, in both stores (the Object Store on a
real nats-server, S3 on moto's server: conftest.py).

Store is stood in for by the records it would return, in pages; a stand-in can pause after some
pages (a reader looks meanwhile) or fail (store went away midway).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterable

import boto3
import pytest
from nats.js import JetStreamContext
from nats.js.object_store import OBJ_ALL_CHUNKS_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE

from ferry.jobs.v1 import job_pb2
from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2
from ferry.types.v1 import types_pb2
from services.common import limits
from services.common.errors import Unavailable
from services.common.result_stores import BUCKET, NatsResults, ResultStore, S3Results, result_store
from services.jobs.result_files import object_name, result_of, result_record
from tests.jobs.test_result_file import CountedChunks, Files, RecordsOf

WAIT_S = 30.0
PAGE = 250


class Large:
    """A finished job's 3,000 records at top_k 100 (about 5.4 KB each, their labels padded to the
    size their JSON lines had: a 16 MB file) and its file's records, made once for the module;
    each test's job has a name of its own, so a file of its own."""

    def __init__(self, items: int = 3000) -> None:
        scores = [(f"label number {k}, padded as a JSON line was", k / 1000, k) for k in range(100)]
        classes = [types_pb2.ClassScore(label=label, score=score, index=k) for label, score, k in scores]
        ok = prediction_pb2.PREDICTION_STATE_SUCCEEDED
        self.predictions = [
            prediction_pb2.Prediction(
                name=f"predictions/{uuid.uuid4()}", item_index=i, state=ok, classes=classes
            )
            for i in range(items)
        ]
        self.records = [result_record(result_of(p)) for p in self.predictions]
        self.file = b"".join(self.records)

    def job(self) -> job_pb2.Job:
        return job_pb2.Job(
            name=f"jobs/{uuid.uuid4()}", state=job_pb2.JOB_STATE_SUCCEEDED, items_total=len(self.predictions)
        )


@pytest.fixture(scope="module")
def large() -> Large:
    return Large()


class Counted(CountedChunks):
    """A result store that counts the pieces its writers hand it, and their largest."""

    def __init__(self, inner: ResultStore) -> None:
        super().__init__(inner)
        self.pieces = 0
        self.largest = 0

    async def put_pieces(self, name: str, pieces: AsyncIterable[bytes | bytearray]) -> bool:
        async def counted() -> AsyncIterable[bytes | bytearray]:
            async for piece in pieces:
                self.pieces += 1
                self.largest = max(self.largest, len(piece))
                yield piece

        return await self.inner.put_pieces(name, counted())


class Paused(RecordsOf):
    """Store's records in pages that stop after ``pages`` pages: until ``go`` is set, or for good
    with UNAVAILABLE (``fail``)."""

    def __init__(
        self, job: job_pb2.Job, predictions: list[prediction_pb2.Prediction], pages: int, fail: bool = False
    ) -> None:
        super().__init__(job, predictions, page=PAGE)
        self._pages, self.fail = pages, fail
        self.paused = asyncio.Event()
        self.go = asyncio.Event()

    async def list_predictions(
        self, tenant: str, request: prediction_service_pb2.ListPredictionsRequest
    ) -> prediction_service_pb2.ListPredictionsResponse:
        if self.listings == self._pages:
            self.paused.set()
            if self.fail:
                raise Unavailable("store is unavailable", reason="STORE_UNAVAILABLE")
            await self.go.wait()
        return await super().list_predictions(tenant, request)


async def chunk_subjects(js: JetStreamContext) -> int:
    """Objects' chunk subjects with messages in the result files' bucket (one per object stored)."""
    bucket = result_store("", js)
    assert await bucket.exists("none") is False  # creates the bucket if this test is the first
    info = await js.stream_info(
        OBJ_STREAM_TEMPLATE.format(bucket=BUCKET), OBJ_ALL_CHUNKS_PRE_TEMPLATE.format(bucket=BUCKET)
    )
    return len(info.state.subjects or {})


def open_uploads(store: ResultStore) -> list[str]:
    """The keys of S3 multipart uploads begun and neither completed nor aborted."""
    assert isinstance(store, S3Results)
    answer = boto3.client("s3").list_multipart_uploads(Bucket="ferry-results")
    return [upload["Key"] for upload in answer.get("Uploads", [])]


async def test_a_file_of_thousands_of_records_is_written_in_pieces_and_read_back_whole(
    result_files: ResultStore, js: JetStreamContext, large: Large
) -> None:
    job, records, expected = large.job(), large.records, large.file
    counted = Counted(result_files)
    results = Files(RecordsOf(job, large.predictions, page=PAGE), counted)  # type: ignore[arg-type]

    name = await results.write("acme", job)

    assert counted.pieces >= 3  # 5 MiB and a record each: never the whole file
    bound = limits.RESULT_FILE_PIECE_BYTES + max(len(record) for record in records)
    assert results.largest_piece <= bound and counted.largest <= bound, (results.largest_piece, bound)
    stored = await result_files.get(name)  # the Object Store's read checks the recorded digest
    assert len(stored) == len(expected) and stored == expected
    if isinstance(result_files, NatsResults):
        info = await (await js.object_store(BUCKET)).get_info(name)
        digest = base64.urlsafe_b64encode(hashlib.sha256(expected).digest()).decode()
        assert info.digest == f"SHA-256={digest}"
        # nats.py's chunk size, as its put; a piece's last chunk may be short
        full = -(-len(expected) // (128 * 1024))
        assert full <= (info.chunks or 0) <= full + counted.pieces
    assert [r.index async for r in results.read("acme", job.name)] == list(range(3000))


async def test_small_pieces_hold_the_builder_to_their_size(js: JetStreamContext, large: Large) -> None:
    job, one = large.job(), len(large.records[0])
    counted = Counted(result_store("", js))
    records = RecordsOf(job, large.predictions, page=PAGE)
    results = Files(records, counted, piece_bytes=256 * 1024)  # type: ignore[arg-type]
    name = await results.write("acme", job)
    assert counted.pieces >= len(large.file) // (256 * 1024 + one)  # about 60
    assert results.largest_piece <= 256 * 1024 + one
    assert await counted.get(name) == large.file


async def test_a_reader_during_the_write_finds_no_file(result_files: ResultStore, large: Large) -> None:
    job = large.job()
    records = Paused(job, large.predictions, pages=9)  # 2,250 records, about 12 MB: two pieces stored
    counted = Counted(result_files)
    results = Files(records, counted)  # type: ignore[arg-type]
    writing = asyncio.create_task(results.write("acme", job))
    try:
        await asyncio.wait_for(records.paused.wait(), WAIT_S)
        assert counted.pieces == 2  # the first two pieces are stored, the third is being built
        name = object_name(job)
        assert await result_files.exists(name) is False
        with pytest.raises(KeyError):
            await result_files.get(name)
        with pytest.raises(KeyError):
            [chunk async for chunk in result_files.chunks(name)]
    finally:
        records.go.set()
        await writing
    assert await result_files.get(name) == large.file


@pytest.mark.parametrize("how", ["store fails", "the jobs service stops"])
async def test_a_write_stopped_midway_leaves_no_file_nor_its_pieces(
    result_files: ResultStore, js: JetStreamContext, large: Large, how: str
) -> None:
    job = large.job()
    records = Paused(job, large.predictions, pages=9, fail=how == "store fails")
    counted = Counted(result_files)
    results = Files(records, counted)  # type: ignore[arg-type]
    subjects = await chunk_subjects(js)

    writing = asyncio.create_task(results.write("acme", job))
    await asyncio.wait_for(records.paused.wait(), WAIT_S)
    if how == "the jobs service stops":
        await results.builder.close()
    with pytest.raises(Unavailable if how == "store fails" else asyncio.CancelledError):
        await writing

    assert counted.pieces == 2  # they had been stored ...
    name = object_name(job)
    assert await result_files.exists(name) is False  # ... and are no file
    with pytest.raises(KeyError):
        await result_files.get(name)
    if isinstance(result_files, NatsResults):
        assert await chunk_subjects(js) == subjects  # its chunks are deleted
    else:
        assert open_uploads(result_files) == []  # its upload is aborted (S3 keeps open ones' parts)
    again = Files(RecordsOf(job, large.predictions, page=PAGE), result_files)  # type: ignore[arg-type]
    assert await result_files.get(await again.write("acme", job)) == large.file


async def test_a_caller_that_gives_up_leaves_the_build_running_and_its_retry_waits_for_it(
    result_files: ResultStore, large: Large
) -> None:
    job = large.job()
    records = Paused(job, large.predictions, pages=9)
    counted = Counted(result_files)
    results = Files(records, counted)  # type: ignore[arg-type]

    first = asyncio.create_task(results.write("acme", job))
    await asyncio.wait_for(records.paused.wait(), WAIT_S)
    first.cancel()  # the gateway's deadline passed: its call is cancelled, not the build
    with pytest.raises(asyncio.CancelledError):
        await first
    retry = asyncio.create_task(results.write("acme", job))
    await asyncio.sleep(0.1)
    assert not retry.done()  # it waits for the build under way ...
    records.go.set()
    name = await asyncio.wait_for(retry, WAIT_S)

    assert results.builder.builds == 1  # ... and starts none of its own
    assert records.listings == -(-len(large.predictions) // PAGE)  # each page read once
    assert await result_files.get(name) == large.file


async def test_two_jobs_processes_writing_a_file_at_once_leave_one_whole_file(
    result_files: ResultStore, js: JetStreamContext, large: Large
) -> None:
    job = large.job()
    both = [Paused(job, large.predictions, pages=9) for _ in range(2)]
    processes = [Files(records, result_files) for records in both]  # type: ignore[arg-type]
    subjects = await chunk_subjects(js)

    writing = [asyncio.create_task(p.write("acme", job)) for p in processes]
    for records in both:  # each has stored two pieces of its own before either finishes
        await asyncio.wait_for(records.paused.wait(), WAIT_S)
    for records in both:
        records.go.set()
    names = await asyncio.gather(*writing)

    assert names == [object_name(job)] * 2
    assert await result_files.get(names[0]) == large.file
    if isinstance(result_files, NatsResults):
        assert await chunk_subjects(js) == subjects + 1  # the other writer's chunks are deleted
    else:
        assert open_uploads(result_files) == []
