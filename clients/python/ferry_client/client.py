"""A synchronous client for Ferry's public gRPC API (through Envoy or straight to gateway)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ferry.jobs.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from ferry.models.v1 import model_pb2, model_service_pb2, model_service_pb2_grpc, model_stats_pb2
from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2, prediction_service_pb2_grpc
from ferry.types.v1 import types_pb2

_TERMINAL_JOB_STATES = {
    job_pb2.JOB_STATE_SUCCEEDED,
    job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELLED,
}


class FerryError(Exception):
    """A call failed; ``code`` is the gRPC status code and the message says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _image(image: bytes | str | Path) -> types_pb2.Image:
    content = image if isinstance(image, bytes) else Path(image).read_bytes()
    return types_pb2.Image(content=content)


def _timestamp(value: datetime | str) -> Timestamp:
    stamp = Timestamp()
    if isinstance(value, str):
        stamp.FromJsonString(value)
    else:
        stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return stamp


def _listing(
    page_size: int, page_token: str, job: str, filters: dict[str, Any]
) -> prediction_service_pb2.ListPredictionsRequest:
    """A ListPredictionsRequest from keyword filters; ``since``/``until`` become the time range."""
    fields = {k: v for k, v in filters.items() if v not in (None, "", 0)}
    since, until = fields.pop("since", None), fields.pop("until", None)
    if "model" in fields:
        fields["model"] = _model_name(fields["model"])
    request = prediction_service_pb2.ListPredictionsRequest(
        page_size=page_size, page_token=page_token, job=job, **fields
    )
    if since is not None:
        request.start_time.CopyFrom(_timestamp(since))
    if until is not None:
        request.end_time.CopyFrom(_timestamp(until))
    return request


def _model_name(model: str) -> str:
    return model if model.startswith("models/") else f"models/{model}"


class FerryClient:
    """Calls Ferry with an API key. Use as a context manager or call ``close()``.

    Example:
        >>> with FerryClient("localhost:8080", api_key=key) as ferry:
        ...     prediction = ferry.predict("cat.jpg")
        ...     print(prediction.classes[0].label)
    """

    def __init__(self, target: str, api_key: str, timeout_s: float = 30.0) -> None:
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", 32 * 1024 * 1024)]
        )
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._timeout_s = timeout_s
        self.models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self._channel)

    def __enter__(self) -> FerryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.RpcError as err:
            raise FerryError(err.code(), err.details() or "") from None

    def list_models(self) -> list[model_pb2.Model]:
        """Returns the served models."""
        answer: model_service_pb2.ListModelsResponse = self._call(
            self.models.ListModels, model_service_pb2.ListModelsRequest()
        )
        return list(answer.models)

    def predict(
        self,
        image: bytes | str | Path,
        model: str = "efficientnet-lite0",
        top_k: int = 5,
        request_id: str = "",
    ) -> prediction_pb2.Prediction:
        """Classifies one image (bytes or a file path) and returns the recorded prediction.

        A ``request_id`` makes the call safe to retry: the same id yields the same prediction.
        """
        request = model_service_pb2.PredictRequest(
            model=_model_name(model), image=_image(image), top_k=top_k, request_id=request_id
        )
        answer: model_service_pb2.PredictResponse = self._call(self.models.Predict, request)
        return answer.prediction

    def get_prediction(self, name: str) -> prediction_pb2.Prediction:
        """Reads one prediction by name ("predictions/{id}")."""
        request = prediction_service_pb2.GetPredictionRequest(name=name)
        answer: prediction_service_pb2.GetPredictionResponse = self._call(
            self.predictions.GetPrediction, request
        )
        return answer.prediction

    def list_predictions(
        self,
        page_size: int = 50,
        page_token: str = "",
        job: str = "",
        **filters: Any,
    ) -> prediction_service_pb2.ListPredictionsResponse:
        """Lists predictions, newest first (or one job's, in item order).

        ``filters`` are ListPredictionsRequest fields: ``model``, ``label``, ``min_score``,
        ``source``, ``state`` (enum values or names), and ``since`` / ``until`` (datetimes or
        RFC 3339 strings, for ``start_time`` / ``end_time``).
        """
        request = _listing(page_size, page_token, job, filters)
        answer: prediction_service_pb2.ListPredictionsResponse = self._call(
            self.predictions.ListPredictions, request
        )
        return answer

    def iter_predictions(
        self, job: str = "", page_size: int = 500, **filters: Any
    ) -> Iterator[prediction_pb2.Prediction]:
        """Yields every matching prediction, following pages (same filters as ``list_predictions``)."""
        token = ""
        while True:
            page = self.list_predictions(page_size=page_size, page_token=token, job=job, **filters)
            yield from page.predictions
            token = page.next_page_token
            if not token:
                return

    def model_stats(
        self, model: str = "efficientnet-lite0", window: str = "1h"
    ) -> model_stats_pb2.ModelStats:
        """A model's request and error counts, latency percentiles and top labels.

        ``window`` is how far back to look: "15m", "1h", "24h", "7d".
        """
        request = model_service_pb2.GetModelStatsRequest(name=_model_name(model), window=window)
        answer: model_service_pb2.GetModelStatsResponse = self._call(self.models.GetModelStats, request)
        return answer.stats

    def create_job(
        self,
        images: Sequence[bytes | str | Path],
        model: str = "efficientnet-lite0",
        top_k: int = 5,
        request_id: str = "",
    ) -> job_pb2.Job:
        """Submits a batch job; returns at once with the queued job."""
        request = job_service_pb2.CreateJobRequest(
            model=_model_name(model),
            inputs=[types_pb2.Input(image=_image(i)) for i in images],
            top_k=top_k,
            request_id=request_id,
        )
        answer: job_service_pb2.CreateJobResponse = self._call(self.jobs.CreateJob, request)
        return answer.job

    def get_job(self, name: str) -> job_pb2.Job:
        """Reads a job and its progress."""
        request = job_service_pb2.GetJobRequest(name=name)
        answer: job_service_pb2.GetJobResponse = self._call(self.jobs.GetJob, request)
        return answer.job

    def cancel_job(self, name: str) -> job_pb2.Job:
        """Cancels a job; finished items keep their predictions."""
        request = job_service_pb2.CancelJobRequest(name=name)
        answer: job_service_pb2.CancelJobResponse = self._call(self.jobs.CancelJob, request)
        return answer.job

    def retry_job(self, name: str) -> job_service_pb2.RetryJobResponse:
        """Runs a finished job's failed items again; the answer says how many were resubmitted."""
        request = job_service_pb2.RetryJobRequest(name=name)
        answer: job_service_pb2.RetryJobResponse = self._call(self.jobs.RetryJob, request)
        return answer

    def watch_job(self, name: str, timeout_s: float = 3600.0) -> Iterator[job_service_pb2.WatchJobResponse]:
        """Yields the job's progress (state, counts, pace, ETA) on every change until it finishes.

        Raises:
            FerryError: the job does not exist, or the stream broke off.
        """
        stream = self.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(name=name), metadata=self._metadata, timeout=timeout_s
        )
        try:
            yield from stream
        except grpc.RpcError as err:
            raise FerryError(err.code(), err.details() or "") from None

    def wait_job(self, name: str, timeout_s: float = 300.0, poll_s: float = 0.5) -> job_pb2.Job:
        """Polls a job until it finishes (succeeded, partially succeeded, failed or cancelled).

        Raises:
            TimeoutError: the job did not finish within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get_job(name)
            if job.state in _TERMINAL_JOB_STATES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still {job_pb2.JobState.Name(job.state)} after {timeout_s}s")
            time.sleep(poll_s)
