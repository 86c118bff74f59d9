"""The admin API's logic: make, list and revoke API keys (store keeps them, by digest only).

A key is made here, from 32 random bytes, and shown once in CreateKey's answer; store never sees
it, only its SHA-256 digest, as for lookups.
"""

from __future__ import annotations

import math
import re
import secrets

from ferry.admin.v1 import key_service_pb2 as admin
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from services.common import scopes
from services.common.downstream import Backend
from services.common.errors import InvalidArgument
from services.common.ids import parse_name
from services.gateway.auth import Authenticator, key_digest

KEY_PREFIX = "fy_"
"""Every key starts so: secret scanners and people can tell a Ferry key at a glance."""
HINT_CHARS = 8
"""How much of a key is kept and listed to tell keys apart (the prefix and 5 random characters)."""
MAX_RATE_PER_S = 1_000_000.0
MAX_DISPLAY_NAME_CHARS = 100

_TENANT = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def new_api_key() -> str:
    """A fresh key: the prefix and 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _tenant(value: str) -> str:
    if not _TENANT.fullmatch(value):
        raise InvalidArgument(
            f"tenant is {value!r}; expected 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, for example 'acme'",
            reason="INVALID_TENANT",
            metadata={"field": "tenant"},
        )
    return value


def _scopes(values: list[str]) -> list[str]:
    wanted = {v.strip().lower() for v in values}
    unknown = sorted(wanted - set(scopes.ALL))
    if unknown or not wanted:
        shown = ", ".join(repr(s) for s in unknown) if unknown else "none"
        raise InvalidArgument(
            f"scopes has {'unknown scopes ' if unknown else ''}{shown}; give one or more of "
            f"{', '.join(scopes.ALL)}",
            reason="INVALID_SCOPES",
            metadata={"field": "scopes"},
        )
    return [s for s in scopes.ALL if s in wanted]


def _limits(rate_per_s: float, burst: int) -> None:
    if not (math.isfinite(rate_per_s) and 0 <= rate_per_s <= MAX_RATE_PER_S) or not 0 <= burst <= 1_000_000:
        raise InvalidArgument(
            f"rate_per_s must be between 0 and {MAX_RATE_PER_S:g} and burst between 0 and 1000000 "
            f"(0: the gateway's default); got {rate_per_s:g} and {burst}",
            reason="INVALID_RATE_LIMIT",
            metadata={"field": "rate_per_s"},
        )


def public_key(key: store_service_pb2.ApiKey) -> admin.Key:
    """Store's record of a key as the admin API shows it."""
    shown = admin.Key(
        name=f"keys/{key.id}",
        tenant=key.tenant,
        display_name=key.name,
        scopes=key.scopes,
        rate_per_s=key.rate_per_s,
        burst=key.burst,
        hint=key.hint,
        create_time=key.create_time,
    )
    if key.HasField("revoke_time"):
        shown.revoke_time.CopyFrom(key.revoke_time)
    return shown


class KeyAdmin:
    """CreateKey, ListKeys and RevokeKey, checked here and recorded by store."""

    def __init__(
        self, store: store_service_pb2_grpc.StoreServiceStub, backend: Backend, auth: Authenticator
    ) -> None:
        self._store = store
        self._backend = backend
        self._auth = auth

    async def create(self, request: admin.CreateKeyRequest) -> admin.CreateKeyResponse:
        """Makes a key; the answer is the only place it is ever shown."""
        _limits(request.rate_per_s, request.burst)
        name = request.display_name or "key"
        if len(name) > MAX_DISPLAY_NAME_CHARS or "\x00" in name:  # Postgres text holds no NUL
            raise InvalidArgument(
                f"display_name has {len(name)} characters; at most {MAX_DISPLAY_NAME_CHARS} are allowed,"
                " and no NUL character (U+0000)",
                reason="INVALID_DISPLAY_NAME",
                metadata={"field": "display_name"},
            )
        api_key = new_api_key()
        answer: store_service_pb2.CreateApiKeyResponse = await self._backend.call(
            self._store.CreateApiKey,
            store_service_pb2.CreateApiKeyRequest(
                key_sha256=key_digest(api_key),
                tenant=_tenant(request.tenant),
                name=name,
                scopes=_scopes(list(request.scopes)),
                rate_per_s=request.rate_per_s,
                burst=request.burst,
                hint=api_key[:HINT_CHARS],
            ),
        )
        return admin.CreateKeyResponse(key=public_key(answer.key), api_key=api_key)

    async def list(self, request: admin.ListKeysRequest) -> admin.ListKeysResponse:
        """A page of keys, newest first (the store validates page size and token)."""
        answer: store_service_pb2.ListApiKeysResponse = await self._backend.call(
            self._store.ListApiKeys,
            store_service_pb2.ListApiKeysRequest(
                tenant=_tenant(request.tenant) if request.tenant else "",
                include_revoked=request.show_revoked,
                page_size=request.page_size,
                page_token=request.page_token,
            ),
        )
        return admin.ListKeysResponse(
            keys=[public_key(k) for k in answer.keys], next_page_token=answer.next_page_token
        )

    async def revoke(self, request: admin.RevokeKeyRequest) -> admin.RevokeKeyResponse:
        """Revokes a key; this gateway refuses it at once, others within their cache's TTL."""
        key_id = parse_name(request.name, "keys")
        answer: store_service_pb2.RevokeApiKeyResponse = await self._backend.call(
            self._store.RevokeApiKey, store_service_pb2.RevokeApiKeyRequest(id=str(key_id))
        )
        self._auth.forget(answer.key_sha256)
        return admin.RevokeKeyResponse(key=public_key(answer.key))
