"""The key that makes a write safe to repeat when the client sent none: the edge's request id.

Envoy gives every request an ``x-request-id`` (it replaces one a client sends: it is the edge) and
keeps it when it resends the request to a gateway after a reset, for example one that was
restarting. Ids derived from it make such a resend land on the same prediction or job instead of
a second one. A client's own ``request_id`` always wins; a direct call without Envoy has neither.
"""

from __future__ import annotations

from collections.abc import Iterable

EDGE_PREFIX = "edge:"


def edge_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """``edge:<x-request-id>`` from a call's metadata, or "" when it has none."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return f"{EDGE_PREFIX}{value}"
    return ""
