import datetime

from ferry.types.v1 import types_pb2 as _types_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREDICTION_STATE_UNSPECIFIED: _ClassVar[PredictionState]
    PREDICTION_STATE_SUCCEEDED: _ClassVar[PredictionState]
    PREDICTION_STATE_FAILED: _ClassVar[PredictionState]

class PredictionSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREDICTION_SOURCE_UNSPECIFIED: _ClassVar[PredictionSource]
    PREDICTION_SOURCE_SYNC: _ClassVar[PredictionSource]
    PREDICTION_SOURCE_JOB_ITEM: _ClassVar[PredictionSource]
    PREDICTION_SOURCE_OIP: _ClassVar[PredictionSource]
PREDICTION_STATE_UNSPECIFIED: PredictionState
PREDICTION_STATE_SUCCEEDED: PredictionState
PREDICTION_STATE_FAILED: PredictionState
PREDICTION_SOURCE_UNSPECIFIED: PredictionSource
PREDICTION_SOURCE_SYNC: PredictionSource
PREDICTION_SOURCE_JOB_ITEM: PredictionSource
PREDICTION_SOURCE_OIP: PredictionSource

class Prediction(_message.Message):
    __slots__ = ("name", "model", "state", "classes", "timing", "error", "job", "item_index", "trace_id", "create_time", "source", "embedding", "output", "tensors", "members", "model_version", "input_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ITEM_INDEX_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    state: PredictionState
    classes: _containers.RepeatedCompositeFieldContainer[_types_pb2.ClassScore]
    timing: _types_pb2.Timing
    error: _status_pb2.Status
    job: str
    item_index: int
    trace_id: str
    create_time: _timestamp_pb2.Timestamp
    source: PredictionSource
    embedding: _containers.RepeatedScalarFieldContainer[float]
    output: _struct_pb2.Struct
    tensors: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    members: _containers.RepeatedCompositeFieldContainer[_types_pb2.MemberTiming]
    model_version: str
    input_name: str
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[_Union[PredictionState, str]] = ..., classes: _Optional[_Iterable[_Union[_types_pb2.ClassScore, _Mapping]]] = ..., timing: _Optional[_Union[_types_pb2.Timing, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., job: _Optional[str] = ..., item_index: _Optional[int] = ..., trace_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[PredictionSource, str]] = ..., embedding: _Optional[_Iterable[float]] = ..., output: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ..., members: _Optional[_Iterable[_Union[_types_pb2.MemberTiming, _Mapping]]] = ..., model_version: _Optional[str] = ..., input_name: _Optional[str] = ...) -> None: ...
