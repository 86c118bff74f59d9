"""Publishing to JetStream until it acknowledges, riding out a NATS restart.

Every message the gateway publishes has a deterministic ``Nats-Msg-Id``, so sending it again
after a lost acknowledgement stores it once. The connection never buffers while it is down (see
``messaging.connect``), so when the budget runs out the message was either never sent, or sent
to a server that failed before acknowledging it and stayed down for the whole budget: the one
case in which a caller told "not recorded" may still find the record later. A client that sent
a ``request_id`` gets the same record when it retries, never a second one.
"""

from __future__ import annotations

import asyncio
import logging
import time

from google.protobuf.message import Message
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from services.common import messaging

log = logging.getLogger(__name__)

# One attempt waits at most this long for its acknowledgement; a healthy server answers in ms.
_ATTEMPT_TIMEOUT_S = 2.0
_FIRST_RETRY_S = 0.05
_MAX_RETRY_S = 0.5


class Publisher:
    """Publishes to JetStream with retries inside a time budget.

    Args:
        js: the JetStream context.
        budget_s: how long one publish keeps trying before it fails.
    """

    def __init__(self, js: JetStreamContext, budget_s: float) -> None:
        self._js = js
        self.budget_s = budget_s

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context it publishes with (for callers that pipeline their own publishes)."""
        return self._js

    async def publish(self, subject: str, message: Message, msg_id: str) -> None:
        """Publishes ``message`` and returns once JetStream has stored it.

        Raises:
            nats.errors.Error, TimeoutError: the last attempt's failure, once the budget is spent.
        """
        deadline = time.monotonic() + self.budget_s
        delay = _FIRST_RETRY_S
        while True:
            remaining = deadline - time.monotonic()
            try:
                await messaging.publish(
                    self._js, subject, message, msg_id, timeout_s=min(_ATTEMPT_TIMEOUT_S, remaining)
                )
                return
            except (NatsError, TimeoutError) as err:
                if time.monotonic() + delay >= deadline:
                    raise
                log.debug("publish of %s failed (%r); retrying in %.2fs", msg_id, err, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, _MAX_RETRY_S)
