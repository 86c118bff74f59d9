from ferry.predictions.v1 import prediction_pb2 as _prediction_pb2
from ferry.types.v1 import types_pb2 as _types_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictionRecorded(_message.Message):
    __slots__ = ("tenant", "prediction", "generation")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    prediction: _prediction_pb2.Prediction
    generation: int
    def __init__(self, tenant: _Optional[str] = ..., prediction: _Optional[_Union[_prediction_pb2.Prediction, _Mapping]] = ..., generation: _Optional[int] = ...) -> None: ...

class JobItem(_message.Message):
    __slots__ = ("tenant", "job_id", "item_index", "model", "input", "top_k", "generation", "priority")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    job_id: str
    item_index: int
    model: str
    input: _types_pb2.Input
    top_k: int
    generation: int
    priority: _types_pb2.Priority
    def __init__(self, tenant: _Optional[str] = ..., job_id: _Optional[str] = ..., item_index: _Optional[int] = ..., model: _Optional[str] = ..., input: _Optional[_Union[_types_pb2.Input, _Mapping]] = ..., top_k: _Optional[int] = ..., generation: _Optional[int] = ..., priority: _Optional[_Union[_types_pb2.Priority, str]] = ...) -> None: ...
