from ferry.events.v1 import events_pb2 as _events_pb2
from ferry.jobs.v1 import job_pb2 as _job_pb2
from ferry.types.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ItemInput(_message.Message):
    __slots__ = ("input", "input_ref")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_REF_FIELD_NUMBER: _ClassVar[int]
    input: _types_pb2.Input
    input_ref: _events_pb2.ObjectRef
    def __init__(self, input: _Optional[_Union[_types_pb2.Input, _Mapping]] = ..., input_ref: _Optional[_Union[_events_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("tenant", "job", "first_item_index", "items")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    FIRST_ITEM_INDEX_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    job: _job_pb2.Job
    first_item_index: int
    items: _containers.RepeatedCompositeFieldContainer[ItemInput]
    def __init__(self, tenant: _Optional[str] = ..., job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., first_item_index: _Optional[int] = ..., items: _Optional[_Iterable[_Union[ItemInput, _Mapping]]] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class SubmitManifestJobRequest(_message.Message):
    __slots__ = ("tenant", "job", "expansion")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    EXPANSION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    job: _job_pb2.Job
    expansion: _events_pb2.JobExpansion
    def __init__(self, tenant: _Optional[str] = ..., job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., expansion: _Optional[_Union[_events_pb2.JobExpansion, _Mapping]] = ...) -> None: ...

class SubmitManifestJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class SubmitNotebookJobRequest(_message.Message):
    __slots__ = ("tenant", "job", "notebook_run")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    NOTEBOOK_RUN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    job: _job_pb2.Job
    notebook_run: _events_pb2.NotebookRun
    def __init__(self, tenant: _Optional[str] = ..., job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., notebook_run: _Optional[_Union[_events_pb2.NotebookRun, _Mapping]] = ...) -> None: ...

class SubmitNotebookJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("tenant", "name")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    name: str
    def __init__(self, tenant: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class RetryJobRequest(_message.Message):
    __slots__ = ("tenant", "name")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    name: str
    def __init__(self, tenant: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RetryJobResponse(_message.Message):
    __slots__ = ("job", "items_retried")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ITEMS_RETRIED_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    items_retried: int
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., items_retried: _Optional[int] = ...) -> None: ...

class WriteResultFileRequest(_message.Message):
    __slots__ = ("tenant", "name")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    name: str
    def __init__(self, tenant: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class WriteResultFileResponse(_message.Message):
    __slots__ = ("object_name", "job", "built")
    OBJECT_NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    BUILT_FIELD_NUMBER: _ClassVar[int]
    object_name: str
    job: _job_pb2.Job
    built: bool
    def __init__(self, object_name: _Optional[str] = ..., job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., built: _Optional[bool] = ...) -> None: ...
