"""Ids of writes without a client's request_id: the same for the edge's resend, sorted by time."""

from __future__ import annotations

from services.common.ids import uuid7
from services.gateway.idempotency import Edge, new_id

STAMP = (("authorization", "Bearer k"), ("x-request-id", "4b1e-77"), ("x-ferry-edge-ms", "1764104400123"))


def test_a_resend_of_the_same_request_gets_the_same_id() -> None:
    edge = Edge.of(STAMP)
    assert edge == Edge("4b1e-77", 1764104400123)
    assert new_id("prediction", "acme", edge) == new_id("prediction", "acme", Edge.of(STAMP))


def test_ids_differ_by_kind_tenant_request_and_part() -> None:
    edge = Edge.of(STAMP)
    other = Edge("5c2f-88", edge.arrived_ms) if edge else None
    ids = {
        new_id("prediction", "acme", edge),
        new_id("job", "acme", edge),
        new_id("prediction", "globex", edge),
        new_id("prediction", "acme", other),
        new_id("oip", "acme", edge, "0"),
        new_id("oip", "acme", edge, "1"),
    }
    assert len(ids) == 6


def test_edge_ids_are_uuid7_of_the_arrival_time_so_they_sort_by_time() -> None:
    earlier = new_id("prediction", "acme", Edge("b", 1764104400123))
    later = new_id("prediction", "acme", Edge("a", 1764104400124))
    assert earlier.version == later.version == 7
    assert int(earlier.hex[:12], 16) == 1764104400123  # the first 48 bits are the time
    assert earlier < later


def test_without_the_edges_stamp_every_write_gets_a_fresh_id() -> None:
    assert Edge.of((("x-request-id", "4b1e"),)) is None  # a call that did not come through Envoy
    assert Edge.of(None) is None
    fresh = new_id("prediction", "acme", None)
    assert fresh != new_id("prediction", "acme", None)
    assert fresh.version == uuid7().version == 7
