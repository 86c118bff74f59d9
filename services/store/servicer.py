"""store's gRPC handlers: tenant-scoped reads and the few writes that must be synchronous."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from typing import Any, TypeVar

import asyncpg
import grpc
from asyncpg.pool import PoolConnectionProxy

from ferry.jobs.v1 import job_pb2
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.common import paging
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.store import codec
from services.store.keys import ApiKeyHandlers
from services.store.outage import UNREACHABLE, OutageLog, database_unavailable
from services.store.repositories import jobs, predictions, queries
from services.store.repositories.newest import newest_first
from services.store.retries import retry_job

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")


def _tenant(tenant: str) -> str:
    """Every read and write is scoped by tenant, so a request without one is a caller bug."""
    if not tenant:
        raise InvalidArgument("tenant is required; pass the caller's tenant", reason="MISSING_TENANT")
    return tenant


def _prediction_filter(request: pb.ListPredictionsRequest) -> queries.PredictionFilter:
    """The listing's filter; the gateway validated the public fields, this checks the internal ones."""
    if not 0.0 <= request.min_score <= 1.0:
        raise InvalidArgument(
            f"min_score must be between 0 and 1; got {request.min_score:g}", reason="INVALID_MIN_SCORE"
        )
    return queries.PredictionFilter(
        tenant=_tenant(request.tenant),
        model=request.model,
        label=request.label,
        min_score=request.min_score,
        start_time=request.start_time.ToDatetime(tzinfo=UTC) if request.HasField("start_time") else None,
        end_time=request.end_time.ToDatetime(tzinfo=UTC) if request.HasField("end_time") else None,
        job_id=codec.parse_id(request.job_id, "job") if request.job_id else None,
        source=request.source,
        state=request.state,
    )


def _item_position(position: dict[str, Any]) -> int:
    """The item index a job listing's page token continues after (-1 for the first page)."""
    after = position.get("i", -1) if position.keys() <= {"i"} else None
    if type(after) is not int or not -1 <= after < 2**31:  # item_index is a Postgres integer
        raise InvalidArgument(
            "page_token is not valid for a job's predictions; pass the next_page_token of the"
            " previous page of the same listing unchanged",
            reason="INVALID_PAGE_TOKEN",
        )
    return after


def _next_token(rows: list[asyncpg.Record], limit: int) -> str:
    if len(rows) <= limit:
        return ""
    last = rows[limit - 1]
    return paging.encode_page_token({"t": last["create_time"].isoformat(), "id": str(last["id"])})


class StoreServicer(ApiKeyHandlers, store_service_pb2_grpc.StoreServiceServicer):
    """Implements ferry.store.v1.StoreService over a connection pool."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._outage = OutageLog(log, "answering UNAVAILABLE", "calls answered UNAVAILABLE")

    def bind(self, pool: asyncpg.Pool) -> None:
        """Starts answering with ``pool`` (the server registers handlers before the pool exists).

        No call arrives before this: the runtime's readiness gate answers them until start returned.
        """
        self._pool = pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection; losing Postgres on the way is UNAVAILABLE, never INTERNAL.

        The one place the RPC path maps an outage: until the readiness probe notices it, calls
        still reach the pool, and their callers should hear "retry shortly", with one log line.
        """
        if self._pool is None:
            raise RuntimeError("StoreServicer.bind was not called before serving")
        try:
            async with self._pool.acquire() as connection:
                yield connection
        except UNREACHABLE as err:
            self._outage.failed(err)
            raise database_unavailable() from err
        self._outage.succeeded()

    async def GetPrediction(
        self, request: pb.GetPredictionRequest, context: Context
    ) -> pb.GetPredictionResponse:
        tenant = _tenant(request.tenant)
        prediction_id = codec.parse_id(request.id, "prediction")
        async with self._connection() as connection:
            row = await predictions.get(connection, tenant, prediction_id)
        if row is None:
            raise NotFound(
                f"prediction predictions/{prediction_id} not found (records appear a moment after"
                " the prediction; check the id)",
                reason="PREDICTION_NOT_FOUND",
                metadata={"name": f"predictions/{prediction_id}"},
            )
        return pb.GetPredictionResponse(prediction=codec.prediction_from_row(row))

    async def ListPredictions(
        self, request: pb.ListPredictionsRequest, context: Context
    ) -> pb.ListPredictionsResponse:
        where = _prediction_filter(request)
        limit = paging.page_size(request.page_size)
        position = paging.decode_page_token(request.page_token)
        if where.job_id is not None:
            after = _item_position(position)
            async with self._connection() as connection:
                rows = await queries.list_job_items(connection, where, limit + 1, after)
            more = len(rows) > limit
            token = paging.encode_page_token({"i": rows[limit - 1]["item_index"]}) if more else ""
        else:
            keyset = codec.keyset_position(position)
            async with self._connection() as connection:
                rows = await queries.list_newest(connection, where, limit + 1, keyset)
            token = _next_token(rows, limit)
        return pb.ListPredictionsResponse(
            predictions=[codec.prediction_from_row(r) for r in rows[:limit]], next_page_token=token
        )

    async def GetModelStats(
        self, request: pb.GetModelStatsRequest, context: Context
    ) -> pb.GetModelStatsResponse:
        tenant = _tenant(request.tenant)
        if not request.model:
            raise InvalidArgument("model is required", reason="MISSING_MODEL")
        if not (request.HasField("start_time") and request.HasField("end_time")):
            raise InvalidArgument("start_time and end_time are required", reason="MISSING_TIME_RANGE")
        start = request.start_time.ToDatetime(tzinfo=UTC)
        end = request.end_time.ToDatetime(tzinfo=UTC)
        async with self._connection() as connection:
            row, labels = await queries.model_stats(
                connection, tenant, request.model, start, end, request.top_labels or 10
            )
        return pb.GetModelStatsResponse(stats=codec.model_stats(row, labels))

    async def CreateJob(self, request: pb.CreateJobRequest, context: Context) -> pb.CreateJobResponse:
        tenant = _tenant(request.tenant)
        job_id = codec.parse_id(request.job.name.removeprefix("jobs/"), "job")
        # A job by manifest is recorded EXPANDING before its items are counted (the jobs service
        # tells store its total when the manifest is read).
        expanding = request.job.state == job_pb2.JOB_STATE_EXPANDING
        if request.job.items_total < (0 if expanding else 1):
            raise InvalidArgument(
                f"a job needs at least one item; items_total is {request.job.items_total}",
                reason="EMPTY_JOB",
            )
        if not request.job.model.removeprefix("models/"):
            raise InvalidArgument("job.model is required, as 'models/<model>'", reason="MISSING_MODEL")
        async with self._connection() as connection, connection.transaction():
            try:
                row, created = await jobs.create(connection, job_id, tenant, request.job)
            except LookupError:
                raise AlreadyExists(f"job id {job_id} is taken", reason="JOB_ID_TAKEN") from None
        return pb.CreateJobResponse(job=codec.job_from_row(row), created=created)

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.GetJobResponse:
        tenant = _tenant(request.tenant)
        job_id = codec.parse_id(request.id, "job")
        async with self._connection() as connection:
            row = await jobs.get(connection, tenant, job_id)
        return pb.GetJobResponse(job=codec.job_from_row(_found(row, job_id)))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        tenant = _tenant(request.tenant)
        limit = paging.page_size(request.page_size)
        after = codec.keyset_position(paging.decode_page_token(request.page_token))
        async with self._connection() as connection:
            rows = await newest_first(connection, "jobs", tenant, limit + 1, after)
        return pb.ListJobsResponse(
            jobs=[codec.job_from_row(r) for r in rows[:limit]], next_page_token=_next_token(rows, limit)
        )

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.CancelJobResponse:
        tenant = _tenant(request.tenant)
        job_id = codec.parse_id(request.id, "job")
        async with self._connection() as connection, connection.transaction():
            row = await jobs.cancel(connection, tenant, job_id)
        return pb.CancelJobResponse(job=codec.job_from_row(_found(row, job_id)))

    async def RetryJob(self, request: pb.RetryJobRequest, context: Context) -> pb.RetryJobResponse:
        tenant = _tenant(request.tenant)
        job_id = codec.parse_id(request.id, "job")
        async with self._connection() as connection, connection.transaction():
            retry = _found(await retry_job(connection, tenant, job_id), job_id)
        return pb.RetryJobResponse(
            job=codec.job_from_row(retry.job), item_indexes=retry.item_indexes, generation=retry.generation
        )


def _found(found: T | None, job_id: Any) -> T:
    if found is None:
        raise NotFound(
            f"job jobs/{job_id} not found", reason="JOB_NOT_FOUND", metadata={"name": f"jobs/{job_id}"}
        )
    return found
