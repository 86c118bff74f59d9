"""store's API key contract on real Postgres: create, look up by digest, list, revoke."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def test_a_created_key_resolves_with_its_scopes_and_rate_until_revoked(
    store: store_service_pb2_grpc.StoreServiceStub,
) -> None:
    created = await store.CreateApiKey(
        pb.CreateApiKeyRequest(
            key_sha256=digest("fy_one"),
            tenant="acme",
            name="ci",
            scopes=["read", "jobs"],
            rate_per_s=50,
            burst=10,
            hint="fy_one",
        )
    )
    assert created.key.tenant == "acme" and list(created.key.scopes) == ["read", "jobs"]
    assert not created.key.HasField("revoke_time")

    found = await store.LookupApiKey(pb.LookupApiKeyRequest(key_sha256=digest("fy_one")))
    assert (found.tenant, list(found.scopes), found.key_id) == ("acme", ["read", "jobs"], created.key.id)
    assert (found.rate_per_s, found.burst) == (50, 10)

    listed = await store.ListApiKeys(pb.ListApiKeysRequest(tenant="acme"))
    assert [k.id for k in listed.keys] == [created.key.id]

    revoked = await store.RevokeApiKey(pb.RevokeApiKeyRequest(id=created.key.id))
    assert revoked.key_sha256 == digest("fy_one") and revoked.key.HasField("revoke_time")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store.LookupApiKey(pb.LookupApiKeyRequest(key_sha256=digest("fy_one")))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (await store.ListApiKeys(pb.ListApiKeysRequest(tenant="acme"))).keys
    shown = await store.ListApiKeys(pb.ListApiKeysRequest(tenant="acme", include_revoked=True))
    assert [k.id for k in shown.keys] == [created.key.id]


async def test_listing_pages_newest_first_and_a_digest_is_created_once(
    store: store_service_pb2_grpc.StoreServiceStub,
) -> None:
    ids = []
    for n in range(3):
        request = pb.CreateApiKeyRequest(key_sha256=digest(f"fy_page{n}"), tenant="paged", scopes=["read"])
        ids.append((await store.CreateApiKey(request)).key.id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store.CreateApiKey(request)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

    first = await store.ListApiKeys(pb.ListApiKeysRequest(tenant="paged", page_size=2))
    rest = await store.ListApiKeys(
        pb.ListApiKeysRequest(tenant="paged", page_size=2, page_token=first.next_page_token)
    )
    assert [k.id for k in [*first.keys, *rest.keys]] == ids[::-1]
    assert not rest.next_page_token


async def test_revoking_an_unknown_key_is_not_found(store: store_service_pb2_grpc.StoreServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store.RevokeApiKey(pb.RevokeApiKeyRequest(id="0193a1b2-0000-7000-8000-000000000000"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
