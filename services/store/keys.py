"""store's API key handlers: lookups by digest for the gateway, and the admin API's writes.

A mixin of ``StoreServicer`` so the keys' handlers live apart from jobs and predictions.
"""

from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager
from datetime import UTC
from typing import Any

import asyncpg
import grpc
from asyncpg.pool import PoolConnectionProxy
from google.protobuf.timestamp_pb2 import Timestamp

from ferry.store.v1 import store_service_pb2 as pb
from services.common import paging
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.store import codec
from services.store.repositories import api_keys

Context = grpc.aio.ServicerContext[Any, Any]

_SHA256_HEX = re.compile("[0-9a-f]{64}")
#: Keys are few; a listing returns this many unless asked otherwise.
DEFAULT_PAGE_SIZE = 100


def _digest(value: str) -> str:
    digest = value.lower()
    if not _SHA256_HEX.fullmatch(digest):
        raise InvalidArgument(
            "key_sha256 must be the 64 hex digits of the key's SHA-256 digest", reason="INVALID_KEY_DIGEST"
        )
    return digest


def _timestamp(row: asyncpg.Record, column: str) -> Timestamp | None:
    if row[column] is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(row[column].astimezone(UTC))
    return stamp


def api_key_from_row(row: asyncpg.Record) -> pb.ApiKey:
    """A key row (``api_keys._COLUMNS``) as the contract's ApiKey."""
    return pb.ApiKey(
        id=str(row["id"]),
        tenant=row["tenant"],
        name=row["name"],
        scopes=list(row["scopes"]),
        rate_per_s=row["rate_per_s"],
        burst=row["burst"],
        hint=row["hint"],
        create_time=_timestamp(row, "create_time"),
        revoke_time=_timestamp(row, "revoked_at"),
    )


class ApiKeyHandlers:
    """LookupApiKey, CreateApiKey, ListApiKeys and RevokeApiKey over ``_connection``."""

    def _connection(self) -> AbstractAsyncContextManager[PoolConnectionProxy[asyncpg.Record]]:
        raise NotImplementedError  # StoreServicer provides the pooled connection

    async def LookupApiKey(
        self, request: pb.LookupApiKeyRequest, context: Context
    ) -> pb.LookupApiKeyResponse:
        digest = _digest(request.key_sha256)
        async with self._connection() as connection:
            row = await api_keys.lookup(connection, digest)
        if row is None:
            raise NotFound("no live API key has this digest", reason="API_KEY_NOT_FOUND")
        return pb.LookupApiKeyResponse(
            tenant=row["tenant"],
            key_name=row["name"],
            scopes=list(row["scopes"]),
            key_id=str(row["id"]),
            rate_per_s=row["rate_per_s"],
            burst=row["burst"],
        )

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        digest = _digest(request.key_sha256)
        if not request.tenant or not request.scopes:
            raise InvalidArgument(
                "a key needs a tenant and at least one scope", reason="INVALID_API_KEY_SPEC"
            )
        if request.rate_per_s < 0 or request.burst < 0:
            raise InvalidArgument("rate_per_s and burst cannot be negative", reason="INVALID_RATE_LIMIT")
        async with self._connection() as connection, connection.transaction():
            row = await api_keys.create(
                connection,
                digest,
                request.tenant,
                request.name,
                list(request.scopes),
                request.rate_per_s,
                request.burst,
                request.hint,
            )
        if row is None:
            raise AlreadyExists("a key with this digest exists already", reason="API_KEY_EXISTS")
        return pb.CreateApiKeyResponse(key=api_key_from_row(row))

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Context) -> pb.ListApiKeysResponse:
        limit = paging.page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        after = codec.keyset_position(paging.decode_page_token(request.page_token))
        async with self._connection() as connection:
            rows = await api_keys.newest(
                connection, request.tenant, request.include_revoked, limit + 1, after
            )
        token = ""
        if len(rows) > limit:
            last = rows[limit - 1]
            token = paging.encode_page_token({"t": last["create_time"].isoformat(), "id": str(last["id"])})
        return pb.ListApiKeysResponse(keys=[api_key_from_row(r) for r in rows[:limit]], next_page_token=token)

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Context
    ) -> pb.RevokeApiKeyResponse:
        key_id = codec.parse_id(request.id, "key")
        async with self._connection() as connection, connection.transaction():
            row = await api_keys.revoke(connection, key_id)
        if row is None:
            raise NotFound(
                f"key keys/{key_id} not found",
                reason="API_KEY_NOT_FOUND",
                metadata={"name": f"keys/{key_id}"},
            )
        return pb.RevokeApiKeyResponse(key=api_key_from_row(row), key_sha256=row["key_sha256"])
