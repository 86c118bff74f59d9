"""Reads of recorded predictions and jobs: tenant-scoped calls to store."""

from __future__ import annotations

from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from services.gateway.downstream import Backend
from services.gateway.validation import resource_id


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
        """Returns a page of ``tenant``'s predictions, optionally only those of one job."""
        job_id = str(resource_id(request.job, "jobs")) if request.job else ""
        answer: store_service_pb2.ListPredictionsResponse = await self._backend.call(
            self._store.ListPredictions,
            store_service_pb2.ListPredictionsRequest(
                tenant=tenant, page_size=request.page_size, page_token=request.page_token, job_id=job_id
            ),
        )
        return prediction_service_pb2.ListPredictionsResponse(
            predictions=answer.predictions, next_page_token=answer.next_page_token
        )

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
