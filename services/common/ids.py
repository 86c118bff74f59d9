"""Resource ids: time-ordered UUIDv7 for new records, deterministic UUIDv5 for idempotent ones."""

from __future__ import annotations

import os
import time
import uuid

from services.common.errors import InvalidArgument

# Fixed namespace so the same (tenant, request_id) maps to the same job id on every gateway.
_JOB_NAMESPACE = uuid.UUID("6f1c2a64-3b0e-4f7e-9a57-0c9d1e7f3a10")
_PREDICTION_NAMESPACE = uuid.UUID("0b7d4c55-8a31-4e0f-b2a6-5d9e3c1f7a28")


def uuid7() -> uuid.UUID:
    """Returns a UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits; sorts by time."""
    return uuid7_at(time.time_ns() // 1_000_000, os.urandom(10))


def uuid7_at(ms: int, seed: bytes) -> uuid.UUID:
    """A UUIDv7 for Unix time ``ms`` whose other 74 bits come from ``seed`` (at least 10 bytes).

    The same (ms, seed) always gives the same id: a deterministic id that still sorts by time.
    """
    rand = int.from_bytes(seed[:10], "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 68) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return uuid.UUID(int=value)


def job_id_for_request(tenant: str, request_id: str) -> uuid.UUID:
    """The job id for a client's idempotency key: a retry with the same key finds the same job."""
    return uuid.uuid5(_JOB_NAMESPACE, f"{tenant}\x00{request_id}")


def prediction_id_for_request(tenant: str, request_id: str) -> uuid.UUID:
    """The prediction id for a sync Predict's idempotency key: a retry records the same row.

    Drawn from its own namespace so that a job and a prediction with one request_id never share an id.
    """
    return uuid.uuid5(_PREDICTION_NAMESPACE, f"{tenant}\x00{request_id}")


def item_record_id(job_id: uuid.UUID, item_index: int) -> uuid.UUID:
    """The prediction id of one job item: every redelivery of the item lands on the same row."""
    return uuid.uuid5(job_id, str(item_index))


def parse_name(name: str, collection: str) -> uuid.UUID:
    """Parses ``"{collection}/{uuid}"`` (or a bare uuid) into a UUID.

    Raises:
        InvalidArgument: the name is not of that form.
    """
    raw = name.removeprefix(f"{collection}/")
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidArgument(
            f"{name!r} is not a valid {collection[:-1]} name; expected "
            f"'{collection}/<uuid>', for example '{collection}/{uuid7()}'",
            reason="INVALID_RESOURCE_NAME",
            metadata={"name": name},
        ) from None
