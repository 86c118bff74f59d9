"""Reading jobs' result files, kept in NATS JetStream Object Store or S3 (``result_stores.py``) and
built by the jobs service (``services/jobs/result_files.py``).

A file is the job's ``GetJobResultsResponse`` messages, serialized and length-delimited
(``services/common/delimited.py``). The gateway splits the file's chunks by that framing and sends
each message's bytes as they are: GetJobResults' response serializer passes bytes through
(``GatewayService.serialized_responses``), so no message is parsed here and serialized again, and
Envoy's transcoder prints each as one JSON line of ``GET /v1/jobs/{id}/results``. (Until session 14
the file was those JSON lines and the gateway parsed every one, pure Python, on the loop every
other tenant's call shares.)

The gateway builds no file: formatting a large job's records is CPU, and on the public gateway's
loop every other tenant's call waited behind it. It asks the job queue's owner for the file
(``JobQueueService.WriteResultFile``: found, or built there, once per file however many ask) when a
WatchJob sees the job end or on a GetJobResults, then streams it from the result store a chunk at
a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import json_format
from nats.js.errors import DigestMismatchError

from ferry.jobs.v1 import job_pb2, job_service_pb2
from services.common import delimited, limits
from services.common.errors import FerryError
from services.common.result_stores import ResultStore
from services.common.validation import resource_id

log = logging.getLogger(__name__)

#: Has the job queue make the result file of a tenant's job; returns its name in the store.
WriteFile = Callable[[str, str], Awaitable[str]]

#: The end of the name of a file of JSON lines, which a jobs service of before session 14 names
#: during a rolling upgrade (gateways first): such a file is still read, parsed line by line.
_JSON_LINES = ".jsonl"


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


async def _from_json_lines(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """The messages of a file of JSON lines (before session 14), serialized as GetJobResults sends them."""
    async for line in _lines(chunks):
        yield json_format.Parse(line, job_service_pb2.GetJobResultsResponse()).SerializeToString()


def _messages(file: str, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """The serialized messages of the result file ``file`` read in ``chunks``, by its form."""
    if file.endswith(_JSON_LINES):
        return _from_json_lines(chunks)
    return delimited.messages(chunks, limits.MAX_MESSAGE_BYTES)


def damaged(name: str, file: str, why: Exception) -> FerryError:
    """The error of a download whose stored file cannot be read whole (INTERNAL, BACKEND_ERROR)."""
    error = FerryError(
        f"the result file {file} of {name} is damaged ({why}); the results sent before this error are"
        " whole, the rest could not be read: an operator who deletes the file from the result store"
        " has it built again from the job's records on the next download",
        reason="BACKEND_ERROR",
        metadata={"name": name, "file": file},
    )
    error.code = grpc.StatusCode.INTERNAL
    return error


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

    async def read(self, tenant: str, name: str) -> AsyncGenerator[bytes, None]:
        """Yields the serialized ``GetJobResultsResponse`` messages of the finished job ``name``'s
        file, made first if need be, as its chunks are read: a download holds a chunk and a
        message, not the file, and parses none.

        Raises:
            FerryError: a bad name, an unknown job (NOT_FOUND), a job still running
                (FAILED_PRECONDITION), the file not made within the deadline, store, jobs or NATS
                unavailable, or the stored file damaged (INTERNAL: truncated, its framing broken or
                its digest wrong), after the messages before the damage.
        """
        resource_id(name, "jobs")  # a bad name is the caller's, answered here
        file = await self._write_file(tenant, name)
        async with (
            contextlib.aclosing(self._store.chunks(file)) as chunks,
            contextlib.aclosing(_messages(file, chunks)) as messages,
        ):
            try:
                async for message in messages:
                    yield message
            except (delimited.BrokenFraming, DigestMismatchError, json_format.ParseError) as err:
                log.error("the result file %s/%s of %s is damaged: %s", self._store.where, file, name, err)
                raise damaged(name, file, err) from err
