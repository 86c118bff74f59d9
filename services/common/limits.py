"""Request size limits, defined once for the edge (Envoy) and the services' gRPC servers.

Envoy refuses a request body over its route's limit with 413 (gRPC: INVALID_ARGUMENT) after
buffering at most that many bytes, before authentication and before any service sees it. The
services' gRPC message limit is the largest route limit, so a request that passed the edge never
meets gRPC's own "larger than max" refusal (RESOURCE_EXHAUSTED, which clients read as "retry").
"""

from __future__ import annotations

MIB = 1024 * 1024

PREDICT_REQUEST_BYTES = 16 * MIB
"""One image: the gateway's 10 MiB image limit, as base64 in JSON (4/3 larger), plus the fields."""
UPLOAD_REQUEST_BYTES = 32 * MIB
"""A batch job's inputs: several images in one request."""
UPLOAD_FILE_BYTES = 256 * MIB
"""One upload (``POST /v1/uploads``, a manifest or a zip of images): streamed, bounded by gateway."""
DEFAULT_REQUEST_BYTES = 1 * MIB
"""Everything else (reads, lists, cancel, retry, keys): small JSON or protobuf messages."""

MAX_MESSAGE_BYTES = max(PREDICT_REQUEST_BYTES, UPLOAD_REQUEST_BYTES, DEFAULT_REQUEST_BYTES)
"""Every gRPC server's and channel's message limit: the largest body the edge lets through."""


def describe(size: int) -> str:
    """A size as people read it: ``"16 MiB (16777216 bytes)"``."""
    mib = size / MIB
    shown = f"{mib:g} MiB" if mib == int(mib) else f"{mib:.1f} MiB"
    return f"{shown} ({size} bytes)"
