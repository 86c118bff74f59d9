"""Job and prediction priorities: one table that every encoding of a priority is read from.

A priority travels as the ``ferry.types.v1.Priority`` enum (API, work items, records), as a name
in settings, metrics and OIP parameters (``high``), as the last token of a work subject
(``ferry.jobs.items.high``), as a runner's default share of contended fetches, and as inference's
aging handicap. Each of those used to be a separate list in a separate service, matched by
position; ``TABLE`` holds them side by side, so adding or reordering a priority is one edit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferry.types.v1 import types_pb2


@dataclass(frozen=True)
class Priority:
    """One priority in every encoding."""

    proto: types_pb2.Priority
    """Its ``ferry.types.v1.Priority`` value."""
    name: str
    """Its name in settings, metrics, OIP parameters and the work subject's last token."""
    weight: int
    """A jobs runner's default share of contended in-flight room (FERRY_JOBS_PRIORITY_WEIGHTS)."""
    handicap: int
    """Inference's queue handicap, in units of the aging time (0 runs first)."""


#: Every priority, highest first.
TABLE = (
    Priority(types_pb2.PRIORITY_HIGH, "high", weight=6, handicap=0),
    Priority(types_pb2.PRIORITY_NORMAL, "normal", weight=3, handicap=1),
    Priority(types_pb2.PRIORITY_LOW, "low", weight=1, handicap=2),
)
#: What an unset priority (``PRIORITY_UNSPECIFIED``) means everywhere.
DEFAULT = TABLE[1]

NAMES = tuple(p.name for p in TABLE)
_BY_PROTO = {p.proto: p for p in TABLE} | {types_pb2.PRIORITY_UNSPECIFIED: DEFAULT}
_BY_NAME = {p.name: p for p in TABLE}


def of_proto(value: int) -> Priority:
    """The priority of a ``ferry.types.v1.Priority`` number (unspecified is the default).

    Raises:
        KeyError: a number the enum does not define.
    """
    return _BY_PROTO[value]  # type: ignore[index]


def of_name(name: str) -> Priority:
    """The priority called ``name`` (``high``, ``normal``, ``low``; any case).

    Raises:
        KeyError: no priority has that name.
    """
    return _BY_NAME[name.lower()]


def default_weights() -> dict[str, int]:
    """Each priority's default weight by name, as FERRY_JOBS_PRIORITY_WEIGHTS spells it."""
    return {p.name: p.weight for p in TABLE}
