"""Domain errors and their one mapping to gRPC status codes (Google AIP-193 style).

Handlers raise a ``FerryError``; the server interceptor turns it into a canonical status
with one ``google.rpc.ErrorInfo`` detail, so no handler formats statuses itself. An
INVALID_ARGUMENT that names the request field at fault (``metadata["field"]``) also carries a
``google.rpc.BadRequest`` with that field's violation.

Every reason is a value of the ``ferry.errors.v1.ErrorReason`` enum
(protos/ferry/errors/v1/error_reason.proto), which also says each reason's code;
tests/test_error_reasons.py fails when code uses a reason the enum does not list.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from ferry.errors.v1 import error_reason_pb2
from services.common import limits

ERROR_DOMAIN = "ferry.dev"

#: The HTTP status Envoy's transcoder answers for each gRPC code (Envoy's grpcToHttpStatus).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


@dataclass(frozen=True)
class Reason:
    """One ErrorReason value: its name (ErrorInfo.reason), gRPC code and REST status."""

    name: str
    code: grpc.StatusCode
    http_status: int
    code_of_cause: bool
    """The error keeps the code of what caused it (``code`` is then UNKNOWN)."""


@cache
def reasons() -> dict[str, Reason]:
    """Every reason of the ErrorReason enum by name, read from its options (the zero value left out)."""
    found = {}
    for value in error_reason_pb2.ErrorReason.DESCRIPTOR.values[1:]:
        options = {field.name: setting for field, setting in value.GetOptions().ListFields()}
        code = code_from_number(options.get("code", grpc.StatusCode.UNKNOWN.value[0]))
        http = options.get("http_status") or HTTP_STATUS[code]
        found[value.name] = Reason(value.name, code, http, bool(options.get("code_of_cause")))
    return found


#: Codes that say the request was wrong (HTTP 4xx), not the service: logged at INFO, no traceback.
CALLERS_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


class FerryError(Exception):
    """An error a caller can act on; subclasses fix the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        reason: str,
        metadata: dict[str, str] | None = None,
        retry_after: duration_pb2.Duration | None = None,
    ) -> None:
        message = shortened(message, limits.MAX_ERROR_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = {
            key: shortened(value, limits.MAX_ERROR_METADATA_CHARS) for key, value in (metadata or {}).items()
        }
        self.retry_after = retry_after

    @property
    def is_callers(self) -> bool:
        """Whether the caller's request is at fault (a 4xx): worth an INFO line, not a traceback."""
        return self.code in CALLERS_CODES

    def to_status(self) -> status_pb2.Status:
        """Returns this error as a google.rpc.Status: an ErrorInfo, and a RetryInfo when retrying helps."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        details = [_packed(info)]
        field = self.metadata.get("field")
        if field and self.code == grpc.StatusCode.INVALID_ARGUMENT:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=field, description=self.message, reason=self.reason
            )
            details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
        if self.retry_after is not None:
            details.append(_packed(error_details_pb2.RetryInfo(retry_delay=self.retry_after)))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


def shortened(text: str, max_bytes: int) -> str:
    """``text`` if its UTF-8 is at most ``max_bytes``, else its start and how much was left out
    (``limits.MAX_ERROR_MESSAGE_BYTES`` says why)."""
    if len(text.encode("utf-8", "replace")) <= max_bytes:
        return text
    keep = max(max_bytes - 40, 0)
    while True:
        cut = f"{text[:keep]}… ({len(text) - keep} more characters)"
        if len(cut.encode("utf-8", "replace")) <= max_bytes or keep == 0:
            return cut
        keep = keep * 3 // 4


def _packed(message: Message) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


class InvalidArgument(FerryError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(FerryError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(FerryError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(FerryError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(FerryError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(FerryError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(FerryError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(FerryError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(FerryError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def status_to_proto(code: grpc.StatusCode, message: str, reason: str) -> status_pb2.Status:
    """Builds a google.rpc.Status for a per-item error carried inside a response."""
    error = FerryError(message, reason)
    error.code = code
    return error.to_status()


_CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def code_from_number(number: int) -> grpc.StatusCode:
    """Maps a google.rpc.Code number back to grpc.StatusCode (UNKNOWN when out of range)."""
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_from_status(status: status_pb2.Status) -> FerryError:
    """Rebuilds a FerryError from a google.rpc.Status: code, message, reason, metadata, retry advice."""
    reason = "UNKNOWN"
    metadata: dict[str, str] = {}
    retry_after: duration_pb2.Duration | None = None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info) and reason == "UNKNOWN":
            reason = info.reason
            metadata = dict(info.metadata)
        elif detail.Unpack(retry) and retry_after is None:
            retry_after = retry.retry_delay
    error = FerryError(status.message, reason, metadata, retry_after)
    error.code = code_from_number(status.code)
    return error
