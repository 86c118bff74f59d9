"""Calls to inference, store, jobs and JetStream, and the one place their failures become FerryErrors.

Used by the gateway (to inference, store and the jobs service's queue) and by the jobs service
(to store).

Every outgoing gRPC call goes through ``Backend.call`` so that it always has a deadline and its
errors are mapped the same way: a downstream's own answer about the request (NOT_FOUND,
INVALID_ARGUMENT, ...) reaches the user unchanged, while an outage becomes UNAVAILABLE or
DEADLINE_EXCEEDED with a message that says which part is down and that a retry is safe.

A downstream that is restarting is waited for, within the call's deadline: calls are made with
``wait_for_ready`` (they wait while the connection is down instead of failing at once) and an
UNAVAILABLE or CANCELLED answer (a replica that is starting or stopping) is retried with backoff. Every call
the gateway makes downstream is safe to repeat: reads, predictions (inference keeps no state)
and writes keyed by deterministic ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import status_pb2
from nats.errors import Error as NatsError

from services.common.errors import (
    DeadlineExceeded,
    FerryError,
    Unavailable,
    error_from_status,
)
from services.common.tracing import current_trace_id

log = logging.getLogger(__name__)

Response = TypeVar("Response")

_DETAILS_KEY = "grpc-status-details-bin"
#: The reason a service's readiness gate answers while it starts or waits for a dependency.
NOT_READY = "NOT_READY"
#: The reasons of an UNAVAILABLE that will pass by waiting or on another replica: one starting
#: (NOT_READY) or stopping (SHUTTING_DOWN), a model loading (inference answers a model's calls once
#: it serves, while its next models load).
_WAITED_REASONS = frozenset({NOT_READY, "SHUTTING_DOWN", "MODEL_LOADING"})
#: Advice sent with every UNAVAILABLE: the outages the gateway sees last seconds (a restart).
RETRY_AFTER = duration_pb2.Duration(seconds=2)
_FIRST_RETRY_S = 0.05
_MAX_RETRY_S = 1.0
# Answers of a replica that is starting or stopping. CANCELLED comes from the server here (our own
# cancellation raises CancelledError instead): gRPC cancels calls that arrive as a server stops.
_RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

# Codes that are the downstream's verdict on the request itself: the user can act on them.
_PASSED_THROUGH = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


def error_from_rpc(
    service: str,
    code: grpc.StatusCode,
    details: str,
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
    timeout_s: float,
) -> FerryError:
    """Maps a failed call to ``service`` to the error the gateway's caller gets.

    Args:
        service: the downstream's name for messages, "inference", "store" or "jobs".
        code: the call's status code.
        details: the call's status message.
        trailing_metadata: the call's trailers (a rich google.rpc.Status travels there).
        timeout_s: the deadline the call had, named when it ran out.
    """
    if code in _PASSED_THROUGH:
        rich = _rich_status(trailing_metadata)
        if rich is not None and rich.code == code.value[0]:
            return error_from_status(rich)  # keeps the downstream's ErrorInfo reason
        error = FerryError(details or f"{service} refused the request", reason=code.name)
        error.code = code
        return error
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(
            f"{service} did not answer within {timeout_s:g}s; it is overloaded or unavailable, "
            "retry in a few seconds",
            reason="BACKEND_DEADLINE_EXCEEDED",
            metadata={"backend": service},
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return unavailable(service)
    # INTERNAL, UNKNOWN, UNIMPLEMENTED, UNAUTHENTICATED, DATA_LOSS: a fault inside Ferry, not the
    # request's; its details are for operators (logged), the user gets the trace id to report.
    log.error("%s failed with %s: %s", service, code.name, details)
    error = FerryError(
        f"{service} failed while handling this request; retrying may help, and the trace id "
        f"{current_trace_id() or '(none)'} lets an operator find the cause",
        reason="BACKEND_ERROR",
        metadata={"backend": service, "code": code.name},
    )
    error.code = grpc.StatusCode.INTERNAL
    return error


def unavailable(service: str) -> Unavailable:
    """The error for a downstream that cannot be reached or is not ready."""
    return Unavailable(
        f"{service} is unavailable right now; retry in a few seconds",
        reason="BACKEND_UNAVAILABLE",
        metadata={"backend": service},
        retry_after=RETRY_AFTER,
    )


def _rich_status(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> status_pb2.Status | None:
    for key, value in trailing_metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


class Backend:
    """One downstream gRPC service: every call gets the same deadline, retries and error mapping.

    Args:
        name: the downstream's name for messages, "inference", "store" or "jobs".
        channel: the channel the calls go over (asked whether it is connected after a timeout).
        timeout_s: the deadline of one call, retries included.
        own_unavailable: pass on an UNAVAILABLE that carries the downstream's own ErrorInfo
            (jobs' "recorded but not all items queued; retry with the same request_id",
            inference's MODEL_FAILED: a model that failed to load) instead of retrying it until
            the deadline: waiting would not change it, and its message says what the caller
            must do. An UNAVAILABLE without one, or one that passes by waiting (NOT_READY,
            SHUTTING_DOWN, MODEL_LOADING: ``_WAITED_REASONS``), is retried as for any backend.
    """

    def __init__(
        self, name: str, channel: grpc.aio.Channel, timeout_s: float, *, own_unavailable: bool = False
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._channel = channel
        self._own_unavailable = own_unavailable

    async def call(self, method: Callable[..., Awaitable[Response]], request: Any) -> Response:
        """Calls ``method(request)`` until it answers, within this backend's deadline.

        Raises:
            FerryError: the call failed (see ``error_from_rpc``); UNAVAILABLE when the deadline
                passed while the downstream could not be reached.
        """
        deadline = time.monotonic() + self.timeout_s
        delay = _FIRST_RETRY_S
        while True:
            try:
                return await method(request, timeout=deadline - time.monotonic(), wait_for_ready=True)
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code == grpc.StatusCode.UNAVAILABLE and self._own_unavailable:
                    rich = _rich_status(err.trailing_metadata())
                    if rich is not None and rich.code == code.value[0]:
                        own = error_from_status(rich)
                        if own.reason not in _WAITED_REASONS:  # those are retried like a down replica
                            raise own from None
                if code in _RETRIED and time.monotonic() + delay < deadline:
                    log.debug("%s unavailable (%s); retrying in %.2fs", self.name, err.details(), delay)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, _MAX_RETRY_S)
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and not self._connected():
                    # The whole deadline went waiting for a connection: an outage, not slowness.
                    raise unavailable(self.name) from None
                raise error_from_rpc(
                    self.name, code, err.details() or "", err.trailing_metadata(), self.timeout_s
                ) from None

    def _connected(self) -> bool:
        return self._channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY


@asynccontextmanager
async def publishing(what: str) -> AsyncIterator[None]:
    """Turns a failed JetStream publish inside the block into UNAVAILABLE.

    Args:
        what: the user-facing consequence, for example "the prediction could not be recorded".
    """
    try:
        yield
    except (TimeoutError, NatsError) as err:
        log.warning("publish failed: %s: %r", what, err)
        raise Unavailable(
            f"{what}: the message bus did not acknowledge it; retry in a few seconds",
            reason="EVENTS_UNAVAILABLE",
            retry_after=RETRY_AFTER,
        ) from None
