"""How many gateways are alive, so that each enforces its share of a key's rate limit.

Token buckets live in each gateway process; with N gateways behind Envoy (which spreads requests
evenly, round robin) a key limited to R/s would get N times R. So each gateway refills a key's bucket
at R / N (burst / N too), N being the gateways heard from lately: every gateway says it is alive on
a plain NATS subject once a second and says goodbye when it stops, so the shares follow gateways
added by an autoscaler or stopped by a rollout within about a second.

While NATS is unreachable nothing is heard, and the last count is kept rather than letting each
gateway fall back to the whole rate (which would multiply the limit during an outage).

The same goes for the budget of lookups of unknown keys (services/gateway/admission.py), whose
split between suspect and clean source addresses needs every gateway to know the suspects: a
gateway names each new one on another subject, and the others mark it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.common.tasks import spawn

log = logging.getLogger(__name__)

SUBJECT = "ferry.gateways.alive"
"""Core NATS subject (no stream: a heartbeat is worth nothing once late) of the heartbeats."""
HEARTBEAT_S = 1.0
STALE_S = 3.5
"""A gateway not heard from for this long is gone (three heartbeats missed, and a bit)."""
_GOODBYE = b"bye"
SUSPECTS = "ferry.gateways.suspects"
"""Core NATS subject on which a gateway names a source address whose key lookup just failed there
(at most one message per such lookup: the lookups themselves are capped)."""


class LiveGateways:
    """Counts the gateways alive (this one included) from their heartbeats on NATS.

    Args:
        nc: the gateway's NATS connection.
        clock: monotonic seconds (tests pass their own).
        announce: whether this gateway is one of the shares (it beats); a gateway that takes only
            uploads (the local stack's upload lane) listens without being counted, or it would
            halve every other gateway's share of each key's rate.
        on_suspect: called with each source address another gateway names (``tell_suspect``).
    """

    def __init__(
        self,
        nc: NatsClient,
        clock: Callable[[], float] = time.monotonic,
        announce: bool = True,
        on_suspect: Callable[[str], None] = lambda source: None,
    ) -> None:
        self._nc = nc
        self._clock = clock
        self._announce = announce
        self._on_suspect = on_suspect
        self.id = uuid.uuid4().hex
        self._heard: dict[str, float] = {}
        self._count = 1

    def count(self) -> int:
        """Gateways alive now, at least 1 (this one); the last count while NATS is unreachable."""
        if not self._nc.is_connected:
            return self._count
        now = self._clock()
        for peer, seen in list(self._heard.items()):
            if now - seen > STALE_S:
                del self._heard[peer]
        others = sum(1 for peer in self._heard if peer != self.id)
        self._count = max(1, others + self._announce)
        return self._count

    async def _hear(self, msg: Msg) -> None:
        peer = msg.reply or ""  # the sender's id travels as the reply subject: no payload to parse
        if not peer or peer == self.id:
            return
        if msg.data == _GOODBYE:
            self._heard.pop(peer, None)
        else:
            self._heard[peer] = self._clock()

    async def _hear_suspect(self, msg: Msg) -> None:
        if msg.reply != self.id:
            self._on_suspect(msg.data.decode(errors="replace"))

    async def tell_suspect(self, source: str) -> None:
        """Names ``source`` to the other gateways: a key it sent was just found wrong here."""
        await self._say(source.encode(), SUSPECTS)

    async def _say(self, what: bytes, subject: str = SUBJECT) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(subject, what, reply=self.id)

    async def _beat(self) -> None:
        while True:
            await self._say(b"")
            await asyncio.sleep(HEARTBEAT_S)

    async def start(self, stack: AsyncExitStack) -> None:
        """Listens to the others and beats until ``stack`` closes, then says goodbye."""
        subs = [
            await self._nc.subscribe(SUBJECT, cb=self._hear),
            await self._nc.subscribe(SUSPECTS, cb=self._hear_suspect),
        ]
        # Core NATS drops what is published before the server has a subscription: once this
        # returns, a suspect another gateway names is heard (the fresh clone's CI once missed one
        # told right after three gateways started).
        await self._nc.flush()

        async def leave() -> None:
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            if self._announce:
                await self._say(_GOODBYE)

        stack.push_async_callback(leave)
        if self._announce:
            spawn(stack, self._beat(), "gateway heartbeat")
