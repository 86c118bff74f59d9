"""Claims of request_ids in the shared KV bucket, by several gateway replicas on a real NATS."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from services.common import messaging
from services.common.errors import AlreadyExists, FerryError, InvalidArgument, Unavailable
from services.gateway.request_ids import REQUEST_IDS_BUCKET, RequestIds, digest
from tests.gateway.test_nats import PrivateNats, private_nats  # noqa: F401  (a fixture)

DAY = 24 * 3600.0


async def replicas(stack: AsyncExitStack, nats_url: str, n: int, ttl_s: float = DAY) -> list[RequestIds]:
    """``n`` gateways' claims, each over its own NATS connection, as separate processes have."""
    opened = []
    for i in range(n):
        _, js = await messaging.connect(nats_url, f"gateway-{i}", stack)
        opened.append(await RequestIds.open(js, ttl_s))
    return opened


async def outcome(
    ids: RequestIds, tenant: str, request_id: str, request: bytes, kind: str = "predict"
) -> str:
    try:
        await ids.claim(kind, tenant, request_id, request).held()
    except FerryError as err:
        return err.reason
    return "held"


async def test_two_replicas_racing_with_other_inputs_one_wins_the_other_is_refused(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack, nats_url, 2)
        for n in range(20):  # both at once, many times: exactly one holds each request_id
            got = await asyncio.gather(
                outcome(a, "acme", f"race-{n}", digest("predict", ["cat"])),
                outcome(b, "acme", f"race-{n}", digest("predict", ["coffee"])),
            )
            assert sorted(got) == ["REQUEST_ID_REUSED", "held"], got


async def test_the_same_request_on_two_replicas_is_a_retry_on_both(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack, nats_url, 2)
        same = digest("predict", ["efficientnet-lite0", "", 5, b"\xff\xd8 a jpeg"])
        got = await asyncio.gather(*(outcome(r, "acme", "retry-1", same) for r in (a, b, a, b)))
        assert got == ["held"] * 4
        # The request_id is the tenant's own: another tenant's is another key.
        assert await outcome(b, "globex", "retry-1", digest("predict", ["other"])) == "held"


async def test_a_refusal_gives_the_request_id_back_an_outage_keeps_it(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        [ids] = await replicas(stack, nats_url, 1)
        claim = ids.claim("job", "acme", "fixed-later", digest("job", ["bad"]))
        await claim.held()
        await claim.settle(InvalidArgument("inputs[0] is not an image", reason="INVALID_IMAGE"))
        assert await outcome(ids, "acme", "fixed-later", digest("job", ["good"]), "job") == "held"

        claim = ids.claim("job", "acme", "maybe-recorded", digest("job", ["first"]))
        await claim.held()
        await claim.settle(Unavailable("JetStream did not acknowledge", reason="EVENTS_UNAVAILABLE"))
        assert (
            await outcome(ids, "acme", "maybe-recorded", digest("job", ["second"]), "job")
            == "REQUEST_ID_REUSED"
        )
        assert await outcome(ids, "acme", "maybe-recorded", digest("job", ["first"]), "job") == "held"

        # A retry that found the key did not create it: its refusal gives nothing back.
        retry = ids.claim("job", "acme", "maybe-recorded", digest("job", ["first"]))
        await retry.held()
        await retry.settle(InvalidArgument("no", reason="INVALID_IMAGE"))
        assert (
            await outcome(ids, "acme", "maybe-recorded", digest("job", ["second"]), "job")
            == "REQUEST_ID_REUSED"
        )


async def test_the_refusal_says_to_use_a_new_request_id(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        [ids] = await replicas(stack, nats_url, 1)
        await ids.claim("predict", "acme", "msg", digest("predict", ["a"])).held()
        with pytest.raises(AlreadyExists) as refused:
            await ids.claim("predict", "acme", "msg", digest("predict", ["b"])).held()
        assert refused.value.reason == "REQUEST_ID_REUSED"
        assert "other inputs" in refused.value.message and "new request_id" in refused.value.message


async def test_without_a_request_id_nothing_is_claimed(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        [ids] = await replicas(stack, nats_url, 1)
        claim = ids.claim("predict", "acme", "", digest("predict", ["a"]))
        assert claim.task is None
        await claim.held()
        _, js = await messaging.connect(nats_url, "reader", stack)
        bucket = await js.key_value(REQUEST_IDS_BUCKET)
        with pytest.raises(KeyNotFoundError):
            await bucket.get("predict.none")


async def test_the_bucket_keeps_entries_for_the_setting_and_follows_a_change(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        await replicas(stack, nats_url, 1, ttl_s=3600.0)
        _, js = await messaging.connect(nats_url, "reader", stack)
        info = await js.stream_info(f"KV_{REQUEST_IDS_BUCKET}")
        assert info.config.max_age == 3600.0
        await replicas(stack, nats_url, 1, ttl_s=7200.0)
        info = await js.stream_info(f"KV_{REQUEST_IDS_BUCKET}")
        assert info.config.max_age == 7200.0


def test_digests_tell_apart_parts_that_only_shift_bytes() -> None:
    assert digest("predict", ["ab", "c"]) != digest("predict", ["a", "bc"])
    assert digest("predict", ["m", 5]) == digest("predict", ["m", 5])
    assert digest("predict", ["m"]) != digest("job", ["m"])


async def test_a_claim_rides_out_a_nats_restart_and_gives_up_after_its_budget(
    private_nats: tuple[PrivateNats, JetStreamContext],  # noqa: F811  (the imported fixture)
) -> None:
    """As a record's publish does: a NATS restart within the budget is waited for, not refused."""
    server, js = private_nats
    ids = await RequestIds.open(js, DAY, budget_s=20.0)
    server.stop()
    claim = ids.claim("predict", "acme", "across-a-restart", digest("predict", ["cat"]))
    await asyncio.sleep(1.0)  # attempts fail at once meanwhile; the claim keeps trying
    assert claim.task is not None and not claim.task.done()
    server.start()
    await claim.held()
    assert (
        await outcome(ids, "acme", "across-a-restart", digest("predict", ["coffee"])) == "REQUEST_ID_REUSED"
    )

    server.stop()
    with pytest.raises(Unavailable) as caught:
        await RequestIds(ids._bucket, budget_s=1.0).claim("predict", "acme", "x", b"d").held()
    assert caught.value.reason == "EVENTS_UNAVAILABLE"
    server.start()
    await ids.claim("predict", "acme", "y", b"d").held()  # back (the fixture drains a live connection)
