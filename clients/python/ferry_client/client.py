"""A synchronous client for Ferry's public gRPC API (through Envoy or straight to gateway)."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ferry.admin.v1 import key_service_pb2, key_service_pb2_grpc
from ferry.jobs.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from ferry.models.v1 import model_pb2, model_service_pb2, model_service_pb2_grpc, model_stats_pb2
from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2, prediction_service_pb2_grpc
from ferry.types.v1 import types_pb2
from ferry_client import bundles

#: Pieces an upload is streamed in: well under gRPC's message limit, few enough messages.
UPLOAD_CHUNK_BYTES = 1024 * 1024
#: Deadline of loading or unloading a model: it reads weights, warms up and may measure its batch size.
LOAD_TIMEOUT_S = 600.0

_TERMINAL_JOB_STATES = {
    job_pb2.JOB_STATE_SUCCEEDED,
    job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELLED,
}


def needs_ascii(out: IO[str]) -> bool:
    """Whether JSON written to ``out`` must escape non-ASCII text (``\\u00e9``): only when ``out``
    encodes less than UTF-8 (a Latin-1 terminal), where it could not be written otherwise. Names
    such as a photo's ``Café/plage.jpg`` are then printed as they are everywhere else; control,
    bidi and invisible characters in them were already escaped by the server (input_names.py)."""
    encoding = getattr(out, "encoding", None) or "utf-8"  # an in-memory text stream has none
    return encoding.lower().replace("-", "").replace("_", "") != "utf8"


class FerryError(Exception):
    """A call failed; ``code`` is the gRPC status code and the message says why.

    ``reason`` is the stable machine-readable cause (the google.rpc.ErrorInfo reason, one of
    ferry.errors.v1.ErrorReason's names, for example ``MODEL_NOT_FOUND``; empty when the answer
    had none) and ``metadata`` its details. Match on ``code`` and ``reason``, never on the message.
    ``field_violations`` maps each request field at fault to what was wrong (google.rpc.BadRequest).
    ``retry_after_s`` is the server's advice (google.rpc.RetryInfo) on when a retry can succeed,
    for example after a rate limit (RESOURCE_EXHAUSTED); None when it gave none.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        retry_after_s: float | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.metadata = metadata or {}
        self.field_violations = field_violations or {}


def _error(err: grpc.RpcError) -> FerryError:
    """The FerryError of a failed call, with the ErrorInfo, BadRequest and RetryInfo of its rich
    status when there is one."""
    retry_after_s = None
    reason = ""
    metadata: dict[str, str] = {}
    violations: dict[str, str] = {}
    try:
        status = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
    except ValueError:  # status details that contradict the call's own code or message
        status = None
    details: list[Any] = list(status.details) if status is not None else []
    for detail in details:
        retry = error_details_pb2.RetryInfo()
        info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(retry):
            retry_after_s = retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Unpack(info) and not reason:
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad_request):
            violations |= {v.field: v.description for v in bad_request.field_violations}
    return FerryError(err.code(), err.details() or "", retry_after_s, reason, metadata, violations)


def _image(image: bytes | str | Path) -> types_pb2.Image:
    content = image if isinstance(image, bytes) else Path(image).read_bytes()
    return types_pb2.Image(content=content)


def text_input(text: str, candidate_labels: Sequence[str] = ()) -> types_pb2.Input:
    """A text input (for ``create_job``): embedded, or ranked zero-shot against ``candidate_labels``."""
    return types_pb2.Input(text=types_pb2.Text(content=text, candidate_labels=list(candidate_labels)))


def payload_input(payload: dict[str, Any]) -> types_pb2.Input:
    """A JSON object input (for ``create_job``) for a JSON model (a notebook-backed one)."""
    item = types_pb2.Input()
    item.payload.update(payload)
    return item


def _input(item: bytes | str | Path | types_pb2.Input) -> types_pb2.Input:
    """An input as sent: an ``Input`` as built, anything else an image (bytes or a file path)."""
    return item if isinstance(item, types_pb2.Input) else types_pb2.Input(image=_image(item))


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


def _priority(priority: str) -> str:
    """``high``, ``normal`` or ``low`` (any case, or the enum's own name) as the wire enum's name."""
    names = [name.removeprefix("PRIORITY_").lower() for name in types_pb2.Priority.keys()[1:]]
    word = priority.upper().removeprefix("PRIORITY_").lower()
    if word not in names:
        # protobuf's own error named "PRIORITY_URGENT", which the caller never wrote, and no valid one.
        raise ValueError(f"priority is {priority!r}; expected one of {', '.join(names)}")
    return f"PRIORITY_{word.upper()}"


class FerryClient:
    """Calls Ferry with an API key. Use as a context manager or call ``close()``.

    Example:
        >>> with FerryClient("localhost:8080", api_key=key) as ferry:
        ...     prediction = ferry.predict("cat.jpg")
        ...     print(prediction.classes[0].label)
    """

    def __init__(self, target: str, api_key: str, timeout_s: float = 30.0) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            # Else every call would send "Bearer None" (or "Bearer ") and read as a wrong key.
            raise ValueError(
                f"api_key is {api_key!r}: pass the key, e.g. os.environ['FERRY_API_KEY'] "
                "(`ferry up` prints the local stack's; `ferry keys create` makes others)"
            )
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", 32 * 1024 * 1024)]
        )
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._timeout_s = timeout_s
        self.models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self._channel)
        self.keys = key_service_pb2_grpc.KeyServiceStub(self._channel)

    def __enter__(self) -> FerryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=timeout_s or self._timeout_s)
        except grpc.RpcError as err:
            raise _error(err) from None

    def _stream(self, method: Any, request: Any, timeout_s: float) -> Iterator[Any]:
        """The answers of a server-streaming call, a broken stream raised as a FerryError."""
        stream = method(request, metadata=self._metadata, timeout=timeout_s)
        try:
            yield from stream
        except grpc.RpcError as err:
            raise _error(err) from None

    def list_models(self) -> list[model_pb2.Model]:
        """Returns the served models."""
        answer: model_service_pb2.ListModelsResponse = self._call(
            self.models.ListModels, model_service_pb2.ListModelsRequest()
        )
        return list(answer.models)

    def load_model(self, model: str, version: str = "") -> model_pb2.Model:
        """Loads a configured model at ``version`` (empty: its default) (admin scope); returns it
        READY, or raises with the reason it failed."""
        request = model_service_pb2.LoadModelRequest(name=_model_name(model), version=version)
        answer: model_service_pb2.LoadModelResponse = self._call(
            self.models.LoadModel, request, LOAD_TIMEOUT_S
        )
        return answer.model

    def unload_model(self, model: str, version: str = "") -> model_pb2.Model:
        """Unloads a model at ``version`` (empty: every version) (admin scope), giving its memory
        back; returns the model. Ensembles calling it answer MODEL_NOT_LOADED until it is loaded."""
        request = model_service_pb2.UnloadModelRequest(name=_model_name(model), version=version)
        answer: model_service_pb2.UnloadModelResponse = self._call(
            self.models.UnloadModel, request, LOAD_TIMEOUT_S
        )
        return answer.model

    def set_default_version(self, model: str, version: str) -> model_pb2.Model:
        """Makes loaded ``version`` of ``model`` answer calls that name no version (admin scope)."""
        request = model_service_pb2.SetDefaultVersionRequest(name=_model_name(model), version=version)
        answer: model_service_pb2.SetDefaultVersionResponse = self._call(
            self.models.SetDefaultVersion, request
        )
        return answer.model

    def predict(
        self,
        image: bytes | str | Path,
        model: str = "efficientnet-lite0",
        top_k: int = 5,
        request_id: str = "",
        version: str = "",
    ) -> prediction_pb2.Prediction:
        """Classifies one image (bytes or a file path) and returns the recorded prediction.

        A ``request_id`` makes the call safe to retry: the same id with the same image yields the
        same prediction; with another image it raises ``FerryError`` ALREADY_EXISTS
        ``REQUEST_ID_REUSED`` (use a new id for new inputs).
        ``version`` picks a version of the model (empty: its default); ``model_version`` says which answered.
        """
        request = model_service_pb2.PredictRequest(
            model=_model_name(model), image=_image(image), top_k=top_k, request_id=request_id, version=version
        )
        answer: model_service_pb2.PredictResponse = self._call(self.models.Predict, request)
        return answer.prediction

    def predict_text(
        self,
        text: str,
        model: str = "minilm",
        candidate_labels: Sequence[str] = (),
        top_k: int = 5,
        request_id: str = "",
    ) -> prediction_pb2.Prediction:
        """Embeds a text (``prediction.embedding``), or with ``candidate_labels`` ranks them
        zero-shot (``prediction.classes``, scores are cosine similarities)."""
        request = model_service_pb2.PredictRequest(
            model=_model_name(model),
            text=types_pb2.Text(content=text, candidate_labels=list(candidate_labels)),
            top_k=top_k,
            request_id=request_id,
        )
        answer: model_service_pb2.PredictResponse = self._call(self.models.Predict, request)
        return answer.prediction

    def predict_json(self, payload: dict[str, Any], model: str, request_id: str = "") -> dict[str, Any]:
        """Sends a JSON object to a JSON model (a notebook-backed one) and returns its JSON answer."""
        request = model_service_pb2.PredictRequest(model=_model_name(model), request_id=request_id)
        request.payload.update(payload)
        answer: model_service_pb2.PredictResponse = self._call(self.models.Predict, request)
        return json_format.MessageToDict(answer.prediction.output)

    def batch_predict(
        self,
        images: Sequence[bytes | str | Path],
        model: str = "efficientnet-lite0",
        top_k: int = 5,
        request_id: str = "",
    ) -> list[prediction_pb2.Prediction]:
        """Classifies up to 64 images in one call; returns one recorded prediction per image, in order.

        An image that cannot be classified comes back with state FAILED and its ``error``; the
        others still answer. A ``request_id`` makes the call safe to retry.
        """
        request = model_service_pb2.BatchPredictRequest(
            model=_model_name(model),
            inputs=[types_pb2.Input(image=_image(i)) for i in images],
            top_k=top_k,
            request_id=request_id,
        )
        answer: model_service_pb2.BatchPredictResponse = self._call(self.models.BatchPredict, request)
        return list(answer.predictions)

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
        images: Sequence[bytes | str | Path | types_pb2.Input],
        model: str = "efficientnet-lite0",
        top_k: int = 5,
        request_id: str = "",
        priority: str = "normal",
        manifest: str = "",
    ) -> job_pb2.Job:
        """Submits a batch job; returns at once with the queued job.

        ``priority`` is ``high``, ``normal`` or ``low``: runners take higher priorities first
        under a backlog, without starving lower ones. ``manifest`` (``uploads/ID``, from
        ``upload``) gives the items by reference instead of ``images`` (pass none then).
        ``images`` may also hold other inputs, built with ``text_input`` or ``payload_input``.
        A ``request_id`` makes it safe to retry (the same job); sent again with other inputs it
        raises ``FerryError`` ALREADY_EXISTS ``REQUEST_ID_REUSED``.
        """
        request = job_service_pb2.CreateJobRequest(
            model=_model_name(model),
            inputs=[_input(i) for i in images],
            top_k=top_k,
            request_id=request_id,
            priority=_priority(priority),
            manifest=manifest,
        )
        answer: job_service_pb2.CreateJobResponse = self._call(self.jobs.CreateJob, request)
        return answer.job

    def upload(self, file: Path | str, chunk_bytes: int = UPLOAD_CHUNK_BYTES) -> job_service_pb2.Upload:
        """Uploads a JSONL manifest or a zip of images, streamed in ``chunk_bytes`` pieces; returns
        the upload (``uploads/ID``) that ``create_job(manifest=...)`` names."""
        path = Path(file)

        def pieces() -> Iterator[job_service_pb2.CreateUploadRequest]:
            with path.open("rb") as f:
                while chunk := f.read(chunk_bytes):
                    yield job_service_pb2.CreateUploadRequest(body=httpbody_pb2.HttpBody(data=chunk))

        answer: job_service_pb2.CreateUploadResponse = self._call(self.jobs.CreateUpload, pieces())
        return answer.upload

    def create_job_of_files(
        self,
        files: Sequence[Path | str],
        model: str = "efficientnet-lite0",
        top_k: int = 5,
        priority: str = "normal",
    ) -> tuple[job_pb2.Job, job_service_pb2.Upload]:
        """Submits a job of image files, or folders of them, of any total size (up to the upload
        limit, 256 MiB): they are zipped into a temporary file, uploaded, and the job names the
        upload; its results name each item by its file's path below the files' shared folder (an
        OS's bookkeeping files, such as .DS_Store, make no items). Returns the job and the upload.

        No ``request_id``: each call uploads anew, and a retry would name another upload. For a
        job you may need to retry, ``upload`` once and retry ``create_job(manifest=...)``.
        """
        with tempfile.TemporaryDirectory(prefix="ferry-job-") as folder:
            bundle = Path(folder) / "images.zip"
            bundles.write_zip([Path(f) for f in files], bundle)
            upload = self.upload(bundle)
        return self.create_job([], model, top_k, "", priority, upload.name), upload

    def create_notebook_job(
        self, notebook: str, parameters: dict[str, Any] | None = None, request_id: str = ""
    ) -> job_pb2.Job:
        """Submits a run-notebook job: papermill runs the registered notebook ``notebook`` with
        ``parameters``; the job's items are its code cells. Returns at once with the queued job."""
        request = job_service_pb2.CreateJobRequest(notebook=notebook, request_id=request_id)
        request.parameters.update(parameters or {})
        answer: job_service_pb2.CreateJobResponse = self._call(self.jobs.CreateJob, request)
        return answer.job

    def job_notebook(self, name: str) -> bytes:
        """The executed notebook (.ipynb bytes) of a finished notebook job."""
        request = job_service_pb2.GetJobNotebookRequest(name=name)
        answer: job_service_pb2.GetJobNotebookResponse = self._call(self.jobs.GetJobNotebook, request)
        return bytes(answer.notebook.data)

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
        yield from self._stream(self.jobs.WatchJob, job_service_pb2.WatchJobRequest(name=name), timeout_s)

    def job_results(
        self, name: str, timeout_s: float = 600.0
    ) -> Iterator[job_service_pb2.GetJobResultsResponse]:
        """Yields the lines of a finished job's result file (one per recorded item, in item order).

        Raises:
            FerryError: the job does not exist or has not finished, or the stream broke off.
        """
        request = job_service_pb2.GetJobResultsRequest(name=name)
        yield from self._stream(self.jobs.GetJobResults, request, timeout_s)

    def save_job_results(self, name: str, out: IO[str]) -> int:
        """Writes a finished job's result file to ``out`` as JSONL, the file's own lines; returns
        how many items it holds."""
        count = 0
        for result in self.job_results(name):
            fields = json_format.MessageToDict(
                result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            # In the message's field order, as the file's own lines are (GET …/results): MessageToDict
            # puts fields at their default last, so item 0's line began {"input": …, and ended "index":0.
            ordered = {f.name: fields[f.name] for f in result.DESCRIPTOR.fields if f.name in fields}
            out.write(json.dumps(ordered, separators=(",", ":"), ensure_ascii=needs_ascii(out)) + "\n")
            count += 1
        return count

    def create_key(
        self,
        tenant: str,
        scopes: Sequence[str] = ("predict", "jobs", "read"),
        rate_per_s: float = 0.0,
        burst: int = 0,
        display_name: str = "",
    ) -> key_service_pb2.CreateKeyResponse:
        """Makes an API key (needs an admin key); the answer's ``api_key`` is shown only this once."""
        request = key_service_pb2.CreateKeyRequest(
            tenant=tenant, scopes=scopes, rate_per_s=rate_per_s, burst=burst, display_name=display_name
        )
        answer: key_service_pb2.CreateKeyResponse = self._call(self.keys.CreateKey, request)
        return answer

    def list_keys(self, tenant: str = "", show_revoked: bool = False) -> Iterator[key_service_pb2.Key]:
        """Yields API keys, newest first, following pages (needs an admin key)."""
        token = ""
        while True:
            request = key_service_pb2.ListKeysRequest(
                tenant=tenant, show_revoked=show_revoked, page_token=token
            )
            page: key_service_pb2.ListKeysResponse = self._call(self.keys.ListKeys, request)
            yield from page.keys
            token = page.next_page_token
            if not token:
                return

    def revoke_key(self, name: str) -> key_service_pb2.Key:
        """Revokes an API key ("keys/{id}" or the id; needs an admin key)."""
        answer: key_service_pb2.RevokeKeyResponse = self._call(
            self.keys.RevokeKey, key_service_pb2.RevokeKeyRequest(name=name)
        )
        return answer.key

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
