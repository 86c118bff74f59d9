"""Result files: one file per finished job, built here by the job queue's owner and kept in
NATS JetStream Object Store or S3 (``services/common/result_stores.py``); the gateway only reads them.

A file is the job's ``GetJobResultsResponse`` messages, one per item in index order, serialized and
length-delimited (``services/common/delimited.py``): exactly the messages GetJobResults streams, so
the gateway sends each one's bytes unparsed and Envoy's transcoder prints each as a JSON line for
``GET /v1/jobs/{id}/results``. (Until session 14 a file was those lines, in proto JSON: the gateway
parsed every line only for gRPC to serialize it again. Such a file, named ``round-<n>.jsonl``, is
simply not read any more: its job's file is built again under the new name, ``object_name``.)

The file is built when the gateway first needs it (``JobQueueService.WriteResultFile``): a WatchJob
that sees the job end, or else the first GetJobResults. It is built from store's records, so it
says exactly what ListJobItems says. Each retry round (``retry_count``) gets a file of its own, so
a job that RetryJob reopened gets a new file when it ends again.

A file is built in bounded memory: store's records are read a page at a time, and their messages go
to the result store in pieces of ``limits.RESULT_FILE_PIECE_BYTES`` (and a message), never the
whole file (tens of MB at 10,000 items and top_k 100), and a page's messages are made in a worker
thread (copying records' fields is CPU: this process's loop, the runners' too, keeps turning
meanwhile). A build runs in a task of its own, not the call's: a caller that gives up
(its deadline passed) leaves it running, and its retry waits for the same build. The file is seen
by readers only once whole, and two jobs processes that build it at once store one whole file
(``result_stores.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from services.common import limits
from services.common.delimited import framed
from services.common.downstream import Backend
from services.common.errors import FailedPrecondition
from services.common.ids import parse_name
from services.common.job_states import FINISHED
from services.common.result_stores import ResultStore

log = logging.getLogger(__name__)

# Records read from store per page while a file is built: a record at top_k 100 is about 2.6 KB of
# protobuf, so a page is about 0.7 MB, well under a piece (1000 a page were 2.6 MB).
_PAGE = 250
#: The end of a result file's name: length-delimited protobuf (``.jsonl`` before session 14).
SUFFIX = ".pb"


def result_record(result: job_service_pb2.GetJobResultsResponse) -> bytes:
    """One item's record in a result file: the message serialized, after its length."""
    return framed(result.SerializeToString())


def result_of(prediction: prediction_pb2.Prediction) -> job_service_pb2.GetJobResultsResponse:
    """The result of one item's record: its classes, embedding, JSON output or tensors."""
    result = job_service_pb2.GetJobResultsResponse(
        index=prediction.item_index,
        # An upload's item is named by its file or line; one listed in CreateJob (or recorded
        # before names were kept) by its place in the request.
        input=prediction.input_name or f"inputs[{prediction.item_index}]",
        state=prediction.state,
        classes=prediction.classes,
        prediction=prediction.name,
        embedding=prediction.embedding,
        tensors=prediction.tensors,
    )
    if prediction.HasField("error"):
        result.error.CopyFrom(prediction.error)
    if prediction.HasField("output"):
        result.output.CopyFrom(prediction.output)
    return result


def _page_records(predictions: Sequence[prediction_pb2.Prediction]) -> list[bytes]:
    return [result_record(result_of(prediction)) for prediction in predictions]


def object_name(job: job_pb2.Job) -> str:
    """The file of the job's current retry round: ``<job id>/round-<retry_count>.pb``.

    Not ``.jsonl``, the name of the JSON lines files of before session 14: a store that still holds
    one builds the job's file again instead of serving a file of the other form.
    """
    return f"{job.name.removeprefix('jobs/')}/round-{job.retry_count}{SUFFIX}"


class JobRecords(Protocol):
    """What a build reads from store: the job, and its records a page at a time."""

    async def get_job(self, tenant: str, name: str) -> job_pb2.Job: ...

    async def list_predictions(
        self, tenant: str, request: prediction_service_pb2.ListPredictionsRequest
    ) -> prediction_service_pb2.ListPredictionsResponse: ...


class StoreRecords:
    """``JobRecords`` read from store, each call with the store backend's deadline and errors."""

    def __init__(self, store: store_service_pb2_grpc.StoreServiceStub, backend: Backend) -> None:
        self._store = store
        self._backend = backend

    async def get_job(self, tenant: str, name: str) -> job_pb2.Job:
        request = store_service_pb2.GetJobRequest(tenant=tenant, id=str(parse_name(name, "jobs")))
        answer: store_service_pb2.GetJobResponse = await self._backend.call(self._store.GetJob, request)
        return answer.job

    async def list_predictions(
        self, tenant: str, request: prediction_service_pb2.ListPredictionsRequest
    ) -> prediction_service_pb2.ListPredictionsResponse:
        query = store_service_pb2.ListPredictionsRequest(
            tenant=tenant,
            job_id=str(parse_name(request.job, "jobs")),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        answer: store_service_pb2.ListPredictionsResponse = await self._backend.call(
            self._store.ListPredictions, query
        )
        return prediction_service_pb2.ListPredictionsResponse(
            predictions=answer.predictions, next_page_token=answer.next_page_token
        )


@dataclass(frozen=True)
class Written:
    """A result file, whole in the result store."""

    name: str
    """Its name there (``object_name``)."""
    job: job_pb2.Job
    """The finished job it is of."""
    built: bool
    """Whether it was made during the call (by a build the call started or waited for)."""


class ResultFiles:
    """Builds the result files of finished jobs into ``store``, one build per file at a time."""

    def __init__(
        self, records: JobRecords, store: ResultStore, piece_bytes: int = limits.RESULT_FILE_PIECE_BYTES
    ) -> None:
        self._records = records
        self._store = store
        self._piece_bytes = piece_bytes
        self.largest_piece = 0
        """The most bytes of a file this has held at once while building it (for tests and benchmarks)."""
        self.builds = 0
        """Builds started (for tests: calls at once for a new file start one)."""
        self._building: dict[str, asyncio.Task[bool]] = {}
        """The build under way of each file: a later call (a retry too) waits for it."""

    async def write(self, tenant: str, name: str) -> Written:
        """The file of the finished job ``name`` of ``tenant``: found stored, or built from store's
        records (or the build under way waited for).

        Raises:
            FerryError: a bad name, an unknown job (NOT_FOUND), a job still running
                (FAILED_PRECONDITION, JOB_NOT_FINISHED), or store or NATS unavailable.
        """
        job = await self._records.get_job(tenant, name)
        if job.state not in FINISHED:
            raise FailedPrecondition(
                f"{job.name} has not finished yet ({job_pb2.JobState.Name(job.state)}); its result file is"
                f" written when it ends: watch it (GET /v1/{job.name}:watch, `ferry watch {job.name}`)"
                " and ask again",
                reason="JOB_NOT_FINISHED",
                metadata={"name": job.name},
            )
        file = object_name(job)
        building = self._building.get(file)
        if building is None:
            if await self._store.exists(file):
                return Written(file, job, built=False)
            building = self._building.get(file)  # one may have started while exists() was asked
        if building is None:
            building = self._building[file] = asyncio.create_task(self._build(tenant, job, file))
            building.add_done_callback(lambda done: self._built(file, done))
            self.builds += 1
        # Shielded: the caller going away (its deadline) must not end a build others wait for.
        await asyncio.shield(building)
        return Written(file, job, built=True)

    async def close(self) -> None:
        """Stops the builds under way (the service is stopping): each deletes what it stored."""
        building = list(self._building.values())
        for task in building:
            task.cancel()
        await asyncio.gather(*building, return_exceptions=True)

    def _built(self, file: str, done: asyncio.Task[bool]) -> None:
        self._building.pop(file, None)
        if not done.cancelled() and done.exception() is not None:  # retrieved: its waiters got it
            log.warning("could not write the result file %s: %s", file, done.exception())

    async def _build(self, tenant: str, job: job_pb2.Job, file: str) -> bool:
        if await self._store.exists(file):  # another jobs process stored it meanwhile
            return False
        counted = [0]
        pieces = self._pieces(self._records_of(tenant, job.name, counted))
        async with contextlib.aclosing(pieces):
            kept = await self._store.put_pieces(file, pieces)
        if kept:
            log.info("wrote the result file %s/%s (%d items)", self._store.where, file, counted[0])
        else:
            log.info("another jobs process wrote the result file %s/%s meanwhile", self._store.where, file)
        return kept

    async def _pieces(self, records: AsyncIterator[bytes]) -> AsyncGenerator[bytearray, None]:
        """The ``records`` joined into pieces of at least ``piece_bytes`` (the last may be smaller):
        a piece holds at most ``piece_bytes`` and one record, and is handed on, not copied."""
        held = bytearray()
        async for record in records:
            held += record
            if len(held) >= self._piece_bytes:
                self.largest_piece = max(self.largest_piece, len(held))
                piece, held = held, bytearray()
                yield piece
        if held:
            self.largest_piece = max(self.largest_piece, len(held))
            yield held

    async def _records_of(self, tenant: str, job: str, counted: list[int]) -> AsyncIterator[bytes]:
        token = ""
        while True:
            page = await self._records.list_predictions(
                tenant,
                prediction_service_pb2.ListPredictionsRequest(job=job, page_size=_PAGE, page_token=token),
            )
            # Copying a record's fields into its result is CPU (its 100 classes cost far more than
            # serializing them): a page's worth in a worker thread lets this process's loop run
            # between its records.
            for record in await asyncio.to_thread(_page_records, page.predictions):
                counted[0] += 1
                yield record
            token = page.next_page_token
            if not token:
                return
