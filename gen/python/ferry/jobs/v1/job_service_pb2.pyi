from ferry.jobs.v1 import job_pb2 as _job_pb2
from ferry.predictions.v1 import prediction_pb2 as _prediction_pb2
from ferry.types.v1 import types_pb2 as _types_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateJobRequest(_message.Message):
    __slots__ = ("model", "inputs", "top_k", "request_id", "priority", "manifest", "notebook", "parameters")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    NOTEBOOK_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[_types_pb2.Input]
    top_k: int
    request_id: str
    priority: _types_pb2.Priority
    manifest: str
    notebook: str
    parameters: _struct_pb2.Struct
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_types_pb2.Input, _Mapping]]] = ..., top_k: _Optional[int] = ..., request_id: _Optional[str] = ..., priority: _Optional[_Union[_types_pb2.Priority, str]] = ..., manifest: _Optional[str] = ..., notebook: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class RetryJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RetryJobResponse(_message.Message):
    __slots__ = ("job", "items_retried")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ITEMS_RETRIED_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    items_retried: int
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., items_retried: _Optional[int] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job", "items_per_second", "eta_seconds")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    items_per_second: float
    eta_seconds: float
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., items_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ...) -> None: ...

class ListJobItemsRequest(_message.Message):
    __slots__ = ("parent", "state", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    state: _prediction_pb2.PredictionState
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., state: _Optional[_Union[_prediction_pb2.PredictionState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[JobItem]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[JobItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class JobItem(_message.Message):
    __slots__ = ("index", "prediction", "dead_lettered", "dead_letter_reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    prediction: _prediction_pb2.Prediction
    dead_lettered: bool
    dead_letter_reason: str
    def __init__(self, index: _Optional[int] = ..., prediction: _Optional[_Union[_prediction_pb2.Prediction, _Mapping]] = ..., dead_lettered: _Optional[bool] = ..., dead_letter_reason: _Optional[str] = ...) -> None: ...

class GetJobResultsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetJobResultsResponse(_message.Message):
    __slots__ = ("index", "input", "state", "classes", "error", "prediction", "embedding", "output", "tensors")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    index: int
    input: str
    state: _prediction_pb2.PredictionState
    classes: _containers.RepeatedCompositeFieldContainer[_types_pb2.ClassScore]
    error: _status_pb2.Status
    prediction: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    output: _struct_pb2.Struct
    tensors: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    def __init__(self, index: _Optional[int] = ..., input: _Optional[str] = ..., state: _Optional[_Union[_prediction_pb2.PredictionState, str]] = ..., classes: _Optional[_Iterable[_Union[_types_pb2.ClassScore, _Mapping]]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., prediction: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., output: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class CreateUploadRequest(_message.Message):
    __slots__ = ("body",)
    BODY_FIELD_NUMBER: _ClassVar[int]
    body: _httpbody_pb2.HttpBody
    def __init__(self, body: _Optional[_Union[_httpbody_pb2.HttpBody, _Mapping]] = ...) -> None: ...

class CreateUploadResponse(_message.Message):
    __slots__ = ("upload",)
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    upload: Upload
    def __init__(self, upload: _Optional[_Union[Upload, _Mapping]] = ...) -> None: ...

class Upload(_message.Message):
    __slots__ = ("name", "kind", "size_bytes", "entries", "skipped_entries")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    size_bytes: int
    entries: int
    skipped_entries: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., size_bytes: _Optional[int] = ..., entries: _Optional[int] = ..., skipped_entries: _Optional[int] = ...) -> None: ...

class GetJobNotebookRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetJobNotebookResponse(_message.Message):
    __slots__ = ("notebook",)
    NOTEBOOK_FIELD_NUMBER: _ClassVar[int]
    notebook: _httpbody_pb2.HttpBody
    def __init__(self, notebook: _Optional[_Union[_httpbody_pb2.HttpBody, _Mapping]] = ...) -> None: ...
