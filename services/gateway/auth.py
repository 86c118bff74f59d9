"""API keys: read from request metadata, resolved to a tenant by store, cached briefly.

The key never leaves this module: store is asked by the key's SHA-256 digest, and neither the key
nor its digest is logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable

import grpc

from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from services.common.errors import FerryError, Unauthenticated
from services.gateway.downstream import Backend

log = logging.getLogger(__name__)

MISSING_KEY = "missing API key: send the header 'authorization: Bearer <key>'"
INVALID_KEY = "invalid API key"
# An unknown key is remembered briefly only, so a key created a moment ago works almost at once.
NEGATIVE_TTL_S = 5.0
# Bounds the cache's memory against a flood of made-up keys.
_MAX_CACHED = 10_000


def api_key_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """Returns the API key of a request's metadata.

    Accepts ``authorization: Bearer <key>`` (the scheme in any case) or ``x-api-key: <key>``.

    Raises:
        Unauthenticated: no key, or an ``authorization`` header of another scheme.
    """
    headers = {k.lower(): v for k, v in metadata or () if isinstance(v, str)}
    authorization = headers.get("authorization", "").strip()
    if authorization:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated(
                f"the authorization header uses the {scheme!r} scheme; send 'authorization: Bearer <key>'",
                reason="UNSUPPORTED_AUTH_SCHEME",
            )
        if key.strip():
            return key.strip()
    key = headers.get("x-api-key", "").strip()
    if key:
        return key
    raise Unauthenticated(MISSING_KEY, reason="MISSING_API_KEY")


def key_digest(key: str) -> str:
    """The hex SHA-256 digest of an API key, which is what store keeps and is asked for."""
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    """Resolves a request's API key to its tenant through store, with a small TTL cache."""

    def __init__(
        self, store: store_service_pb2_grpc.StoreServiceStub, backend: Backend, ttl_s: float
    ) -> None:
        self._store = store
        self._backend = backend
        self._ttl_s = ttl_s
        self._negative_ttl_s = min(ttl_s, NEGATIVE_TTL_S)
        # digest -> (monotonic expiry, tenant or None for an unknown key)
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def tenant(self, context: grpc.aio.ServicerContext[object, object]) -> str:
        """Returns the tenant of the request's API key.

        Raises:
            Unauthenticated: the key is missing or unknown.
            FerryError: store could not be asked (UNAVAILABLE or DEADLINE_EXCEEDED).
        """
        digest = key_digest(api_key_from_metadata(context.invocation_metadata()))
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            tenant = cached[1]
        else:
            tenant = await self._lookup(digest)
            self._remember(digest, tenant, now)
        if tenant is None:
            raise Unauthenticated(INVALID_KEY, reason="INVALID_API_KEY")
        return tenant

    async def _lookup(self, digest: str) -> str | None:
        request = store_service_pb2.LookupApiKeyRequest(key_sha256=digest)
        try:
            answer = await self._backend.call(self._store.LookupApiKey, request)
        except FerryError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:  # store's answer for a digest it does not know
                return None
            raise
        return answer.tenant or None

    def _remember(self, digest: str, tenant: str | None, now: float) -> None:
        if len(self._cache) >= _MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
        ttl = self._ttl_s if tenant is not None else self._negative_ttl_s
        self._cache[digest] = (now + ttl, tenant)
