"""The OTLP/gRPC trace receiver the tests use: ``ferry up --trace``'s own (``devstack.traces``)."""

from __future__ import annotations

from devstack.traces import Span as ReceivedSpan
from devstack.traces import TraceReceiver as OtlpCollector

__all__ = ["OtlpCollector", "ReceivedSpan"]
