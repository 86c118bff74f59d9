"""NATS JetStream: connection, the streams Ferry uses, and traced, deduplicated publishing.

Streams (created idempotently by whichever service starts first):

* ``FERRY_WORK`` (work-queue retention): job items on ``ferry.jobs.items.<priority>``.
* ``FERRY_EVENTS`` (kept 7 days): prediction records on ``ferry.records.predictions`` (one a
  message) and ``ferry.records.prediction_batches`` (many a message), and job events on
  ``ferry.jobs.events.<kind>``; store ingests them into Postgres.
* ``FERRY_EXPANSIONS`` (work-queue retention): requests to read a job's manifest into items, on
  ``ferry.jobs.expand``; the jobs service's expanders take them, and report on
  ``ferry.jobs.events.expansion``.
* ``FERRY_DEAD`` (kept 7 days, the newest per subject): job items that ended FAILED, on
  ``ferry.jobs.dead.<job_id>.<item_index>``, with their input, so RetryJob can run them again.

Every publish carries a ``Nats-Msg-Id`` so a retried publish is dropped by JetStream, and the
W3C ``traceparent`` so consumers continue the publisher's trace. Consumers (the jobs runner,
store's ingest) pull through one helper, ``PullConsumer``; those whose messages are each a long
piece of work (the expander, the notebook runner) run through its ``take_each`` loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from services.common import priorities
from services.common.readiness import Readiness
from services.common.tracing import inject_headers

log = logging.getLogger(__name__)

WORK_STREAM = "FERRY_WORK"
EVENTS_STREAM = "FERRY_EVENTS"
DEAD_STREAM = "FERRY_DEAD"
DEAD_LETTER_SUBJECT_PREFIX = "ferry.jobs.dead"
PREDICTIONS_SUBJECT = "ferry.records.predictions"
#: Batches of prediction records (``PredictionsRecorded``): the gateway's synchronous predictions.
PREDICTION_BATCHES_SUBJECT = "ferry.records.prediction_batches"
JOB_EVENTS_SUBJECT_PREFIX = "ferry.jobs.events"
JOB_ITEMS_SUBJECT_PREFIX = "ferry.jobs.items"
#: Stream and subject of manifest expansion requests (``JobExpansion``): a work queue that the
#: jobs service's expanders share; the message id ``expand:{job_id}`` makes a resend one request.
EXPANSIONS_STREAM = "FERRY_EXPANSIONS"
EXPANSIONS_SUBJECT = "ferry.jobs.expand"
#: Where an expansion tells store how it goes (``JobExpansionEvent``), in the events stream.
EXPANSION_EVENTS_SUBJECT = "ferry.jobs.events.expansion"
CANCELLED_JOBS_BUCKET = "ferry_cancelled_jobs"
DEFAULT_PRIORITY = priorities.DEFAULT.name

_DAY_S = 24 * 3600.0
#: How long each stream remembers a message id (``Nats-Msg-Id``) by default: a publish repeated
#: within it (a client's retry, a redelivered expansion, a runner's republished record) is stored
#: once. Past it a repeat is stored again; what runs or is recorded from it is idempotent by its
#: id all the same (store keeps one row per record id; docs/jobs.md).
DUPLICATE_WINDOW_S = 600.0
DEAD_LETTER_DAYS = 7
#: How long a service's start waits for JetStream to take its stream and bucket requests. A
#: cluster answers none until its nodes have elected a meta leader, and a replicated bucket none
#: until its own leader is elected: seconds, more on a loaded machine or while a node restarts.
#: A request that times out once (5 s, nats-py's default) is no reason to exit.
JETSTREAM_START_BUDGET_S = 120.0
_START_RETRY_MAX_PAUSE_S = 2.0
#: What JetStream answers while it cannot serve yet: no reply in time, no responder (JetStream
#: not up on the node), or 503 (no meta leader, a stream's leader not elected).
_NOT_YET = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,  # nats.py's NoRespondersError for a stream's subjects
    nats.js.errors.ServiceUnavailableError,
)
#: NATS's error code for "no suitable peers for placement": with ", peer offline" it means a
#: replicated stream asked for while a node of a forming cluster has not joined its routes yet.
_NO_PLACEMENT = 10005
#: How long a placement refused without "peer offline" is asked again: a forming cluster's
#: peers report within seconds, while more replicas than nodes is said after this.
UNPLACED_BUDGET_S = 20.0


def _peers_offline(err: Exception) -> bool:
    """Whether ``err`` is a cluster still forming: the stream's replicas cannot be placed while a
    peer is offline."""
    return _unplaced(err) and "offline" in (getattr(err, "description", None) or "")


def _unplaced(err: Exception) -> bool:
    """Whether ``err`` says a stream's replicas could not be placed. Without "peer offline" it is
    for good where the stream asks more replicas than the cluster has nodes, but a cluster that
    has just formed answered it too while its peers' reports had not reached the meta leader
    (at load 10-13, a 3-node cluster's first stream a moment after every node served)."""
    return isinstance(err, BadRequestError) and err.err_code == _NO_PLACEMENT


T = TypeVar("T")

STREAMS = (
    StreamConfig(
        name=WORK_STREAM,
        subjects=[f"{JOB_ITEMS_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
    ),
    StreamConfig(
        name=EVENTS_STREAM,
        subjects=["ferry.records.>", f"{JOB_EVENTS_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * _DAY_S,
        duplicate_window=DUPLICATE_WINDOW_S,
    ),
    StreamConfig(
        name=EXPANSIONS_STREAM,
        subjects=[EXPANSIONS_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
    ),
    StreamConfig(
        name=DEAD_STREAM,
        subjects=[f"{DEAD_LETTER_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=DEAD_LETTER_DAYS * _DAY_S,
        max_msgs_per_subject=1,
        duplicate_window=DUPLICATE_WINDOW_S,
    ),
)


#: Job priorities, highest first: the last token of a work subject (``ferry.jobs.items.high``).
PRIORITIES = priorities.NAMES


def job_items_subject(priority: str = DEFAULT_PRIORITY) -> str:
    """The subject job items of ``priority`` are published on."""
    return f"{JOB_ITEMS_SUBJECT_PREFIX}.{priority}"


def priority_token(priority: int) -> str:
    """The subject token of a ``ferry.types.v1.Priority`` number (unspecified is normal).

    Raises:
        ValueError: not a Priority number.
    """
    try:
        return priorities.of_proto(priority).name
    except KeyError:
        raise ValueError(f"priority {priority} is not a ferry.types.v1.Priority") from None


def dead_letter_subject(job_id: str, item_index: int) -> str:
    """The subject a failed item of ``job_id`` is kept on, with its input, for RetryJob."""
    return f"{DEAD_LETTER_SUBJECT_PREFIX}.{job_id}.{item_index}"


#: Header of a dead letter: the ErrorInfo reason the item failed with (INVALID_IMAGE, ...).
DEAD_LETTER_REASON_HEADER = "Ferry-Error-Reason"


def with_generation(msg_id: str, generation: int) -> str:
    """The ``Nats-Msg-Id`` of a message of retry round ``generation``: unchanged for the first run.

    A re-run item and its new record must not be dropped as duplicates of the first run's.
    """
    return msg_id if generation == 0 else f"{msg_id}:g{generation}"


async def connect(url: str, client_name: str, stack: AsyncExitStack) -> tuple[NatsClient, JetStreamContext]:
    """Connects to NATS (reconnecting forever) and drains the connection when ``stack`` closes.

    While the connection is down, publishes raise ``OutboundBufferLimitError`` at once.
    """

    async def on_error(err: Exception) -> None:
        log.warning("nats: %s", err)

    nc = await nats.connect(
        # A cluster is given as several URLs, comma-separated; the client tries each in turn and
        # learns the rest of the cluster from whichever node answers.
        [part.strip() for part in url.split(",") if part.strip()],
        name=client_name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        # No buffering while disconnected: a publish either reaches a connected server or fails
        # at once. A buffered one could be flushed after its caller gave up and answered "not
        # recorded", which would make the answer and the record disagree.
        pending_size=0,
    )
    stack.push_async_callback(nc.drain)
    return nc, nc.jetstream()


async def ensure_streams(
    js: JetStreamContext, replicas: int = 1, duplicate_window_s: float = DUPLICATE_WINDOW_S
) -> None:
    """Creates Ferry's streams, or updates them when their config changed.

    Args:
        js: JetStream.
        replicas: copies of each stream the cluster keeps (``nats_stream_replicas``); more than
            the cluster has nodes is refused by NATS.
        duplicate_window_s: how long each stream remembers message ids
            (``nats_duplicate_window_s``).
    """

    async def create_or_update() -> None:
        for stream in STREAMS:
            config = dataclasses.replace(stream, num_replicas=replicas, duplicate_window=duplicate_window_s)
            try:
                await js.add_stream(config)
            except BadRequestError as err:
                if _unplaced(err):
                    raise  # not "it exists": until_jetstream_answers tries again
                await js.update_stream(config)

    await until_jetstream_answers(create_or_update, "creating Ferry's streams")


async def until_jetstream_answers(
    request: Callable[[], Awaitable[T]],
    what: str,
    budget_s: float = JETSTREAM_START_BUDGET_S,
    unplaced_budget_s: float = UNPLACED_BUDGET_S,
) -> T:
    """Runs ``request`` (idempotent) again while JetStream cannot serve yet, for up to ``budget_s``.

    A cluster's node whose routes are not up yet is "not yet" too: `ferry up` with
    ``FERRY_NATS_NODES=3`` created its replicated streams a moment after the nodes started, was
    answered "no suitable peers for placement, peer offline", and exited with a traceback. The
    same answer without "peer offline" is asked again for ``unplaced_budget_s`` only (``_unplaced``).

    Raises:
        nats.errors.TimeoutError, NoRespondersError, ServiceUnavailableError, BadRequestError (a
            peer still offline, or replicas still not placed): JetStream still could not serve
            after ``budget_s`` (``unplaced_budget_s``); any other error at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    unplaced_deadline = loop.time() + min(budget_s, unplaced_budget_s)
    pause = 0.25
    while True:
        try:
            return await request()
        except Exception as err:
            if isinstance(err, _NOT_YET) or _peers_offline(err):
                until = deadline
            elif _unplaced(err):
                until = unplaced_deadline
            else:
                raise
            if loop.time() + pause >= until:
                raise
            log.warning(
                "JetStream could not serve %s yet (%s); trying again for up to %.0f s more",
                what,
                err,
                until - loop.time(),
            )
            await asyncio.sleep(pause)
            pause = min(2 * pause, _START_RETRY_MAX_PAUSE_S)


async def publish(
    js: JetStreamContext,
    subject: str,
    message: Message,
    msg_id: str,
    timeout_s: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> PubAck:
    """Publishes ``message`` and waits until JetStream has stored it.

    Args:
        js: the JetStream context.
        subject: where to publish.
        message: the protobuf payload.
        msg_id: deduplication id; a second publish with the same id inside the stream's
            duplicate window is acknowledged but not stored again.
        timeout_s: how long to wait for the stream's acknowledgement.
        headers: more headers to send (``Nats-Msg-Id`` and ``traceparent`` are set here).
    """
    sent = inject_headers({**(headers or {}), "Nats-Msg-Id": msg_id})
    return await js.publish(subject, message.SerializeToString(), timeout=timeout_s, headers=sent)


#: A key no bucket holds: reading it shows the bucket answers on this node.
READY_PROBE_KEY = "ferry-ready-probe"


async def open_key_value(
    js: JetStreamContext, bucket: str, replicas: int = 1, history: int = 1, ttl_s: float | None = None
) -> KeyValue:
    """Opens KV ``bucket``, creating it with ``replicas`` copies when this process is the first to
    need it (another that created it meanwhile wins: its bucket is used).

    With ``ttl_s`` its entries expire after that many seconds; a bucket made with another TTL is
    updated to it (as ``ensure_streams`` does for the streams: the last service started sets it).
    """

    async def open_or_create() -> KeyValue:
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            try:
                return await js.create_key_value(bucket=bucket, replicas=replicas, history=history, ttl=ttl_s)
            except BadRequestError as err:
                if _unplaced(err):
                    raise  # not "another made it": until_jetstream_answers tries again
                kv = await js.key_value(bucket)
        if ttl_s is not None:
            stream = (await js.stream_info(f"KV_{bucket}")).config
            if stream.max_age != ttl_s:
                await js.update_stream(dataclasses.replace(stream, max_age=ttl_s))
        # On a cluster that has just formed, the bucket's stream can exist before this node has
        # heard who serves it: the first read or write through it was answered "no responders"
        # (tests/scaling/test_stream_replicas.py). A service reports ready once this returns, so
        # it returns only once the bucket answers a read here.
        with contextlib.suppress(KeyNotFoundError):
            await kv.get(READY_PROBE_KEY)
        return kv

    return await until_jetstream_answers(open_or_create, f"the bucket {bucket}")


async def open_cancelled_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Opens the cancelled-jobs KV bucket (see ``open_key_value``)."""
    return await open_key_value(js, CANCELLED_JOBS_BUCKET, replicas)


# --- Pull consumers -------------------------------------------------------------------------------

#: How long a consumer loop pauses before pulling again after NATS itself failed (not an empty
#: stream): a reconnect under way, a deleted consumer, JetStream unavailable.
FETCH_ERROR_PAUSE_S = 1.0
#: How often a paused consumer looks at readiness again. Readiness offers nothing to wait on, and
#: its dependency probes run about once a second, so a finer poll would not resume any sooner.
READY_POLL_S = 0.2

# Status messages that end a pull request without anything being wrong: no messages (404), the
# request expired (408), or a conflict such as a deleted consumer or a leadership change (409);
# nats-py treats them alike. A 100 is an idle heartbeat (never asked for here); anything else (503:
# no JetStream or no such consumer) is an error.
_STATUS_HEADER = "Status"
_END_OF_PULL = frozenset({"404", "408", "409"})
_HEARTBEAT = "100"
# The server gives up a waiting pull this much before the client does, so the request's end
# (its 408) normally arrives before the client stops listening for it (nats-py does the same).
_EXPIRES_MARGIN_NS = 100_000


def _is_status(msg: Msg) -> bool:
    """A JetStream status message (no payload, a Status header) rather than a stream message."""
    return not msg.data and msg.headers is not None and _STATUS_HEADER in msg.headers


class PullConsumer:
    """One pull subscription on a durable JetStream consumer, fetched in batches.

    The jobs runner and store's ingest both pull through this, so the loop, its error handling and
    its cancellation are written once. Why not nats-py's ``PullSubscription.fetch``: it awaits
    every message through a task of its own under ``asyncio.wait_for`` (two tasks and a uuid4 per
    message), and ``wait_for`` on Python 3.11 can swallow a cancel that races its deadline. This
    collects a pull's messages in a subscription callback and wakes the fetcher once per batch: a
    bare fetch-and-ack loop moved about 80,000 messages/s on the 2-core machine against 24,000
    (store's ingest, where decoding and writing a record cost more, spends the same CPU per
    record either way).

    A fetch first asks for what the consumer has now (``no_wait``) and, only when that brought
    nothing, once more waiting up to the rest of its timeout: for one message, or (``fill``) for a
    whole batch, as nats-py's fetch does. Each pull request
    has a reply subject of its own, so the late end (408) of an expired request cannot cut the
    next one short. A message that arrives after its request gave up is not lost: the next fetch
    hands it out first, and ``close`` hands any still held back to the server (nak).

    Args:
        js: JetStream.
        stream: the consumer's stream.
        config: the durable consumer (``durable_name`` required); created, or updated to this
            config, by ``subscribe``.
        what: what the messages are, for log lines ("job items").
        readiness: when given, ``until_ready`` waits while it is not serving.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        config: ConsumerConfig,
        what: str,
        readiness: Readiness | None = None,
    ) -> None:
        if not config.durable_name:
            raise ValueError("a PullConsumer needs a durable consumer name")
        self._js = js
        # nats-py keeps the connection and the API prefix private; a pull request needs both.
        self._nc: NatsClient = js._nc
        self._next_subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{config.durable_name}"
        self._stream = stream
        self._config = config
        self._what = what
        self._readiness = readiness
        self._sub: Subscription | None = None
        self._inbox = ""
        self._requests = 0
        self._reply = ""  # the reply subject of the pull request under way
        self._want = 0  # how many messages end it
        self._done: asyncio.Future[None] | None = None
        self._failure: Msg | None = None
        self._arrived: list[Msg] = []
        # Set while messages wait in _arrived: a pull request's messages keep coming after its
        # fetch returned (its deadline passed first), and only the next fetch hands them out.
        self._buffered = asyncio.Event()

    @property
    def name(self) -> str:
        """The durable consumer's name."""
        return str(self._config.durable_name)

    @property
    def config(self) -> ConsumerConfig:
        """The durable consumer's config, as ``subscribe`` creates or updates it."""
        return self._config

    async def subscribe(self, budget_s: float = JETSTREAM_START_BUDGET_S) -> None:
        """Creates the durable consumer, or updates it to this config, and starts listening.

        On an existing consumer the create is an update (nats-server 2.15 updates a durable whose
        config differs in updatable fields), so changed limits take effect on start. A consumer of
        a replicated stream answers once its own leader is elected: the create is tried again for
        up to ``budget_s`` (``until_jetstream_answers``).
        """
        await until_jetstream_answers(
            lambda: self._js.add_consumer(self._stream, self._config), f"the consumer {self.name}", budget_s
        )
        if self._sub is None:
            self._inbox = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._arrive)

    async def wait_buffered(self) -> None:
        """Returns once a message waits here for the next fetch: one that a pull request of ours
        brought after its fetch had returned. A loop that stops fetching for a while must still
        take those (each one's ack wait runs), so it waits on this too."""
        await self._buffered.wait()

    async def close(self) -> None:
        """Stops listening, then naks what was delivered but never handed out, so it comes back now.

        Listening stops first: a message nak'ed while one of our pull requests is still open could
        be redelivered into it, where nobody would take it (the runner naks its in-flight items
        after this, for the same reason).
        """
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        left, self._arrived = self._arrived, []
        self._buffered.clear()
        for msg in left:
            with contextlib.suppress(Exception):
                await msg.nak()

    async def until_ready(self) -> None:
        """Waits while the service is not serving (returns at once without a readiness).

        With a dependency down, a message fetched now could only fail, and perhaps spend a retry
        budget; left in the stream it waits for free.
        """
        readiness = self._readiness
        if readiness is None or readiness.serving:
            return
        log.info("not fetching %s until ready: %s", self._what, readiness.reason())
        while not readiness.serving:  # noqa: ASYNC110  (no event to wait on: see READY_POLL_S)
            await asyncio.sleep(READY_POLL_S)
        log.info("ready again: fetching %s", self._what)

    async def take_each(
        self,
        take: Callable[[Msg], Coroutine[Any, Any, None]],
        fetch_timeout_s: float,
        at_once: int = 1,
        beside: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Hands each message to ``take``, in a task of its own, at most ``at_once`` at a time, until
        cancelled: the loop of a consumer whose messages are each a long piece of work (a manifest
        to expand, a notebook to run).

        Nothing is fetched while there is no room or the service is not serving
        (``until_ready``). ``take`` settles its message (ack, nak, term); one that fails
        unexpectedly is logged and the loop goes on. ``beside`` runs as long as the loop does (the
        in-progress heartbeat of the messages being taken). On cancel, listening stops first
        (``close``), then the takes under way are cancelled, and each naks its message: nak'ed
        while a pull request of ours was still open, it could be redelivered into it unseen.
        """
        room = asyncio.Semaphore(at_once)
        tasks: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            room.release()
            if not task.cancelled() and task.exception() is not None:
                log.error("taking one of %s failed unexpectedly", self._what, exc_info=task.exception())

        ticker = asyncio.create_task(beside(), name=f"{self.name}-beside") if beside else None
        try:
            while True:
                await room.acquire()
                await self.until_ready()
                taken = await self.next_batch(1, fetch_timeout_s)
                if not taken:
                    room.release()
                    continue
                task = asyncio.create_task(take(taken[0]), name=f"{self.name}-take")
                tasks.add(task)
                task.add_done_callback(finished)
        finally:
            if ticker is not None:
                ticker.cancel()
            await self.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, *([ticker] if ticker else []), return_exceptions=True)

    async def next_batch(self, batch: int, timeout_s: float, *, fill: bool = False) -> list[Msg]:
        """The next messages, at most ``batch``; [] when none came within ``timeout_s`` (``fill``:
        as ``fetch``).

        The step of a consumer loop: a failure of NATS itself is logged, paused on, and the
        consumer re-created in case it was deleted under us, so the loop only pulls again. It
        raises ``CancelledError`` when its task is being cancelled, even if some await inside
        swallowed the cancel, so a stop request is never lost and shutdown never waits on a loop.
        """
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise asyncio.CancelledError
        try:
            return await self.fetch(batch, timeout_s, fill=fill)
        except nats.errors.Error as err:
            log.warning("pulling %s failed, retrying in %gs: %r", self._what, FETCH_ERROR_PAUSE_S, err)
            await asyncio.sleep(FETCH_ERROR_PAUSE_S)
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.subscribe(budget_s=0)  # once: the loop comes back here anyway
            return []

    async def fetch(self, batch: int, timeout_s: float, *, fill: bool = False) -> list[Msg]:
        """Pulls up to ``batch`` messages, waiting at most ``timeout_s`` for the first.

        When the consumer has nothing now, the first message to come ends the wait: a lone job
        item or event is handed out at once, and what comes after it goes to the next fetch. With
        ``fill`` the wait lasts until ``batch`` messages came or ``timeout_s`` passed: a window that
        gathers a trickle into one batch (store's ingest writes each batch in one transaction).

        Raises:
            RuntimeError: not subscribed, or another fetch of this consumer is under way.
            ValueError: ``batch`` is below 1.
            nats.errors.Error: NATS or JetStream failed (not connected, no such consumer, ...).
        """
        if self._sub is None:
            raise RuntimeError("subscribe() first")
        if self._done is not None:
            raise RuntimeError("one fetch at a time: a PullConsumer serves one loop")
        if batch < 1:
            raise ValueError(f"batch must be at least 1; got {batch}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if len(self._arrived) < batch:
            await self._pull(batch - len(self._arrived), deadline, wait=False)
        if not self._arrived:
            await self._pull(batch if fill else 1, deadline, wait=True)
        taken, self._arrived = self._arrived[:batch], self._arrived[batch:]
        if not self._arrived:
            self._buffered.clear()
        return taken

    async def _pull(self, count: int, deadline: float, wait: bool) -> None:
        """Sends one pull request for ``count`` messages and waits until it ends or ``deadline``."""
        remaining = deadline - asyncio.get_running_loop().time()
        request: dict[str, int | bool] = {"batch": count}
        if wait:
            expires = int(remaining * 1e9) - _EXPIRES_MARGIN_NS
            if expires <= 0:
                return
            request["expires"] = expires
        else:
            # Without expires: the server ignores no_wait on a request that has one.
            request["no_wait"] = True
        self._requests += 1
        self._reply = f"{self._inbox}.{self._requests}"
        self._want = len(self._arrived) + count
        self._failure = None
        done = self._done = asyncio.get_running_loop().create_future()
        try:
            await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._reply)
            async with asyncio.timeout(max(remaining, 0.0)):
                await done
        except TimeoutError:
            pass  # the request's end is late or lost; what arrived is kept
        finally:
            self._done = None
            self._want = 0
            done.cancel()
        if self._failure is not None:
            nats.js.errors.APIError.from_msg(self._failure)  # raises

    async def _arrive(self, msg: Msg) -> None:
        """Subscription callback: keeps a stream message, or ends the pull a status belongs to."""
        done = self._done
        if not _is_status(msg):
            self._arrived.append(msg)
            self._buffered.set()
            if done is not None and len(self._arrived) >= self._want and not done.done():
                done.set_result(None)
            return
        # A status of an older request (its late 408, say) says nothing about this one.
        if done is None or done.done() or msg.subject != self._reply:
            return
        assert msg.headers is not None
        status = msg.headers[_STATUS_HEADER]
        if status == _HEARTBEAT:
            return
        if status not in _END_OF_PULL:
            self._failure = msg
        done.set_result(None)
