"""Every stream and bucket has ``nats_stream_replicas`` copies, and survives its leader's kill -9."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import nats
import nats.errors
import nats.js.errors
from nats.js.api import ObjectStoreConfig

from services.common import messaging, objects
from services.common.errors import FerryError
from services.common.settings import NatsSettings
from services.gateway.request_ids import REQUEST_IDS_BUCKET, RequestIds, digest
from tests.scaling.cluster import LocalNatsCluster

JETSTREAM_UP_S = 30.0


def test_replicas_setting_defaults_to_one_node() -> None:
    assert NatsSettings().nats_stream_replicas == 1
    assert NatsSettings(nats_stream_replicas=3).nats_stream_replicas == 3


async def test_every_stream_and_bucket_has_three_copies(nats_cluster: LocalNatsCluster) -> None:
    """Asked right after the nodes start, before JetStream has a meta leader: a service's start
    waits for it (until_jetstream_answers) rather than exiting on the first timeout."""
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_cluster.url, "test", stack)
        await messaging.ensure_streams(js, 3)
        bucket = await messaging.open_cancelled_bucket(js, 3)
        for config in messaging.STREAMS:
            info = await js.stream_info(str(config.name))
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        status = await bucket.status()
        assert status.stream_info.config.num_replicas == 3


async def test_queued_items_survive_the_leader_killed(nats_cluster: LocalNatsCluster) -> None:
    """Items acknowledged by the stream are all there after its leader dies without warning."""
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_cluster.url, "test", stack)
        await messaging.ensure_streams(js, 3)
        subject = messaging.job_items_subject()
        for i in range(200):
            await js.publish(subject, f"item {i}".encode(), headers={"Nats-Msg-Id": f"item-{i}"})
        info = await js.stream_info(messaging.WORK_STREAM)
        assert info.cluster is not None and info.cluster.leader is not None
        leader = int(info.cluster.leader.rsplit("-", 1)[1])
        nats_cluster.kill_node(leader)
        async with asyncio.timeout(JETSTREAM_UP_S):
            while True:
                try:
                    info = await js.stream_info(messaging.WORK_STREAM)
                    if info.cluster is not None and info.cluster.leader not in (None, f"ferry-{leader}"):
                        break
                except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
                    pass
                await asyncio.sleep(0.2)
        assert info.state.messages == 200
        # A publish retried across the failover is still deduplicated by the new leader.
        ack = await js.publish(subject, b"item 7", headers={"Nats-Msg-Id": "item-7"})
        assert ack.duplicate


async def test_request_ids_claimed_through_different_nodes_are_one_memory(
    nats_cluster: LocalNatsCluster,
) -> None:
    """Two gateways, each connected to another node of the cluster, race to claim the same
    request_ids with other inputs: one wins each, the other is refused (the bucket has 3 copies)."""
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_cluster.url, "test", stack)
        await messaging.ensure_streams(js, 3)
        gateways = []
        for node in (0, 1):
            nc, node_js = await messaging.connect(
                f"nats://127.0.0.1:{nats_cluster.ports[node]}", f"gw{node}", stack
            )
            assert nc.connected_url is not None and nc.connected_url.port == nats_cluster.ports[node]
            gateways.append(await RequestIds.open(node_js, 3600.0, replicas=3))
        info = await js.stream_info(f"KV_{REQUEST_IDS_BUCKET}")
        assert info.config.num_replicas == 3

        async def outcome(ids: RequestIds, request_id: str, inputs: str) -> str:
            try:
                await ids.claim("predict", "acme", request_id, digest("predict", [inputs])).held()
            except FerryError as err:
                return err.reason
            return "held"

        for n in range(20):
            got = await asyncio.gather(
                outcome(gateways[0], f"across-{n}", "cat"), outcome(gateways[1], f"across-{n}", "coffee")
            )
            assert sorted(got) == ["REQUEST_ID_REUSED", "held"], got
            # Each gateway's retry of its own request: held only where it won.
            again = [
                await outcome(g, f"across-{n}", inputs)
                for g, inputs in zip(gateways, ("cat", "coffee"), strict=True)
            ]
            assert again == got


async def test_buckets_opened_at_once_by_every_service_on_a_new_cluster(
    nats_cluster: LocalNatsCluster,
) -> None:
    """What the scaled stack's start does: several processes, each on its own node, open the same
    3-copy buckets at once on a cluster that has just started (CI's fresh clone once saw a gateway
    exit on the first 5 s timeout of ``js.key_value`` there)."""
    async with AsyncExitStack() as stack:
        contexts = [
            (await messaging.connect(f"nats://127.0.0.1:{port}", f"service-{node}", stack))[1]
            for node, port in enumerate(nats_cluster.ports)
        ]
        buckets = await asyncio.gather(
            *(
                messaging.open_key_value(js, "ferry_start_race", replicas=3, ttl_s=60.0)
                for js in contexts
                for _ in range(2)
            )
        )
        await buckets[0].put("written-through-node-0", b"1")
        # Every opener got the same bucket: what one wrote the others read.
        for bucket in buckets[1:]:
            assert (await bucket.get("written-through-node-0")).value == b"1"
        info = await contexts[2].stream_info("KV_ferry_start_race")
        assert info.config.num_replicas == 3 and info.config.max_age == 60.0


async def test_an_object_is_read_whole_through_every_node_as_soon_as_it_is_stored(
    nats_cluster: LocalNatsCluster,
) -> None:
    """Reads are direct gets, which any replica may answer, one behind the leader too: a chunk it
    does not have yet is asked of the leader, so a reader on any node gets the object whole."""
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_cluster.url, "test", stack)
        await messaging.ensure_streams(js, 3)
        bucket = await js.create_object_store(
            "replica_reads", config=ObjectStoreConfig(bucket="replica_reads", replicas=3)
        )
        readers = []
        for port in nats_cluster.ports:
            nc = await nats.connect(f"nats://127.0.0.1:{port}")
            stack.push_async_callback(nc.close)
            readers.append(nc.jetstream())
        for i in range(5):
            data = os.urandom(3 * 1024 * 1024 + i)

            async def one(piece: bytes = data) -> AsyncIterator[bytes]:
                yield piece

            await objects.put(js, "replica_reads", f"photo-{i}", one(), chunk_bytes=1024 * 1024)
            stores = [await reader.object_store("replica_reads") for reader in readers]
            got = await asyncio.gather(
                *(
                    objects.read(reader, "replica_reads", store, f"photo-{i}")
                    for reader, store in zip(readers, stores, strict=True)
                )
            )
            assert got == [data] * len(readers)
        assert (await bucket.status()).stream_info.config.num_replicas == 3
