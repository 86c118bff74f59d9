"""Reading jobs' result files: one JSONL file per finished job, kept in NATS JetStream Object Store
or S3 (``result_stores.py``) and built by the jobs service (``services/jobs/result_files.py``).

A line is a ``GetJobResultsResponse`` in proto JSON, which is also how Envoy's transcoder prints
each streamed message: the REST stream of ``GET /v1/jobs/{id}/results`` is the file, line by line.

The gateway builds no file: formatting a large job's records (about 55 MB at 10,000 items and
top_k 100) is CPU, and on the public gateway's loop every other tenant's call waited behind it.
It asks the job queue's owner for the file (``JobQueueService.WriteResultFile``: found, or built
there, once per file however many ask) when a WatchJob sees the job end or on a GetJobResults,
then streams it from the result store a chunk at a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from google.protobuf import json_format

from ferry.jobs.v1 import job_pb2, job_service_pb2
from services.common.result_stores import ResultStore
from services.common.validation import resource_id

log = logging.getLogger(__name__)

#: Has the job queue make the result file of a tenant's job; returns its name in the store.
WriteFile = Callable[[str, str], Awaitable[str]]


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


class JobResults:
    """Reads the result files of a tenant's jobs from ``store``, once ``write_file`` (the job
    queue's WriteResultFile) made them."""

    def __init__(self, write_file: WriteFile, store: ResultStore) -> None:
        self._write_file = write_file
        self._store = store

    async def write_quietly(self, tenant: str, job: job_pb2.Job) -> None:
        """Has the finished ``job``'s file made, for a watcher: a failure is logged and left to the
        first GetJobResults."""
        try:
            await self._write_file(tenant, job.name)
        except Exception:  # a watch must not fail over a file it only prepares
            log.warning(
                "could not have the result file of %s written; GetJobResults will", job.name, exc_info=True
            )

    async def read(
        self, tenant: str, name: str
    ) -> AsyncGenerator[job_service_pb2.GetJobResultsResponse, None]:
        """Yields the lines of the finished job ``name``'s file, made first if need be, as its
        chunks are read: a download holds a chunk and a line, not the file.

        Raises:
            FerryError: a bad name, an unknown job (NOT_FOUND), a job still running
                (FAILED_PRECONDITION), the file not made within the deadline, or store, jobs or
                NATS unavailable.
        """
        resource_id(name, "jobs")  # a bad name is the caller's, answered here
        async with contextlib.aclosing(self._store.chunks(await self._write_file(tenant, name))) as chunks:
            async for line in _lines(chunks):
                yield json_format.Parse(line, job_service_pb2.GetJobResultsResponse())
