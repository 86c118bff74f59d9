"""A ``request_id`` remembers the request it came with, so one reused for other inputs is refused.

A client's ``request_id`` names what it writes (``services.common.ids``): a retry lands on the same
prediction or job. Sent again with *other* inputs, it would answer the new inputs under the first
write's name while the record keeps the first one. So each call that carries a ``request_id``
claims it in a JetStream KV bucket (``ferry_request_ids``) with a digest of what defines its work
(the model, version, inputs' contents, top_k, a job's manifest or notebook and parameters; never
transport details), before anything is recorded:

* the key is new: this call claims it (an atomic ``create``: of several replicas racing, one wins);
* it holds the same digest: a retry, which goes on as before (same name, recorded once);
* it holds another digest: ALREADY_EXISTS ``REQUEST_ID_REUSED``, and nothing is recorded.

Why a KV bucket and not store: a Predict's record reaches store asynchronously (the gateway
returns once JetStream holds it), so a fast retry could find no row yet; and the gateway's
replicas share no memory. The bucket is shared by every replica and answers before the record is
published. Its entries expire after ``request_id_ttl_s`` (the bucket's max age).

A call that claimed the key and then failed in a way that records nothing (the request was
refused: INVALID_ARGUMENT, NOT_FOUND, ...) gives the key back, so the corrected request may use
the same ``request_id``. One that failed otherwise (UNAVAILABLE: the record may have been
published) keeps it, so only the same request can complete it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterable

import grpc
from google.protobuf.message import Message
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.common.downstream import RETRY_AFTER
from services.common.errors import AlreadyExists, FerryError, Unavailable
from services.common.messaging import open_key_value

log = logging.getLogger(__name__)

REQUEST_IDS_BUCKET = "ferry_request_ids"

# As ``services.common.publisher``: a claim rides out a NATS restart as a record's publish does.
_ATTEMPT_TIMEOUT_S = 2.0
_FIRST_RETRY_S = 0.05
_MAX_RETRY_S = 0.5

#: Errors after which nothing was recorded, and the same request would fail the same way: the
#: claim is given back. Any other (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL) keeps it.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)

#: One part of a digest: text, bytes, a number or a message (serialized deterministically).
Part = str | bytes | int | Message


def digest(kind: str, parts: Iterable[Part]) -> bytes:
    """The SHA-256 of a request's defining ``parts``; each is length-prefixed, so no two lists
    of parts share a digest by shifting bytes from one part to the next."""
    h = hashlib.sha256(kind.encode())
    for part in parts:
        if isinstance(part, Message):
            data = part.SerializeToString(deterministic=True)
        elif isinstance(part, str):
            data = part.encode()
        elif isinstance(part, int):
            data = str(part).encode()
        else:
            data = part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


@dataclasses.dataclass
class Claim:
    """One call's hold on its ``request_id`` (none without one); see ``RequestIds.claim``."""

    bucket: KeyValue | None = None
    key: str = ""
    task: asyncio.Task[int] | None = None

    async def held(self) -> None:
        """Returns once the request_id is this request's (new, or claimed with the same digest).

        Raises:
            FerryError: ALREADY_EXISTS REQUEST_ID_REUSED (another request holds it), or
                UNAVAILABLE (the bucket did not answer).
        """
        if self.task is not None:
            await self.task

    async def settle(self, err: BaseException) -> None:
        """Gives the key back after ``err`` when this call created it and nothing was recorded."""
        if self.task is None or self.bucket is None:
            return
        try:
            revision = await self.task
        except (FerryError, asyncio.CancelledError):
            return  # not ours
        if not revision or not isinstance(err, FerryError) or err.code not in _REFUSALS:
            return
        try:  # only the revision this call wrote: never a later claim
            await self.bucket.delete(self.key, last=revision)
        except (NatsError, TimeoutError) as failed:
            # The key stays until it expires: only the same request can use this request_id.
            log.warning("could not give back request_id key %s: %r", self.key, failed)


class RequestIds:
    """Claims request_ids in the shared bucket (see the module's docstring)."""

    def __init__(self, bucket: KeyValue, budget_s: float) -> None:
        self._bucket = bucket
        self._budget_s = budget_s

    @classmethod
    async def open(
        cls, js: JetStreamContext, ttl_s: float, replicas: int = 1, budget_s: float = 10.0
    ) -> RequestIds:
        """Opens (or creates) the bucket, its entries expiring after ``ttl_s``; a claim keeps
        trying for ``budget_s`` (the gateway's publish_timeout_s) while NATS does not answer."""
        return cls(await open_key_value(js, REQUEST_IDS_BUCKET, replicas, ttl_s=ttl_s), budget_s)

    def claim(
        self, kind: str, tenant: str, request_id: str, request_digest: bytes, field: str = "request_id"
    ) -> Claim:
        """Starts claiming ``request_id`` of ``tenant`` for a ``kind`` of call ("predict", "job",
        ...) whose request digests to ``request_digest``; await ``Claim.held`` before recording.

        It runs while the caller goes on (a Predict's inference), so a claim adds little latency.
        Without a ``request_id`` nothing is claimed. ``field`` names it in a refusal (ModelInfer: "id").
        """
        if not request_id:
            return Claim()
        named = hashlib.sha256(f"{tenant}\x00{request_id}".encode()).hexdigest()[:40]
        key = f"{kind}.{named}"
        task = asyncio.ensure_future(self._claim(key, request_digest, f"{field} {request_id!r}", field))
        # A claim whose caller failed before awaiting it must not log "exception never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return Claim(self._bucket, key, task)

    async def _claim(self, key: str, value: bytes, named: str, field: str) -> int:
        """Claims ``key`` for ``value``: its revision when this call created it, 0 for a retry.

        A create whose answer was lost may have been stored: the next attempt then finds the key
        with this digest and goes on as a retry (0), so it is never given back; harmless.

        Raises:
            FerryError: REQUEST_ID_REUSED, or UNAVAILABLE once the budget is spent.
        """
        deadline = time.monotonic() + self._budget_s
        delay = _FIRST_RETRY_S
        while True:
            remaining = deadline - time.monotonic()
            try:
                async with asyncio.timeout(min(_ATTEMPT_TIMEOUT_S, max(remaining, 0.01))):
                    return await self._attempt(key, value, named, field)
            except (NatsError, TimeoutError) as err:
                if time.monotonic() + delay >= deadline:
                    log.warning("request_id key %s could not be claimed: %r", key, err)
                    raise Unavailable(
                        "the request_id could not be checked: the message bus did not answer; "
                        "retry in a few seconds",
                        reason="EVENTS_UNAVAILABLE",
                        retry_after=RETRY_AFTER,
                    ) from None
                log.debug("claim of %s failed (%r); retrying in %.2fs", key, err, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, _MAX_RETRY_S)

    async def _attempt(self, key: str, value: bytes, named: str, field: str) -> int:
        """One try of ``_claim``.

        Raises:
            FerryError: REQUEST_ID_REUSED.
            nats.errors.Error, TimeoutError: NATS did not answer.
        """
        for _ in range(3):  # a key given back between our create and get: claim it again
            try:
                return await self._bucket.create(key, value)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._bucket.get(key)
            except KeyNotFoundError:
                continue
            if entry.value == value:
                return 0
            raise AlreadyExists(
                f"{named} was already used with other inputs; a retry must send the same "
                f"request, so use a new {field} for new inputs",
                reason="REQUEST_ID_REUSED",
                metadata={"field": field},
            )
        raise AlreadyExists(
            f"{named} is being used by other requests at this moment; use a new {field} for new inputs",
            reason="REQUEST_ID_REUSED",
            metadata={"field": field},
        )
