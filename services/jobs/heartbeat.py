"""In-progress heartbeats: a live runner keeps its items; a dead runner's items come back soon.

JetStream redelivers a message that stays unacknowledged for the consumer's ``ack_wait``. A short
``ack_wait`` brings the items of a runner that died back within seconds, but would also hand a
slow item that is still running to a second runner. So while a runner works on an item it tells
JetStream so (``+WPI``, ``msg.in_progress()``), every third of ``ack_wait``: one ticker for all
items of the process, rather than a task per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

log = logging.getLogger(__name__)


class Heartbeat:
    """The messages this process is working on, and the ticker that keeps them claimed.

    Args:
        ack_wait_s: the consumer's ack wait; progress is reported three times within it, so
            one lost or late report never lets a message expire.
    """

    def __init__(self, ack_wait_s: float) -> None:
        self._every_s = ack_wait_s / 3
        self._working: dict[int, Msg] = {}

    def track(self, msg: Msg) -> None:
        """Starts reporting progress on ``msg``."""
        self._working[id(msg)] = msg

    def untrack(self, msg: Msg) -> None:
        """Stops reporting progress on ``msg``; call it before acking, nak'ing or terminating it.

        Before, not after: a progress report that reached JetStream after a delayed nak would
        reset the nak's delay to a whole ``ack_wait``.
        """
        self._working.pop(id(msg), None)

    @contextlib.asynccontextmanager
    async def claimed(self, msg: Msg) -> AsyncIterator[None]:
        """Reports progress on ``msg`` while the block runs; its owner settles it after the block
        (or settles it inside, after ``untrack``, and leaves the block).

        A block that raises (cancelled at shutdown, or broken) hands the message back at once
        (nak), so another process starts it again without waiting out ``ack_wait``.
        """
        self.track(msg)
        try:
            yield
        except BaseException:
            self.untrack(msg)
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        self.untrack(msg)

    async def run(self) -> None:
        """Reports progress on every tracked message every ``ack_wait / 3`` until cancelled."""
        while True:
            await asyncio.sleep(self._every_s)
            await self.beat()

    async def beat(self) -> None:
        """Reports progress on every message tracked now."""
        for key, msg in list(self._working.items()):
            # Settled while an earlier report was being sent: leave it alone (see untrack).
            if key not in self._working:
                continue
            try:
                await msg.in_progress()
            except NatsError as err:
                # NATS is away; the next beat tries again, and if none gets through the item is
                # redelivered after ack_wait and lands on the same record.
                log.debug("progress report for %s failed: %r", msg.subject, err)
