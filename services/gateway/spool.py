"""The disk a gateway's uploads are spooled to while they arrive, shared by the uploads in flight.

Each upload is written to a spool file (``upload_spool_dir``) until it has all arrived and been
checked, at most ``max_upload_bytes`` each. Without a bound on them together, four parallel
256 MiB uploads filled the chart's 1 GiB ``/tmp`` and the kubelet evicted the pod, dropping every
call on it. Bytes are reserved here as they are written and given back when the spool file goes;
an upload that would pass ``upload_spool_bytes`` is refused 429 ``OVERLOADED`` with a wait: the
uploads ahead of it end within seconds, and its retry finds room.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from google.protobuf import duration_pb2

from services.common import limits
from services.common.errors import ResourceExhausted

#: What a refused upload is told to wait: a 256 MiB upload arrives in a few seconds on a LAN.
RETRY_AFTER_S = 5


class SpoolBudget:
    """Bytes the uploads in flight in this process may hold on the spool disk, all together."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[Held]:
        """What one upload holds, given back when the block ends (its spool file is gone)."""
        held = Held(self)
        try:
            yield held
        finally:
            self.used -= held.size


class Held:
    """One upload's share of the spool."""

    def __init__(self, budget: SpoolBudget) -> None:
        self._budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        """Reserves ``size`` more bytes, before they are written.

        Raises:
            ResourceExhausted: OVERLOADED, the uploads in flight fill the spool.
        """
        budget = self._budget
        if budget.used + size > budget.capacity:
            raise ResourceExhausted(
                f"this gateway's uploads in flight fill its spool disk "
                f"({limits.describe(budget.capacity)}, upload_spool_bytes); send the upload again in "
                f"{RETRY_AFTER_S} s",
                reason="OVERLOADED",
                metadata={"limit": "upload_spool_bytes", "spool_bytes": str(budget.capacity)},
                retry_after=duration_pb2.Duration(seconds=RETRY_AFTER_S),
            )
        budget.used += size
        self.size += size
