"""``ferry restart|stop|start`` report what happened naming only the pids there are (no ``None``)."""

from __future__ import annotations

from devstack.control import outcome
from devstack.supervisor import RestartResult


def test_each_outcome_names_real_pids_only() -> None:
    assert outcome(RestartResult("postgres", True, None, 27193)) == "started, pid 27193, serving"
    assert outcome(RestartResult("gateway", True, 10, 11)) == "pid 10 -> 11, serving"
    assert outcome(RestartResult("nats", True, 12, None)) == "stopped (was pid 12)"
    held = RestartResult("nats", True, 12, None, "stopped (was pid 12); `ferry start nats` resumes it")
    assert outcome(held) == held.message
    assert "None" not in " ".join(outcome(RestartResult("x", True, o, n)) for o, n in ((None, 1), (1, None)))
