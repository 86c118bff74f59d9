"""Which failures are worth another attempt, how long to wait, and what giving up looks like."""

from __future__ import annotations

import random

import grpc
from google.rpc import status_pb2

from services.common.errors import FerryError, code_from_number, error_from_status

# Codes that say "not now" rather than "never": the same request may well succeed later.
# INTERNAL and UNKNOWN are here too, so a crashed inference replica costs retries, not results;
# max_deliver bounds the cost when the failure turns out to be permanent after all.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


def is_transient(status: status_pb2.Status) -> bool:
    """Whether a failure with ``status`` may go away on its own."""
    return code_from_number(status.code) in TRANSIENT_CODES


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Delay before the attempt after ``attempt`` (1-based): base * 2^(attempt-1), capped, jittered.

    The jitter (between half and all of the delay) keeps runners that failed together, for
    example when inference restarted, from all retrying in the same instant.
    """
    delay: float = min(max_s, base_s * 2 ** max(0, attempt - 1))
    return delay * random.uniform(0.5, 1.0)


def gave_up(last: status_pb2.Status, attempts: int) -> status_pb2.Status:
    """The error of an item that still failed after ``attempts`` deliveries; keeps the last code."""
    cause = error_from_status(last)
    error = FerryError(
        f"gave up after {attempts} attempts; the last one failed with {cause.code.name}: {cause.message}",
        "RETRIES_EXHAUSTED",
        {"attempts": str(attempts), "last_reason": cause.reason},
    )
    error.code = cause.code
    return error.to_status()
