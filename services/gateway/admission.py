"""Admission control: per-key rate limits, throttled authentication failures, in-flight bounds
(calls per gateway, streams per tenant).

Each refusal is RESOURCE_EXHAUSTED (HTTP 429) at once, with a ``google.rpc.RetryInfo`` (and a
``retry-after`` header through Envoy) saying when a retry can succeed: a gateway that queues
everything it is sent answers everyone late, while one that refuses the excess early keeps the
admitted calls fast.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from google.protobuf import duration_pb2

from services.common.errors import ResourceExhausted
from services.gateway.identity import Caller

Clock = Callable[[], float]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; a call takes one."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:  # a ``now`` read before the bucket was made adds nothing
            self._tokens += (now - self._stamp) * self.rate
            self._stamp = now
        self._tokens = min(self.burst, self._tokens)  # also when the burst was just lowered

    def take(self, now: float) -> float:
        """Takes a token; returns 0 when there was one, else the seconds until there will be."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def give(self) -> None:
        """Returns a token taken for work that turned out not to count (a key that was valid)."""
        self._tokens = min(self.burst, self._tokens + 1.0)

    def wait(self, now: float) -> float:
        """The seconds until a token is there, without taking it (0: one is there now)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate


def retry_after(wait_s: float) -> duration_pb2.Duration:
    """A RetryInfo delay of ``wait_s`` rounded up to the millisecond (at least 1 ms)."""
    millis = max(1, math.ceil(wait_s * 1000))
    return duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)


class Buckets:
    """Token buckets by name, the least recently used dropped beyond ``max_buckets``.

    A dropped bucket comes back full, so the bound costs accuracy only under a flood of names.
    """

    def __init__(self, max_buckets: int, clock: Clock = time.monotonic) -> None:
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max = max_buckets
        self._clock = clock

    def get(self, name: str, rate: float, burst: float) -> TokenBucket:
        """The bucket of ``name``, made (full) or updated to ``rate`` and ``burst``."""
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = TokenBucket(rate, burst, self._clock())
            self._buckets[name] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(name)
            bucket.rate, bucket.burst = rate, max(1.0, burst)
        return bucket

    def now(self) -> float:
        """The clock the buckets run on."""
        return self._clock()


#: How long a source address that sent a wrong key counts as suspect (its lookups draw on the
#: suspects' share of the global budget).
SUSPECT_S = 60.0
#: The share of the global lookup budget kept for sources that sent no wrong key lately, so a
#: wrong-key flood from many addresses cannot lock out a valid key nobody has used yet.
CLEAN_SHARE = 0.2
#: The global lookup budget (all sources, every gateway together) as a multiple of one source's.
GLOBAL_FACTOR = 10.0
#: Each lookup bucket saves up this many seconds of its rate: its burst.
BURST_S = 2.0


def lookup_cap(failure_rate_per_s: float) -> tuple[float, float]:
    """The cap on lookups of unknown keys reaching store from the whole deployment: (rate, burst).

    In any T seconds at most ``rate * T + burst`` such lookups reach store, however many gateways
    and source addresses there are: the suspects' and the clean sources' buckets together refill at
    ``rate`` and save up ``burst``, and every gateway holds 1/n of each.
    """
    rate = GLOBAL_FACTOR * failure_rate_per_s
    return rate, BURST_S * rate


class LookupTicket:
    """A reserved lookup of a key the gateway does not know: given back if the key was valid."""

    __slots__ = ("buckets", "source")

    def __init__(self, source: str, buckets: tuple[TokenBucket, ...]) -> None:
        self.source = source
        self.buckets = buckets


class RateLimits:
    """Per-key rate limits, and a budget for lookups of keys the gateway does not know.

    Lookups of unknown keys (made-up ones, and valid ones not seen lately) are what a wrong-key
    flood costs store, so each takes a token *before* it is made, from its source address's bucket
    (``failure_rate_per_s``, burst ``BURST_S`` seconds of it) and from a global one (``lookup_cap``:
    the documented cap on failed lookups reaching store); a lookup that finds a valid key gives its
    tokens back. Counting after the lookup instead let every concurrent lookup pass the check (96
    failed lookups/s reached store against a cap of 50). The global budget is split: sources that
    sent a wrong key in the last ``SUSPECT_S`` draw on 80 %, the others on the remaining
    ``CLEAN_SHARE``, so a flood from many addresses spends its own share and a valid key from
    elsewhere still gets looked up. Like a key's limit, every bucket here is the deployment's: this
    gateway refills it at 1/n of its rate (and saves 1/n of its burst), n being ``gateways()``, so
    three gateways do not let three times the cap reach store.

    Args:
        default_rate_per_s: the limit of a key without its own; 0 means no limit.
        default_burst: the burst of a key without its own; 0 means twice its rate.
        failure_rate_per_s: lookups of unknown keys a second allowed per source address (and
            ``GLOBAL_FACTOR`` times that from all sources together), across every gateway; beyond
            it such calls are refused without asking store, so made-up keys cannot flood the database.
    """

    def __init__(
        self,
        default_rate_per_s: float,
        default_burst: int,
        failure_rate_per_s: float,
        max_buckets: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self._default_rate = default_rate_per_s
        self._default_burst = default_burst
        self._failure_rate = failure_rate_per_s
        self._keys = Buckets(max_buckets, clock)
        self._failures = Buckets(max_buckets, clock)
        self._suspects: OrderedDict[str, float] = OrderedDict()  # source -> last failure
        self._max_suspects = max_buckets
        self._pools = Buckets(2, clock)  # the global budget's two shares: "clean" and "suspect"
        self.gateways: Callable[[], int] = lambda: 1
        """How many gateways share each key's limit (services/gateway/peers.py); this one takes 1/n."""

    def admit(self, caller: Caller) -> None:
        """Takes a token of the caller's key.

        Raises:
            ResourceExhausted: the key is over its rate (RATE_LIMITED, with the wait).
        """
        rate = caller.rate_per_s or self._default_rate
        if rate <= 0:
            return
        burst = caller.burst or self._default_burst or 2 * rate
        share = self.gateways()
        bucket = self._keys.get(caller.key_id or caller.tenant, rate / share, burst / share)
        wait = bucket.take(self._keys.now())
        if wait:
            raise ResourceExhausted(
                f"this API key is over its rate limit of {rate:g} requests/s (burst {bucket.burst:g}); "
                f"retry after {wait:.2f}s, or ask an admin for a higher limit",
                reason="RATE_LIMITED",
                metadata={"limit_per_s": f"{rate:g}", "burst": f"{bucket.burst:g}"},
                retry_after=retry_after(wait),
            )

    def _suspected(self, source: str, now: float) -> bool:
        last = self._suspects.get(source)
        if last is None:
            return False
        if now - last < SUSPECT_S:
            return True
        del self._suspects[source]
        return False

    def reserve_lookup(self, source: str) -> LookupTicket | None:
        """Takes the tokens of one lookup in store of a key not known here (None: no bound).

        Raises:
            ResourceExhausted: TOO_MANY_AUTH_FAILURES, with the wait: the source, or all sources
                of its kind, made too many lookups lately.
        """
        if self._failure_rate <= 0:
            return None
        now = self._failures.now()
        rate = self._failure_rate / self.gateways()  # this gateway's share of every bucket
        total, burst = lookup_cap(rate)
        share, pool = (1 - CLEAN_SHARE, "suspect") if self._suspected(source, now) else (CLEAN_SHARE, "clean")
        buckets = (
            self._failures.get(source, rate, BURST_S * rate),
            self._pools.get(pool, share * total, share * burst),
        )
        wait = max(bucket.wait(now) for bucket in buckets)
        if wait:
            raise ResourceExhausted(
                "too many requests with a missing or invalid API key; check the key and retry "
                f"after {wait:.2f}s",
                reason="TOO_MANY_AUTH_FAILURES",
                retry_after=retry_after(wait),
            )
        for bucket in buckets:
            bucket.take(now)
        return LookupTicket(source, buckets)

    def found(self, ticket: LookupTicket | None) -> None:
        """The lookup found a valid key: its tokens go back (valid keys are never throttled here)."""
        for bucket in ticket.buckets if ticket else ():
            bucket.give()

    def failed(self, ticket: LookupTicket | None) -> bool:
        """The lookup found no valid key: its tokens stay spent, and its source becomes suspect.

        Returns whether the other gateways should hear of it (``suspect``): the source was not
        suspect here, or was marked more than half of ``SUSPECT_S`` ago (their marks age too).
        """
        if ticket is None:
            return False
        last = self._suspects.get(ticket.source)
        self.suspect(ticket.source)
        return last is None or self._failures.now() - last > SUSPECT_S / 2

    def suspect(self, source: str) -> None:
        """Counts ``source`` as suspect from now: a key it sent failed here, or at another gateway.

        Every gateway has to know: each draws its clean sources' lookups from its 1/n of the clean
        share, and a flooding address that one gateway had not yet caught would drain it there,
        refused but never marked, while a valid key from elsewhere waited behind it.
        """
        self._suspects[source] = self._failures.now()
        self._suspects.move_to_end(source)
        if len(self._suspects) > self._max_suspects:
            self._suspects.popitem(last=False)


class InFlight:
    """Bounds the calls a gateway works on at once; beyond the bound a call is refused at once.

    Queueing more than the backends can finish in time only makes every call late; the bound
    keeps the admitted ones fast and tells the rest to come back.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        # One error for every refusal: the common interceptor builds its status once from it.
        self._overloaded = ResourceExhausted(
            f"the gateway is at its limit of {limit} requests in flight; retry shortly",
            reason="OVERLOADED",
            metadata={"limit": str(limit)},
            retry_after=retry_after(1.0),
        )

    def refusal(self) -> ResourceExhausted | None:
        """The OVERLOADED error while ``limit`` calls are in flight (0 means no bound), else None."""
        return self._overloaded if self.limit and self.count >= self.limit else None

    def enter(self) -> None:
        """Counts a call in.

        Raises:
            ResourceExhausted: OVERLOADED when ``limit`` calls are in flight (0 means no bound).
        """
        if self.limit and self.count >= self.limit:
            raise self._overloaded
        self.count += 1

    def leave(self) -> None:
        """Counts a call out (after ``enter`` admitted it)."""
        self.count -= 1


class TenantStreams:
    """Bounds the streams (watches, result downloads, uploads) one tenant holds open at once.

    Envoy keeps at most ``limits.EDGE_STREAMS`` streams open to the gateways for every tenant
    together, and a stream is not counted in flight (a watch lasts up to an hour): without a bound
    per tenant, one key opened them all within seconds of its rate limit, and every other tenant's
    watch got Envoy's 429. Like a key's rate limit the bound is the deployment's: each of n
    gateways (``gateways()``) holds a tenant to its share, ``limit / n`` rounded up.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self.gateways: Callable[[], int] = lambda: 1
        """How many gateways share the bound (services/gateway/peers.py); this one holds 1/n."""

    def enter(self, tenant: str) -> None:
        """Counts a stream of ``tenant`` in.

        Raises:
            ResourceExhausted: TOO_MANY_STREAMS while the tenant holds its share (0: no bound).
        """
        if not self.limit:
            return
        held = self._open.get(tenant, 0)
        share = math.ceil(self.limit / max(1, self.gateways()))
        if held >= share:
            raise ResourceExhausted(
                f"this tenant has {held} streams open here (watches, result downloads, uploads), the "
                f"most it may hold at once ({self.limit} across all gateways); end one and retry (a "
                "watch ends when its job does)",
                reason="TOO_MANY_STREAMS",
                metadata={"limit": str(self.limit), "open": str(held)},
                retry_after=retry_after(1.0),
            )
        self._open[tenant] = held + 1

    def leave(self, tenant: str) -> None:
        """Counts a stream of ``tenant`` out (after ``enter`` admitted it)."""
        held = self._open.get(tenant, 0) - 1
        if held > 0:
            self._open[tenant] = held
        else:
            self._open.pop(tenant, None)

    def held(self, tenant: str) -> int:
        """The streams ``tenant`` holds open at this gateway."""
        return self._open.get(tenant, 0)


class AdaptiveLimit:
    """Bounds in-flight calls of one kind (predictions) to what keeps their latency near the best seen.

    A static bound is right on one machine only; this one learns it (additive increase,
    multiplicative decrease, as TCP Vegas and Netflix's concurrency-limits do). The best latency
    seen is the baseline (it drifts up very slowly, so one lucky call does not set it forever).
    A call that took more than ``tolerance`` times the baseline means work is queueing: the limit
    shrinks by a fifth, at most once per such latency. A call within it, while the limit was
    reached, grows the limit by ``1/limit``. Beyond the limit a call is refused at once.

    Args:
        initial: the limit to start from.
        minimum: the limit never shrinks below this (a few clients are never refused).
        maximum: the limit never grows beyond this.
        tolerance: how many times the baseline latency counts as "not queueing"; 0 turns the
            bound off (only ``InFlight`` applies).
    """

    def __init__(
        self, initial: int, minimum: int, maximum: int, tolerance: float, clock: Clock = time.monotonic
    ) -> None:
        self.minimum = float(max(1, min(minimum, maximum)))
        self.limit = float(max(self.minimum, min(initial, maximum)))
        self.maximum = maximum
        self.tolerance = tolerance
        self.count = 0
        self.baseline_s = math.inf
        self._clock = clock
        self._last_cut = -math.inf

    def enter(self) -> None:
        """Counts a call in.

        Raises:
            ResourceExhausted: OVERLOADED when the learnt limit of calls is in flight.
        """
        if self.tolerance and self.count >= int(self.limit):
            raise ResourceExhausted(
                f"the gateway is at its limit of {int(self.limit)} predictions in flight (learnt from "
                "their latency: more would only queue); retry shortly",
                reason="OVERLOADED",
                metadata={"limit": str(int(self.limit))},
                retry_after=retry_after(max(self.baseline_s, 0.1) if math.isfinite(self.baseline_s) else 1.0),
            )
        self.count += 1

    def leave(self, latency_s: float | None) -> None:
        """Counts a call out; ``latency_s`` is its duration when it succeeded (None otherwise)."""
        saturated = self.count >= int(self.limit)
        self.count -= 1
        if latency_s is None or not self.tolerance:
            return
        self.baseline_s = min(latency_s, self.baseline_s * 1.0001)
        if latency_s > self.tolerance * self.baseline_s:
            now = self._clock()
            if now - self._last_cut >= latency_s:  # once per round: its other late calls say the same
                self.limit = max(self.minimum, self.limit * 0.8)
                self._last_cut = now
        elif saturated:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)


def inference_seconds(answer: object) -> float | None:
    """Inference's own time for a Predict or BatchPredict answer (queue, decode, forward pass).

    That, not the call's whole duration, says whether predictions queue: a slow publish or a store
    outage makes calls long without the model being any busier. None when the answer has no timing.
    """
    one = getattr(answer, "prediction", None)
    predictions = [one] if one is not None else list(getattr(answer, "predictions", ()))
    times = [
        p.timing.queue_ms + p.timing.decode_ms + p.timing.inference_ms
        for p in predictions
        if p.HasField("timing")
    ]
    return max(times) / 1000.0 if times else None


class Drain:
    """How fast a gateway's predictions in flight finish: those finished a second over the last
    ``window_s``, counted over at least a second (a burst of quick answers is no rate yet).

    With the count in flight it says how long a new prediction would queue behind them (Little's
    law), so a call whose deadline is shorter is refused at once, its slot left to one that can
    finish: at 400 clients against a bound of 256 and 60 predictions a second the queue is about
    4 s, and a caller with a 2 s deadline was admitted only to time out (160 of the overload
    benchmark's 250 probe calls; docs/benchmarks.md, session 12).
    """

    def __init__(self, window_s: float = 2.0, clock: Clock = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._started = clock()
        self._finished: deque[float] = deque()

    def finished(self) -> None:
        """Counts one prediction out (answered or failed)."""
        now = self._clock()
        self._finished.append(now)
        self._forget(now)

    def _forget(self, now: float) -> None:
        while self._finished and self._finished[0] < now - self._window_s:
            self._finished.popleft()

    def per_s(self) -> float:
        """Predictions finished a second lately; 0 before any."""
        now = self._clock()
        self._forget(now)
        return len(self._finished) / max(1.0, min(self._window_s, now - self._started))

    def refusal(self, ahead: int, deadline_s: float | None) -> ResourceExhausted | None:
        """OVERLOADED when ``ahead`` predictions in flight (at least ``MIN_AHEAD``) would take
        longer to finish than ``deadline_s``, the new call's time left; else None."""
        if deadline_s is None or ahead < MIN_AHEAD:
            return None
        rate = self.per_s()
        if rate <= 0 or ahead / rate <= deadline_s:
            return None
        wait_s = ahead / rate
        return ResourceExhausted(
            f"{ahead} predictions are in flight ahead of this one, about {wait_s:.1f} s of work at "
            f"{rate:.0f} a second, more than its deadline of {deadline_s:.1f} s; retry shortly or "
            "with a longer deadline",
            reason="OVERLOADED",
            metadata={"in_flight": str(ahead), "queue_ms": str(round(wait_s * 1000))},
            retry_after=retry_after(1.0),
        )


#: Predictions in flight below which none is refused for its deadline: with few ahead the wait is
#: short and its estimate least sure.
MIN_AHEAD = 16
