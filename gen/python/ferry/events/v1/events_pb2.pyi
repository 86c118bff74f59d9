from ferry.predictions.v1 import prediction_pb2 as _prediction_pb2
from ferry.types.v1 import types_pb2 as _types_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictionRecorded(_message.Message):
    __slots__ = ("tenant", "prediction", "generation", "traceparent")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    prediction: _prediction_pb2.Prediction
    generation: int
    traceparent: str
    def __init__(self, tenant: _Optional[str] = ..., prediction: _Optional[_Union[_prediction_pb2.Prediction, _Mapping]] = ..., generation: _Optional[int] = ..., traceparent: _Optional[str] = ...) -> None: ...

class PredictionsRecorded(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[PredictionRecorded]
    def __init__(self, records: _Optional[_Iterable[_Union[PredictionRecorded, _Mapping]]] = ...) -> None: ...

class JobItem(_message.Message):
    __slots__ = ("tenant", "job_id", "item_index", "model", "input", "top_k", "generation", "priority", "input_ref", "notebook_run", "input_name")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    INPUT_REF_FIELD_NUMBER: _ClassVar[int]
    NOTEBOOK_RUN_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    job_id: str
    item_index: int
    model: str
    input: _types_pb2.Input
    top_k: int
    generation: int
    priority: _types_pb2.Priority
    input_ref: ObjectRef
    notebook_run: NotebookRun
    input_name: str
    def __init__(self, tenant: _Optional[str] = ..., job_id: _Optional[str] = ..., item_index: _Optional[int] = ..., model: _Optional[str] = ..., input: _Optional[_Union[_types_pb2.Input, _Mapping]] = ..., top_k: _Optional[int] = ..., generation: _Optional[int] = ..., priority: _Optional[_Union[_types_pb2.Priority, str]] = ..., input_ref: _Optional[_Union[ObjectRef, _Mapping]] = ..., notebook_run: _Optional[_Union[NotebookRun, _Mapping]] = ..., input_name: _Optional[str] = ...) -> None: ...

class NotebookRun(_message.Message):
    __slots__ = ("notebook", "parameters")
    NOTEBOOK_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    notebook: str
    parameters: _struct_pb2.Struct
    def __init__(self, notebook: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("bucket", "name", "size_bytes")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    name: str
    size_bytes: int
    def __init__(self, bucket: _Optional[str] = ..., name: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class JobItemHeader(_message.Message):
    __slots__ = ("tenant", "job_id", "item_index", "model", "generation", "priority", "input_name")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    job_id: str
    item_index: int
    model: str
    generation: int
    priority: _types_pb2.Priority
    input_name: str
    def __init__(self, tenant: _Optional[str] = ..., job_id: _Optional[str] = ..., item_index: _Optional[int] = ..., model: _Optional[str] = ..., generation: _Optional[int] = ..., priority: _Optional[_Union[_types_pb2.Priority, str]] = ..., input_name: _Optional[str] = ...) -> None: ...

class JobExpansion(_message.Message):
    __slots__ = ("tenant", "job_id", "model", "top_k", "priority", "manifest", "input_kinds", "max_items", "max_item_bytes", "max_image_bytes", "upload_quota_bytes")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    INPUT_KINDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEM_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    job_id: str
    model: str
    top_k: int
    priority: _types_pb2.Priority
    manifest: str
    input_kinds: _containers.RepeatedScalarFieldContainer[str]
    max_items: int
    max_item_bytes: int
    max_image_bytes: int
    upload_quota_bytes: int
    def __init__(self, tenant: _Optional[str] = ..., job_id: _Optional[str] = ..., model: _Optional[str] = ..., top_k: _Optional[int] = ..., priority: _Optional[_Union[_types_pb2.Priority, str]] = ..., manifest: _Optional[str] = ..., input_kinds: _Optional[_Iterable[str]] = ..., max_items: _Optional[int] = ..., max_item_bytes: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., upload_quota_bytes: _Optional[int] = ...) -> None: ...

class JobExpansionEvent(_message.Message):
    __slots__ = ("tenant", "job_id", "lines_read", "items_total", "error")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_READ_FIELD_NUMBER: _ClassVar[int]
    ITEMS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    job_id: str
    lines_read: int
    items_total: int
    error: _status_pb2.Status
    def __init__(self, tenant: _Optional[str] = ..., job_id: _Optional[str] = ..., lines_read: _Optional[int] = ..., items_total: _Optional[int] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...
