"""What a Postgres outage looks like from store, and logging it once instead of once per attempt.

While Postgres is down every ingest batch and every RPC that reaches the pool fails the same way;
a warning (or a traceback) per attempt would bury the one fact an operator needs: when it went
away, and when it came back.
"""

from __future__ import annotations

import logging
import time

import asyncpg
from google.protobuf import duration_pb2

from services.common.errors import Unavailable
from services.common.readiness import RETRY_AFTER_S

#: Errors that say "Postgres cannot be reached right now", not "this query is wrong".
UNREACHABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, e.g. the connection dropped mid-query
    asyncpg.InterfaceError,  # a pooled connection that is already closed
    asyncpg.CannotConnectNowError,  # the server is starting or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # A connection lost in the middle of a protocol exchange (a COPY, or the reset as the pool takes
    # it back) is left in that state, so the next use fails with this, not a connection error: seen
    # as "cannot switch to state 15; another operation (2) is in progress" when Postgres stopped.
    asyncpg.InternalClientError,
    OSError,  # refused, reset, no route, no socket file; ConnectionError is one of these
    TimeoutError,
)


def database_unavailable() -> Unavailable:
    """The error an RPC answers while Postgres cannot be reached: UNAVAILABLE, retry soon."""
    return Unavailable(
        f"store cannot reach its database right now; retry in {RETRY_AFTER_S:g} s",
        reason="DATABASE_UNAVAILABLE",
        metadata={"service": "store", "retry_after_s": f"{RETRY_AFTER_S:g}"},
        retry_after=duration_pb2.Duration(seconds=int(RETRY_AFTER_S)),
    )


class OutageLog:
    """Logs one warning when Postgres becomes unreachable and one line when it is back.

    Args:
        logger: where the two lines go (the caller's, so they name ingest or the RPC path).
        meanwhile: what the caller does until Postgres is back ("redelivering record batches").
        counted: what each failed attempt was, counted in the "back" line ("batches redelivered").
    """

    def __init__(self, logger: logging.Logger, meanwhile: str, counted: str) -> None:
        self._log = logger
        self._meanwhile = meanwhile
        self._counted = counted
        self._since: float | None = None
        self._failures = 0

    def failed(self, err: BaseException) -> None:
        """Records an attempt that could not reach Postgres; logs only the first of an outage."""
        self._failures += 1
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning("Postgres is unreachable (%r); %s until it is back", err, self._meanwhile)

    def succeeded(self) -> None:
        """Records an attempt that reached Postgres; ends an outage in progress."""
        if self._since is None:
            return
        lasted = time.monotonic() - self._since
        self._log.info(
            "Postgres is back after %.1f s; %d %s meanwhile", lasted, self._failures, self._counted
        )
        self._since, self._failures = None, 0


class _PoolFloorRetries(logging.Filter):
    """Drops asyncpg's "Failed to restore the pool connection floor" warnings.

    asyncpg (0.30+) logs one, with a traceback, each time its background refill of ``min_size``
    connections fails: over a long outage that is a traceback every minute, saying what the
    readiness probe and the OutageLog lines already said once.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to restore the pool connection floor")


def quiet_pool_floor_retries() -> None:
    """Silences asyncpg's per-attempt refill warnings in this process (idempotent)."""
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolFloorRetries) for f in pool_log.filters):
        pool_log.addFilter(_PoolFloorRetries())
