"""Result files: one JSONL file per finished job, kept in NATS JetStream Object Store or S3
(``result_stores.py``).

A line is a ``GetJobResultsResponse`` in proto JSON (field names as in the proto, enums by name,
fields without presence printed even when empty), which is also how Envoy's transcoder prints
each streamed message: the REST stream of ``GET /v1/jobs/{id}/results`` is the file, line by line.

The file is written the first time the job is seen finished: by a WatchJob that sees it end
(``ferry job --wait``, ``ferry watch``), or else by the first GetJobResults call. It is built from
store's records, so it says exactly what ListJobItems says. Each retry round (``retry_count``) gets a
file of its own, so a job that RetryJob reopened gets a new file when it ends again.

A file is built in bounded memory: store's records are read a page at a time and their lines
sent to the result store in pieces of ``limits.RESULT_FILE_PIECE_BYTES`` (and a line) as they are
made, never the whole file (about 55 MB at 10,000 items and top_k 100; session 11 held it whole).
The file is seen by readers only once whole, and two gateways that build it at once store one
whole file (``result_stores.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncGenerator, AsyncIterator

from google.protobuf import json_format

from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2
from services.common import limits
from services.common.errors import FailedPrecondition
from services.common.job_states import FINISHED
from services.common.result_stores import ResultStore
from services.gateway.records import Records

log = logging.getLogger(__name__)

# Records read from store per page while a file is built: a record at top_k 100 is about 2.6 KB of
# protobuf, so a page is about 0.7 MB, well under a piece (1000 a page were 2.6 MB).
_PAGE = 250


def result_line(result: job_service_pb2.GetJobResultsResponse) -> bytes:
    """One line of a result file (compact proto JSON and a newline)."""
    fields = json_format.MessageToDict(
        result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def result_of(prediction: prediction_pb2.Prediction) -> job_service_pb2.GetJobResultsResponse:
    """The result line of one item's record: its classes, embedding, JSON output or tensors."""
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


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The lines of a file read in ``chunks`` (without their newlines), as the chunks come.

    A line longer than a chunk (a record's tensors) is kept in pieces and joined once.
    """
    head: list[bytes] = []  # the start of a line that goes on in the next chunk
    async for chunk in chunks:
        *lines, tail = chunk.split(b"\n")
        if lines and head:
            lines[0] = b"".join([*head, lines[0]])
            head = []
        for line in lines:
            yield line
        if tail:
            head.append(tail)
    if head:
        yield b"".join(head)


def object_name(job: job_pb2.Job) -> str:
    """The file of the job's current retry round: ``<job id>/round-<retry_count>.jsonl``."""
    return f"{job.name.removeprefix('jobs/')}/round-{job.retry_count}.jsonl"


class JobResults:
    """Writes and reads result files of a tenant's jobs, in ``store``."""

    def __init__(
        self, records: Records, store: ResultStore, piece_bytes: int = limits.RESULT_FILE_PIECE_BYTES
    ) -> None:
        self._records = records
        self._store = store
        self._piece_bytes = piece_bytes
        self.largest_piece = 0
        """The most bytes of a file this has held at once while building it (for tests and benchmarks)."""
        self._writing: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        """A lock per file being written, held by those waiting for it: one builder per file."""

    async def write(self, tenant: str, job: job_pb2.Job) -> str:
        """Builds the finished ``job``'s file from store's records (unless it exists); returns its name.

        One call in this gateway builds a given file at a time; others wait for it and find it
        written (each download of a new file used to build it, holding it whole). Another gateway
        building it at once stores the same lines; one of the two files is kept whole.
        """
        name = object_name(job)
        lock = self._writing.get(name)
        if lock is None:
            lock = self._writing[name] = asyncio.Lock()
        async with lock:
            if await self._store.exists(name):
                return name
            counted = _Count()
            pieces = self._pieces(self._lines_of(tenant, job.name, counted))
            async with contextlib.aclosing(pieces):
                kept = await self._store.put_pieces(name, pieces)
        if kept:
            log.info("wrote the result file %s/%s (%d items)", self._store.where, name, counted.lines)
        else:
            log.info("another gateway wrote the result file %s/%s meanwhile", self._store.where, name)
        return name

    async def write_quietly(self, tenant: str, job: job_pb2.Job) -> None:
        """``write``, for a watcher: a failure is logged and left to the first GetJobResults."""
        try:
            await self.write(tenant, job)
        except Exception:  # a watch must not fail over a file it only prepares
            log.warning("could not write the result file of %s; GetJobResults will", job.name, exc_info=True)

    async def read(
        self, tenant: str, name: str
    ) -> AsyncGenerator[job_service_pb2.GetJobResultsResponse, None]:
        """Yields the lines of the finished job ``name``'s file, writing it first if need be, as
        its chunks are read: a download holds a chunk and a line, not the file.

        Raises:
            FerryError: a bad name, an unknown job (NOT_FOUND), a job still running
                (FAILED_PRECONDITION), or store or NATS unavailable.
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
        async with contextlib.aclosing(self._store.chunks(await self.write(tenant, job))) as chunks:
            async for line in _lines(chunks):
                yield json_format.Parse(line, job_service_pb2.GetJobResultsResponse())

    async def _pieces(self, lines: AsyncIterator[bytes]) -> AsyncGenerator[bytearray, None]:
        """The ``lines`` joined into pieces of at least ``piece_bytes`` (the last may be smaller):
        a piece holds at most ``piece_bytes`` and one line, and is handed on, not copied."""
        held = bytearray()
        async for line in lines:
            held += line
            if len(held) >= self._piece_bytes:
                self.largest_piece = max(self.largest_piece, len(held))
                piece, held = held, bytearray()
                yield piece
        if held:
            self.largest_piece = max(self.largest_piece, len(held))
            yield held

    async def _lines_of(self, tenant: str, job: str, counted: _Count) -> AsyncIterator[bytes]:
        async for prediction in self._records_of(tenant, job):
            counted.lines += 1
            yield result_line(result_of(prediction))

    async def _records_of(self, tenant: str, job: str) -> AsyncIterator[prediction_pb2.Prediction]:
        token = ""
        while True:
            page = await self._records.list_predictions(
                tenant,
                prediction_service_pb2.ListPredictionsRequest(job=job, page_size=_PAGE, page_token=token),
            )
            for prediction in page.predictions:
                yield prediction
            token = page.next_page_token
            if not token:
                return


class _Count:
    """Lines written so far, for the log."""

    lines = 0
