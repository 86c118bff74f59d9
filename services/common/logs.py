"""Logging setup: JSON lines (one object per record) or a human format, tagged with the service.

``FERRY_LOG_FORMAT`` picks the format for every service: ``json`` (the default; what containers,
Kubernetes and log shippers want) or ``text`` (one readable line per record). A JSON record carries
its time, level, service, logger, message, the current OpenTelemetry trace and span ids, the fields
bound to the current RPC (``bind``) and any ``extra=`` fields given to the call.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from opentelemetry import trace

FORMATS = ("json", "text")
DEFAULT_FORMAT = "json"

#: Fields bound to the RPC being handled (tenant, request id...); the server interceptor gives
#: every call a fresh dict, so handlers can add to it and the access log line sees their additions.
_bound: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "ferry_log_fields", default=None
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def bind(**fields: Any) -> None:
    """Adds ``fields`` to every log record of the current RPC (a no-op outside one)."""
    current = _bound.get()
    if current is not None:
        current.update(fields)


def bound_fields() -> dict[str, Any]:
    """Returns the fields bound to the current RPC (empty outside one)."""
    return dict(_bound.get() or {})


def new_rpc_fields() -> contextvars.Token[dict[str, Any] | None]:
    """Starts a fresh set of bound fields for one RPC; pass the token to ``reset_rpc_fields``."""
    return _bound.set({})


def reset_rpc_fields(token: contextvars.Token[dict[str, Any] | None]) -> None:
    """Ends the RPC's bound fields started by ``new_rpc_fields``."""
    _bound.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = f"ferry-{service}"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        entry.update(_bound.get() or {})
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def log_format() -> str:
    """Returns the format ``FERRY_LOG_FORMAT`` asks for (``json`` when unset)."""
    chosen = os.environ.get("FERRY_LOG_FORMAT", DEFAULT_FORMAT).strip().lower() or DEFAULT_FORMAT
    if chosen not in FORMATS:
        raise ValueError(f"FERRY_LOG_FORMAT={chosen!r} is not one of {', '.join(FORMATS)}")
    return chosen


def setup_logging(service: str, level: str, fmt: str | None = None) -> None:
    """Configures the root logger for ``service`` at ``level``, in ``fmt`` (default: ``log_format()``)."""
    handler = logging.StreamHandler()
    if (fmt or log_format()) == "json":
        handler.setFormatter(JsonFormatter(service))
        # A crash's traceback becomes one JSON record too, not 30 lines a log shipper splits.
        sys.excepthook = log_uncaught
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s ferry-{service} %(name)s: %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    grpc_log = logging.getLogger(GRPC_CYTHON_LOGGER)
    if not any(isinstance(f, UndecodableMetadataFilter) for f in grpc_log.filters):
        grpc_log.addFilter(UndecodableMetadataFilter())


#: The logger grpcio's Cython layer writes to.
GRPC_CYTHON_LOGGER = "grpc._cython.cygrpc"


class UndecodableMetadataFilter(logging.Filter):
    """grpcio logs ``Invalid encoding on b'...'`` at ERROR, with a traceback, for every metadata
    value of a call that is not UTF-8 (``authorization: Bearer fy_\\xe9``), each time the call's
    metadata is read (three times per call in the gateway), and then reads the value as Latin-1.
    The call is answered as it should be (an unknown key: 401), so nothing is wrong in Ferry: any
    client could fill the logs with tracebacks. Those records become DEBUG, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Invalid encoding on"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def log_uncaught(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook`` that logs an uncaught exception as one record (KeyboardInterrupt aside)."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, tb)
        return
    logging.getLogger("ferry").critical("uncaught %s: %s", kind.__name__, error, exc_info=(kind, error, tb))
