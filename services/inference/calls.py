"""The inference core's own request and answer types: plain values, no protocol.

The batching core (``served``, ``ensemble``) takes and returns these; each protocol's adapter
(the gRPC servicer here, the in-process hub, any other front end) converts at its edge, so the
core never builds or copies a message it does not need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from services.inference.models.contract import Answer, InvalidInput, ModelInput, Options
from services.inference.scheduling import Priority


@dataclass(frozen=True)
class Call:
    """One caller's inputs for one model, answered in order.

    An input the edge could not convert (a tensor whose shape and contents disagree) travels as
    its ``InvalidInput``: it gets its own error in its place, and the other inputs still run.
    """

    inputs: Sequence[ModelInput | InvalidInput]
    options: Options = field(default_factory=Options)
    priority: Priority = Priority.NORMAL
    deadline: float | None = None
    """When the caller stops waiting (``time.monotonic()``); inputs still queued then are dropped."""
    background: bool = False
    """A batch job's call (``PredictRequest.job_item``): no one waits on it interactively, so its
    work may run on the lowest-priority threads (``services.inference.background``)."""


@dataclass(frozen=True)
class Request:
    """One input on its way to a model (an ensemble's member, a hub call, or one of a Call's)."""

    item: ModelInput
    options: Options = field(default_factory=Options)
    priority: Priority = Priority.NORMAL
    deadline: float | None = None
    background: bool = False


@dataclass(frozen=True)
class Timing:
    """Where one input's time went inside inference, in milliseconds."""

    decode_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    batch_size: int = 0
    total_ms: float = 0.0


@dataclass(frozen=True)
class Answered:
    """One input's answer, its timing, and (for an ensemble) each member's timing by name."""

    answer: Answer
    timing: Timing
    members: tuple[tuple[str, Timing], ...] = ()


@dataclass(frozen=True)
class Refused:
    """One input the model cannot take; ``message`` is meant for the caller (INVALID_ARGUMENT)."""

    message: str
    reason: str


Outcome = Answered | Refused
"""What each input of a Call gets."""
