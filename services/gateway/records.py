"""Reads of recorded predictions and jobs: tenant-scoped calls to store."""

from __future__ import annotations

from datetime import UTC, datetime

from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.models.v1 import model_service_pb2
from ferry.models.v1.model_stats_pb2 import ModelStats
from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from services.common import validation
from services.common.downstream import Backend
from services.common.validation import resource_id


def store_list_request(
    tenant: str, request: prediction_service_pb2.ListPredictionsRequest
) -> store_service_pb2.ListPredictionsRequest:
    """Validates a public listing's filters and maps them to store's request.

    Raises:
        InvalidArgument: a filter names a bad job or model, a score outside 0..1, an empty time
            range or an unknown enum value; the message names the field.
    """
    query = store_service_pb2.ListPredictionsRequest(
        tenant=tenant,
        page_size=request.page_size,
        page_token=request.page_token,
        job_id=str(resource_id(request.job, "jobs")) if request.job else "",
        model=validation.model_id(request.model) if request.model else "",
        label=validation.label(request.label),
        min_score=validation.min_score(request.min_score),
        source=request.source,
        state=request.state,
    )
    validation.enum_value(request.source, prediction_pb2.PredictionSource, "source")
    validation.enum_value(request.state, prediction_pb2.PredictionState, "state")
    start = request.start_time if request.HasField("start_time") else None
    end = request.end_time if request.HasField("end_time") else None
    validation.time_range(start, end)
    if start is not None:
        query.start_time.CopyFrom(start)
    if end is not None:
        query.end_time.CopyFrom(end)
    return query


class Records:
    """Answers the public read RPCs from store; another tenant's resource is NOT_FOUND there."""

    def __init__(self, store: store_service_pb2_grpc.StoreServiceStub, backend: Backend) -> None:
        self._store = store
        self._backend = backend

    async def get_prediction(self, tenant: str, name: str) -> prediction_pb2.Prediction:
        """Returns the prediction ``predictions/{id}`` of ``tenant``."""
        request = store_service_pb2.GetPredictionRequest(
            tenant=tenant, id=str(resource_id(name, "predictions"))
        )
        answer: store_service_pb2.GetPredictionResponse = await self._backend.call(
            self._store.GetPrediction, request
        )
        return answer.prediction

    async def list_predictions(
        self, tenant: str, request: prediction_service_pb2.ListPredictionsRequest
    ) -> prediction_service_pb2.ListPredictionsResponse:
        """Returns a page of ``tenant``'s predictions that match the request's filters."""
        answer: store_service_pb2.ListPredictionsResponse = await self._backend.call(
            self._store.ListPredictions, store_list_request(tenant, request)
        )
        return prediction_service_pb2.ListPredictionsResponse(
            predictions=answer.predictions, next_page_token=answer.next_page_token
        )

    async def model_stats(self, tenant: str, request: model_service_pb2.GetModelStatsRequest) -> ModelStats:
        """Summarizes ``tenant``'s predictions of one model over the request's window, ending now."""
        model = validation.model_id(request.name, field="name")
        window, length = validation.stats_window(request.window)
        end = datetime.now(UTC)
        query = store_service_pb2.GetModelStatsRequest(tenant=tenant, model=model)
        query.start_time.FromDatetime(end - length)
        query.end_time.FromDatetime(end)
        answer: store_service_pb2.GetModelStatsResponse = await self._backend.call(
            self._store.GetModelStats, query
        )
        stats = answer.stats
        stats.model, stats.window = validation.model_name(model), window
        stats.start_time.CopyFrom(query.start_time)
        stats.end_time.CopyFrom(query.end_time)
        return stats

    async def has_records(self, tenant: str, model: str) -> bool:
        """Whether ``tenant`` has any recorded prediction of ``model`` (id), however old."""
        query = store_service_pb2.ListPredictionsRequest(tenant=tenant, model=model, page_size=1)
        answer: store_service_pb2.ListPredictionsResponse = await self._backend.call(
            self._store.ListPredictions, query
        )
        return len(answer.predictions) > 0

    async def get_job(self, tenant: str, name: str) -> job_pb2.Job:
        """Returns the job ``jobs/{id}`` of ``tenant``."""
        request = store_service_pb2.GetJobRequest(tenant=tenant, id=str(resource_id(name, "jobs")))
        answer: store_service_pb2.GetJobResponse = await self._backend.call(self._store.GetJob, request)
        return answer.job

    async def list_jobs(
        self, tenant: str, request: job_service_pb2.ListJobsRequest
    ) -> job_service_pb2.ListJobsResponse:
        """Returns a page of ``tenant``'s jobs, newest first."""
        answer: store_service_pb2.ListJobsResponse = await self._backend.call(
            self._store.ListJobs,
            store_service_pb2.ListJobsRequest(
                tenant=tenant, page_size=request.page_size, page_token=request.page_token
            ),
        )
        return job_service_pb2.ListJobsResponse(jobs=answer.jobs, next_page_token=answer.next_page_token)
