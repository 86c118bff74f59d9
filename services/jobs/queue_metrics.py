"""Exports the work consumers' backlog as Prometheus gauges, read from JetStream consumer info.

JetStream already counts each consumer's waiting (``num_pending``) and unacknowledged
(``num_ack_pending``) messages exactly; the runner only copies those figures onto its /metrics,
so an autoscaler or a dashboard needs no NATS exporter for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from services.common import messaging
from services.jobs.metrics import CONSUMER_LAG, QUEUE_ACK_PENDING, QUEUE_DEPTH

log = logging.getLogger(__name__)


async def sample_queues(js: JetStreamContext, lanes: Sequence[tuple[str, str]]) -> None:
    """Sets the queue gauges of each ``(priority, consumer)`` once.

    Raises:
        nats.errors.Error, TimeoutError: the consumer info could not be read.
    """
    for priority, consumer in lanes:
        info = await js.consumer_info(messaging.WORK_STREAM, consumer)
        pending, ack_pending = info.num_pending or 0, info.num_ack_pending or 0
        QUEUE_DEPTH.labels(priority).set(pending)
        QUEUE_ACK_PENDING.labels(priority).set(ack_pending)
        CONSUMER_LAG.labels(priority).set(pending + ack_pending)


async def watch_queues(js: JetStreamContext, lanes: Sequence[tuple[str, str]], every_s: float) -> None:
    """Samples the queues every ``every_s`` until cancelled; a failed sample keeps the last values."""
    while True:
        try:
            await sample_queues(js, lanes)
        except (NatsError, TimeoutError) as err:
            log.debug("could not read the work consumers' info: %r", err)
        await asyncio.sleep(every_s)
