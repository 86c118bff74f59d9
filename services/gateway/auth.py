"""API keys: read from request metadata, resolved to a caller (tenant, scopes) by store, cached briefly.

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
from services.common import scopes
from services.common.downstream import Backend
from services.common.errors import FerryError, Unauthenticated
from services.common.logs import bind
from services.gateway.identity import Caller

log = logging.getLogger(__name__)

MISSING_KEY = "missing API key: send the header 'authorization: Bearer <key>'"
# Says what to do without telling a guesser anything: the key is never repeated, and the same
# words answer a mistyped, a revoked and another stack's key.
INVALID_KEY = (
    "invalid API key: no active key matches it (mistyped, revoked, or another server's); use the key "
    "`ferry up` printed (its state folder's dev-api-key) or one from `ferry keys create`"
)
# An unknown key is remembered briefly only, so a key created a moment ago works almost at once.
NEGATIVE_TTL_S = 5.0
# Bounds the cache's memory against a flood of made-up keys.
_MAX_CACHED = 10_000
# Failures that say "store cannot answer now", not "the key is bad".
_OUTAGE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


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
            raise Unauthenticated(_wrong_scheme(scheme), reason="UNSUPPORTED_AUTH_SCHEME")
        if key.strip():
            return key.strip()
    key = headers.get("x-api-key", "").strip()
    if key:
        return key
    raise Unauthenticated(MISSING_KEY, reason="MISSING_API_KEY")


#: HTTP authentication schemes (IANA's registry and common ones): the only words of a wrong
#: authorization header an answer repeats; anything else may be a key sent without "Bearer ".
_KNOWN_SCHEMES = frozenset(
    {"basic", "digest", "negotiate", "ntlm", "hoba", "mutual", "oauth", "token", "vapid", "aws4-hmac-sha256"}
)


def _wrong_scheme(scheme: str) -> str:
    """The message for an authorization header that is not ``Bearer <key>``, echoing no secret."""
    if scheme.lower() in _KNOWN_SCHEMES:
        return f"the authorization header uses the {scheme!r} scheme; send 'authorization: Bearer <key>'"
    return "the authorization header is not 'Bearer <key>' (a bare key needs the Bearer scheme before it)"


def key_digest(key: str) -> str:
    """The hex SHA-256 digest of an API key, which is what store keeps and is asked for."""
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    """Resolves a request's API key to its caller through store, with a small TTL cache.

    When store cannot be asked (it, or Postgres behind it, is down), a key that resolved within
    ``stale_ttl_s`` keeps working: a database outage must not stop predictions for callers the
    gateway already knows. Unknown keys are never served stale.
    """

    def __init__(
        self,
        store: store_service_pb2_grpc.StoreServiceStub,
        backend: Backend,
        ttl_s: float,
        stale_ttl_s: float = 0.0,
    ) -> None:
        self._store = store
        self._backend = backend
        self._ttl_s = ttl_s
        self._stale_ttl_s = stale_ttl_s
        self._negative_ttl_s = min(ttl_s, NEGATIVE_TTL_S)
        # digest -> (monotonic time it was resolved, caller or None for an unknown key)
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._serving_stale = False

    async def tenant(self, context: grpc.aio.ServicerContext[object, object]) -> str:
        """Returns the tenant of the request's API key (see ``caller``)."""
        return (await self.caller(context.invocation_metadata())).tenant

    async def caller(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        """Returns the caller whose API key the request's metadata carries.

        Raises:
            Unauthenticated: the key is missing or unknown.
            FerryError: store could not be asked (UNAVAILABLE or DEADLINE_EXCEEDED) and the key
                was not resolved recently enough to be trusted without it.
        """
        return await self.resolve(key_digest(api_key_from_metadata(metadata)))

    def must_ask(self, digest: str) -> bool:
        """Whether resolving ``digest`` needs store: it is neither cached nor a key that worked lately.

        A key that resolved within the stale TTL counts as known even once its cache entry is old,
        so throttling lookups of made-up keys never holds up callers the gateway knows.
        """
        cached = self._cache.get(digest)
        if cached is None:
            return True
        age = time.monotonic() - cached[0]
        if cached[1] is None:
            return age >= self._negative_ttl_s
        return age >= max(self._ttl_s, self._stale_ttl_s)

    async def resolve(self, digest: str) -> Caller:
        """Returns the caller of the key with this digest (see ``caller``)."""
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self._ttl(cached[1]):
            found = cached[1]
        else:
            found = await self._resolve(digest, cached, now)
        if found is None:
            raise Unauthenticated(INVALID_KEY, reason="INVALID_API_KEY")
        bind(tenant=found.tenant)  # the call's log lines, its access line included, name the tenant
        return found

    def forget(self, digest: str) -> None:
        """Drops a key from the cache (it was revoked here): its next use asks store."""
        self._cache.pop(digest, None)

    def _ttl(self, found: Caller | None) -> float:
        return self._ttl_s if found is not None else self._negative_ttl_s

    async def _resolve(
        self, digest: str, cached: tuple[float, Caller | None] | None, now: float
    ) -> Caller | None:
        try:
            found = await self._lookup(digest)
        except FerryError as err:
            if err.code not in _OUTAGE or cached is None or cached[1] is None:
                raise
            if now - cached[0] >= self._stale_ttl_s:
                raise
            if not self._serving_stale:
                log.warning(
                    "store cannot check API keys (%s); trusting keys it confirmed recently", err.reason
                )
                self._serving_stale = True
            return cached[1]
        if self._serving_stale:
            log.info("store checks API keys again")
            self._serving_stale = False
        self._remember(digest, found, now)
        return found

    async def _lookup(self, digest: str) -> Caller | None:
        request = store_service_pb2.LookupApiKeyRequest(key_sha256=digest)
        try:
            answer: store_service_pb2.LookupApiKeyResponse = await self._backend.call(
                self._store.LookupApiKey, request
            )
        except FerryError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:  # store's answer for a digest it does not know
                return None
            raise
        if not answer.tenant:
            return None
        return Caller(
            tenant=answer.tenant,
            # A store from before scopes names none: its keys keep what they could do then.
            scopes=frozenset(answer.scopes or scopes.DEFAULT),
            key_id=answer.key_id,
            rate_per_s=answer.rate_per_s,
            burst=answer.burst,
        )

    def _remember(self, digest: str, found: Caller | None, now: float) -> None:
        if len(self._cache) >= _MAX_CACHED:
            keep = max(self._ttl_s, self._stale_ttl_s)
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < keep}
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
        self._cache[digest] = (now, found)
