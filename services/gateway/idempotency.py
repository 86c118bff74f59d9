"""Ids that make a write safe to repeat when the client sent no ``request_id``: the edge's request.

Envoy gives every request an ``x-request-id`` and stamps when it arrived (``x-ferry-edge-ms``), and
keeps both when it resends the request to a gateway after a reset, for example one that was
restarting. An id derived from them lands such a resend on the same prediction or job instead of
a second one, and still sorts by time (a UUIDv7 of the arrival time). A client's own
``request_id`` always wins; a direct call without Envoy gets a fresh UUIDv7.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.ids import uuid7, uuid7_at

REQUEST_ID_HEADER = "x-request-id"
ARRIVAL_HEADER = "x-ferry-edge-ms"

Metadata = Iterable[tuple[str, str | bytes]] | None


@dataclass(frozen=True)
class Edge:
    """What Envoy said about a request: its id and when it arrived (Unix ms)."""

    request_id: str
    arrived_ms: int

    @classmethod
    def of(cls, metadata: Metadata) -> Edge | None:
        """The edge's stamp in a call's metadata, or None (a call that did not come through Envoy)."""
        headers = {k: v for k, v in metadata or () if isinstance(v, str)}
        request_id, arrived = headers.get(REQUEST_ID_HEADER, ""), headers.get(ARRIVAL_HEADER, "")
        if not request_id or not arrived.isdigit():
            return None
        return cls(request_id, int(arrived))


def new_id(kind: str, tenant: str, edge: Edge | None, part: str = "") -> uuid.UUID:
    """The id of a new ``kind`` ("prediction", "job", ...) written without a client's request_id.

    Args:
        kind: what is written, so a job and a prediction of one request never share an id.
        tenant: whose it is.
        edge: the edge's stamp; None gives a fresh UUIDv7.
        part: tells apart several writes of one request (the elements of one ModelInfer).
    """
    if edge is None:
        return uuid7()
    seed = hashlib.sha256(f"{kind}\x00{tenant}\x00{edge.request_id}\x00{part}".encode()).digest()
    return uuid7_at(edge.arrived_ms, seed)
