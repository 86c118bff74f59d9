"""Which failures are worth another attempt, how long to wait, and when to give up.

Retrying is bounded by time, not by a count of attempts: an item is retried until the backoff it
has waited reaches a budget. The runner keeps no clock of its own for that: a runner may die and
another one take the item over, and only what JetStream keeps with the message survives that.
JetStream keeps the delivery count (``num_delivered``), and the backoff schedule is a pure
function of that count and the message's stream sequence, so any runner can tell how long an
item has already waited by summing the schedule up to its delivery count. See docs/jobs.md.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc
from google.rpc import status_pb2

from services.common.errors import FerryError, code_from_number, error_from_status

# Codes that say "not now" rather than "never": the same request may well succeed later.
# INTERNAL and UNKNOWN are here too (a crashed call or a lost connection reads like that), so a
# crashed inference replica costs retries, not results; the retry budget bounds the cost when
# such a failure turns out to be permanent after all.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)

#: Reasons that make a code of ``TRANSIENT_CODES`` final: inference's MODEL_FAILED (UNAVAILABLE) says
#: the model failed to load, and stays so until an admin fixes it and loads it again, which waiting
#: does not do. Retried for the whole budget, the item's job would run on for minutes only to end
#: the same way; failed at once it ends now, and RetryJob re-queues its items after the fix. (A
#: model's NOT_FOUND is final by its code.) The reasons of a restart or a load in progress
#: (NOT_READY, MODEL_LOADING, SHUTTING_DOWN) and an UNAVAILABLE without a reason keep the backoff.
PERMANENT_REASONS = frozenset({"MODEL_FAILED"})


def is_transient(status: status_pb2.Status) -> bool:
    """Whether a failure with ``status`` may go away on its own."""
    if code_from_number(status.code) not in TRANSIENT_CODES:
        return False
    return error_from_status(status).reason not in PERMANENT_REASONS


@dataclass(frozen=True)
class Backoff:
    """The retry schedule of an item: exponential, capped, jittered, within a time budget.

    Args:
        base_s: delay after the first failed attempt; it doubles with every attempt after that.
        max_s: longest delay between two attempts.
        budget_s: how much backoff an item may wait in all before a transient failure is final.
    """

    base_s: float
    max_s: float
    budget_s: float

    def delay(self, attempt: int, key: int) -> float:
        """Delay after failed attempt ``attempt`` (1-based): base * 2^(attempt-1), capped, jittered.

        The jitter (between half and all of the delay) keeps items that failed together, for
        example when inference restarted, from all retrying in the same instant. It is drawn from
        ``key`` (the message's stream sequence) and ``attempt``, not from the clock, so every
        runner computes the same schedule for the same message; that is what lets ``waited``
        work across runner restarts.
        """
        full: float = min(self.max_s, self.base_s * 2 ** max(0, attempt - 1))
        return full * random.Random(f"{key}:{attempt}").uniform(0.5, 1.0)

    def waited(self, attempts: int, key: int) -> float:
        """Backoff an item has waited once ``attempts`` attempts failed; never more than the budget."""
        total = 0.0
        for attempt in range(1, attempts + 1):
            total += self.delay(attempt, key)
            if total >= self.budget_s:
                return self.budget_s
        return total

    def next_delay(self, attempt: int, key: int) -> float | None:
        """Delay before the attempt after failed attempt ``attempt``, or None once the budget is spent.

        The last delay is cut short so that the final attempt happens when the budget runs out.
        """
        before = self.waited(attempt - 1, key)
        if before >= self.budget_s:
            return None
        return self.waited(attempt, key) - before


def gave_up(last: status_pb2.Status, attempts: int, retried_s: float) -> status_pb2.Status:
    """The error of an item that still failed after ``attempts`` attempts and ``retried_s`` of backoff.

    It keeps the last attempt's code, so a caller sees UNAVAILABLE (say) rather than a code of
    the runner's own.
    """
    cause = error_from_status(last)
    error = FerryError(
        f"gave up after retrying for {retried_s:.1f}s ({attempts} attempts); "
        f"the last one failed with {cause.code.name}: {cause.message}",
        "RETRIES_EXHAUSTED",
        {"attempts": str(attempts), "retried_s": f"{retried_s:.1f}", "last_reason": cause.reason},
    )
    error.code = cause.code
    return error.to_status()
