"""API keys: header parsing, and resolution through store's contract by digest, with a cache."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import pytest

from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from services.common.channels import open_channel
from services.common.downstream import Backend
from services.common.errors import FerryError, NotFound
from services.gateway.auth import INVALID_KEY, MISSING_KEY, Authenticator, api_key_from_metadata
from tests.gateway.servers import serving

GOOD_KEY = "ferry-test-key-1234"


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", f"Bearer {GOOD_KEY}")],
        [("authorization", f"bearer   {GOOD_KEY}  ")],
        [("Authorization", f"BEARER {GOOD_KEY}")],
        [("x-api-key", GOOD_KEY)],
        [("user-agent", "grpc"), ("x-api-key", f" {GOOD_KEY} ")],
        [("authorization", "Bearer "), ("x-api-key", GOOD_KEY)],
    ],
)
def test_key_is_read_from_bearer_or_x_api_key(metadata: list[tuple[str, str]]) -> None:
    assert api_key_from_metadata(metadata) == GOOD_KEY


@pytest.mark.parametrize("metadata", [None, [], [("authorization", "Bearer")], [("x-api-key", "  ")]])
def test_missing_key_says_which_header_to_send(metadata: list[tuple[str, str]] | None) -> None:
    with pytest.raises(FerryError) as caught:
        api_key_from_metadata(metadata)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.message == MISSING_KEY


def test_other_auth_scheme_is_refused_with_the_expected_one() -> None:
    with pytest.raises(FerryError) as caught:
        api_key_from_metadata([("authorization", "Basic dXNlcjpwYXNz")])
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "'Basic'" in caught.value.message and "Bearer <key>" in caught.value.message


class KeyStore(store_service_pb2_grpc.StoreServiceServicer):
    """Store's LookupApiKey contract over one known key; remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def LookupApiKey(
        self, request: store_service_pb2.LookupApiKeyRequest, context: Any
    ) -> store_service_pb2.LookupApiKeyResponse:
        self.asked.append(request.key_sha256)
        if request.key_sha256 == hashlib.sha256(GOOD_KEY.encode()).hexdigest():
            return store_service_pb2.LookupApiKeyResponse(tenant="acme", key_name="test")
        raise NotFound("no such key", "API_KEY_NOT_FOUND")


class Call:
    """The part of a ServicerContext the authenticator reads."""

    def __init__(self, key: str) -> None:
        self._metadata = (("authorization", f"Bearer {key}"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


async def test_key_resolves_to_tenant_by_digest_and_is_cached() -> None:
    keys = KeyStore()
    async with serving(
        lambda s: store_service_pb2_grpc.add_StoreServiceServicer_to_server(keys, s)
    ) as target:
        channel = open_channel(target, 1024 * 1024)
        auth = Authenticator(
            store_service_pb2_grpc.StoreServiceStub(channel), Backend("store", channel, 5.0), 60.0
        )
        assert await auth.tenant(Call(GOOD_KEY)) == "acme"  # type: ignore[arg-type]
        assert await auth.tenant(Call(GOOD_KEY)) == "acme"  # type: ignore[arg-type]
        for _ in range(2):
            with pytest.raises(FerryError) as caught:
                await auth.tenant(Call("not-a-real-key"))  # type: ignore[arg-type]
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.message == INVALID_KEY
            # Actionable: says why it may fail and where a working key comes from, never the key.
            assert "revoked" in INVALID_KEY and "ferry keys create" in INVALID_KEY
            assert "not-a-real-key" not in caught.value.message
        await channel.close()
    # One lookup per key (answers are cached, unknown ones too), and only digests reach store.
    assert keys.asked == [
        hashlib.sha256(GOOD_KEY.encode()).hexdigest(),
        hashlib.sha256(b"not-a-real-key").hexdigest(),
    ]


async def test_store_outage_is_unavailable_not_unauthenticated() -> None:
    async with serving(lambda s: None) as target:
        pass  # the port is closed again: nothing listens there
    channel = open_channel(target, 1024 * 1024)
    auth = Authenticator(
        store_service_pb2_grpc.StoreServiceStub(channel), Backend("store", channel, 2.0), 60.0
    )
    with pytest.raises(FerryError) as caught:
        await auth.tenant(Call(GOOD_KEY))  # type: ignore[arg-type]
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "store is unavailable" in caught.value.message
    await channel.close()


async def test_known_keys_keep_working_while_store_is_down_and_unknown_ones_do_not() -> None:
    keys = KeyStore()
    server = grpc.aio.server()
    store_service_pb2_grpc.add_StoreServiceServicer_to_server(keys, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}", 1024 * 1024)
    stub = store_service_pb2_grpc.StoreServiceStub(channel)
    # ttl 0: every call asks store, so the outage is seen at once.
    trusting = Authenticator(stub, Backend("store", channel, 1.0), ttl_s=0.0, stale_ttl_s=3600.0)
    strict = Authenticator(stub, Backend("store", channel, 1.0), ttl_s=0.0, stale_ttl_s=0.0)
    assert await trusting.tenant(Call(GOOD_KEY)) == "acme"  # type: ignore[arg-type]
    assert await strict.tenant(Call(GOOD_KEY)) == "acme"  # type: ignore[arg-type]
    await server.stop(None)

    assert await trusting.tenant(Call(GOOD_KEY)) == "acme"  # type: ignore[arg-type]
    for auth, key in ((strict, GOOD_KEY), (trusting, "never-seen-key")):
        with pytest.raises(FerryError) as caught:
            await auth.tenant(Call(key))  # type: ignore[arg-type]
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    await channel.close()


def test_a_bare_key_in_the_authorization_header_is_not_echoed() -> None:
    """`authorization: <key>` without the scheme: the 401 must not repeat the key."""
    with pytest.raises(FerryError) as refused:
        api_key_from_metadata([("authorization", GOOD_KEY)])
    assert GOOD_KEY not in refused.value.message and "Bearer <key>" in refused.value.message
    assert refused.value.reason == "UNSUPPORTED_AUTH_SCHEME"
