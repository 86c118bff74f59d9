"""A service's start waits out JetStream's leader elections instead of exiting on the first timeout."""

from __future__ import annotations

import logging
import time

import nats.errors
import nats.js.errors
import pytest

from services.common.messaging import ensure_streams, until_jetstream_answers


class Flaky:
    """Answers ``errors`` in turn, then "ok"; counts the calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_each_way_jetstream_says_not_yet_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    request = Flaky(
        nats.errors.TimeoutError(),
        nats.errors.NoRespondersError(),
        nats.js.errors.ServiceUnavailableError(
            code=503, err_code=10008, description="JetStream system temporarily unavailable"
        ),
    )
    with caplog.at_level(logging.WARNING):
        assert await until_jetstream_answers(request, "the bucket b", budget_s=10) == "ok"
    assert request.calls == 4
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3 and all("the bucket b" in line for line in said), said


async def test_gives_up_with_the_last_error_after_its_budget() -> None:
    request = Flaky(*[nats.errors.TimeoutError() for _ in range(100)])
    with pytest.raises(nats.errors.TimeoutError):
        await until_jetstream_answers(request, "the streams", budget_s=0.6)
    # 0.25 s, then 0.5 s would pass the budget: two tries, not a hundred.
    assert request.calls == 2


async def test_any_other_error_is_raised_at_once() -> None:
    request = Flaky(
        nats.js.errors.BadRequestError(code=400, description="bad config"), nats.errors.TimeoutError()
    )
    with pytest.raises(nats.js.errors.BadRequestError):
        await until_jetstream_answers(request, "the streams", budget_s=10)
    assert request.calls == 1


def unplaced(but: str = "") -> nats.js.errors.BadRequestError:
    """NATS's "no suitable peers for placement" (``but``: what follows it). With ", peer offline":
    a forming cluster whose node's routes are not up yet; alone: a stream of more replicas than
    the cluster has nodes, and a cluster just formed whose peers' reports had not reached its
    meta leader."""
    return nats.js.errors.BadRequestError(
        code=400, err_code=10005, description=f"no suitable peers for placement{but}"
    )


def peers_offline() -> nats.js.errors.BadRequestError:
    return unplaced(", peer offline")


async def test_a_cluster_peer_not_joined_yet_is_waited_for() -> None:
    request = Flaky(peers_offline())
    assert await until_jetstream_answers(request, "the streams", budget_s=10) == "ok"
    assert request.calls == 2


async def test_a_placement_refused_without_a_peer_offline_is_asked_again_for_a_while() -> None:
    request = Flaky(unplaced())
    assert await until_jetstream_answers(request, "the streams", budget_s=10) == "ok"
    assert request.calls == 2
    # For good (more replicas than nodes): said after the shorter budget, not the whole one.
    request = Flaky(*[unplaced()] * 100)
    started = time.monotonic()
    with pytest.raises(nats.js.errors.BadRequestError):
        await until_jetstream_answers(request, "the streams", budget_s=60, unplaced_budget_s=1)
    assert 1 < request.calls < 10 and time.monotonic() - started < 5


class FormingCluster:
    """JetStream of a 3-node cluster whose third node joins after the first stream request."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.joined = False

    async def add_stream(self, config: object) -> None:
        if not self.joined:
            self.joined = True
            raise peers_offline()
        self.added.append(str(getattr(config, "name", "")))

    async def update_stream(self, config: object) -> None:
        raise nats.js.errors.NotFoundError(code=404, err_code=10059, description="stream not found")


async def test_streams_asked_for_while_a_peer_joins_are_created_once_it_has() -> None:
    """It was taken for "the stream exists", updated, and `ferry up` died on "stream not found"."""
    cluster = FormingCluster()
    await ensure_streams(cluster, 3)  # type: ignore[arg-type]
    assert cluster.added and len(cluster.added) == len(set(cluster.added)), cluster.added
